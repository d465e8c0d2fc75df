package rdb

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// shorten lowers the expiry of a terminal record to ARGV[1] ms when it
// would otherwise live longer. Replies: -1 no record, 0 unchanged (not
// terminal, or already expiring sooner), 1 shortened.
var shorten = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= 'COMPLETED' and st ~= 'FAILED' and st ~= 'CANCELLED' and st ~= 'TIMED_OUT' then return 0 end
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left <= tonumber(ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`)

// ShortenRetention makes a terminal record expire within keep, as RunPod's
// /status/{id}?ttl= does ("remove a job result sooner"). It never extends
// a retention, and leaves a record that is not terminal alone (it reports
// false), since a job still queued or running must keep its record. A
// missing record gives ErrNotFound.
func (db *DB) ShortenRetention(ctx context.Context, id string, keep time.Duration) (bool, error) {
	n, err := shorten.Run(ctx, db.rdb, []string{db.key(proto.JobKey(id))}, millis(keep)).Int()
	if err != nil {
		return false, fmt.Errorf("shorten retention of job %s: %w", id, err)
	}
	if n < 0 {
		return false, fmt.Errorf("shorten retention of job %s: %w", id, ErrNotFound)
	}
	return n == 1, nil
}
