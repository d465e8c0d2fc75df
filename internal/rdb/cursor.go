package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// A job's stream cursor is the sequence number, in the events stream, of
// the last event that RunPod's /stream has handed out for the job. It
// lives beside the record (key cf:stream:<id>) so that every adapter
// replica drains the same stream: each /stream call returns only what no
// call returned before. Its preview cursor (cf:streampv:<id>) is the same
// for the job's latest preview picture, in the preview stream.

// advanceCursor moves a cursor from ARGV[1] to ARGV[2] and sets its expiry
// to ARGV[3] ms, only if it still holds ARGV[1] (an absent cursor is 0).
// It returns 1 when it moved the cursor, 0 when another reader had.
var advanceCursor = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then cur = '0' end
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`)

func (db *DB) streamCursorKey(id string) string { return db.key(proto.StreamCursorKey(id)) }

// StreamCursor returns the job's stream cursor; 0 when /stream never
// returned anything for it.
func (db *DB) StreamCursor(ctx context.Context, id string) (uint64, error) {
	return db.cursor(ctx, db.streamCursorKey(id), "stream cursor of job "+id)
}

// AdvanceStreamCursor moves the job's stream cursor from `from` to `to`
// and keeps it for `keep`, if nobody moved it since it read `from`. It
// reports false when another reader got there first; that reader has
// handed out the events in between, so the caller reads the cursor again.
func (db *DB) AdvanceStreamCursor(ctx context.Context, id string, from, to uint64, keep time.Duration) (bool, error) {
	return db.advance(ctx, db.streamCursorKey(id), "stream cursor of job "+id, from, to, keep)
}

func (db *DB) previewCursorKey(id string) string { return db.key(proto.PreviewCursorKey(id)) }

// PreviewCursor returns the sequence, in the preview stream, of the last
// preview /stream handed out for the job; 0 when none.
func (db *DB) PreviewCursor(ctx context.Context, id string) (uint64, error) {
	return db.cursor(ctx, db.previewCursorKey(id), "preview cursor of job "+id)
}

// AdvancePreviewCursor moves the job's preview cursor as
// AdvanceStreamCursor moves its stream cursor: false when another reader
// handed the preview out first.
func (db *DB) AdvancePreviewCursor(ctx context.Context, id string, from, to uint64, keep time.Duration) (bool, error) {
	return db.advance(ctx, db.previewCursorKey(id), "preview cursor of job "+id, from, to, keep)
}

func (db *DB) cursor(ctx context.Context, key, what string) (uint64, error) {
	v, err := db.rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", what, err)
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, &CorruptError{Key: key, Field: "(value)", Value: v, Reason: "is not a sequence number"}
	}
	return n, nil
}

func (db *DB) advance(ctx context.Context, key, what string, from, to uint64, keep time.Duration) (bool, error) {
	n, err := advanceCursor.Run(ctx, db.rdb, []string{key},
		strconv.FormatUint(from, 10), strconv.FormatUint(to, 10), millis(keep)).Int()
	if err != nil {
		return false, fmt.Errorf("advance %s: %w", what, err)
	}
	return n == 1, nil
}
