package rdb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// A job's webhook target lives in Redis from admission until its delivery
// (proto.WebhookKey: a hash with "url" and, once a delivery ended, "sent"):
// the status record does not carry it, and the job message is gone once a
// worker acks it. How the delivery ended is a field of the status record
// ("webhook", proto.WebhookOutcome as JSON), which lives as long as the
// record.

// PutWebhook records the webhook URL of a job; it lives for the DB's
// WebhookTTL.
func (db *DB) PutWebhook(ctx context.Context, jobID, url string) error {
	key := db.key(proto.WebhookKey(jobID))
	_, err := db.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, "url", url)
		p.PExpire(ctx, key, db.webhookTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("record webhook of %s: %w", jobID, err)
	}
	return nil
}

// Webhook returns the webhook URL of a job ("" when it has none) and the
// mark of the last delivery that ended (MarkWebhookSent).
func (db *DB) Webhook(ctx context.Context, jobID string) (url, sent string, err error) {
	vals, err := db.rdb.HMGet(ctx, db.key(proto.WebhookKey(jobID)), "url", "sent").Result()
	if err != nil {
		return "", "", fmt.Errorf("read webhook of %s: %w", jobID, err)
	}
	url, _ = vals[0].(string)
	sent, _ = vals[1].(string)
	return url, sent, nil
}

// MarkWebhookSent records that the delivery named mark ended (delivered,
// or out of retries), so a duplicate of its event is not delivered again.
func (db *DB) MarkWebhookSent(ctx context.Context, jobID, mark string) error {
	if err := db.rdb.HSet(ctx, db.key(proto.WebhookKey(jobID)), "sent", mark).Err(); err != nil {
		return fmt.Errorf("mark webhook of %s sent: %w", jobID, err)
	}
	return nil
}

// putOutcome sets the record's webhook outcome (ARGV[2]) when the record
// still ends at ARGV[1] (its finished_at): a record that expired is not
// made again, and one that /retry sent back, or that ended anew, keeps no
// outcome of an earlier ending. Replies 1 set, 0 not.
var putOutcome = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'finished_at') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'webhook', ARGV[2])
return 1
`)

// PutWebhookOutcome records on a job's status record how the delivery of
// its webhook for the ending at finished ended. It reports false, and
// writes nothing, when the record is gone or no longer ends then.
func (db *DB) PutWebhookOutcome(ctx context.Context, jobID string, finished time.Time, o proto.WebhookOutcome) (bool, error) {
	v, err := json.Marshal(o)
	if err != nil {
		return false, fmt.Errorf("record webhook outcome of %s: %w", jobID, err)
	}
	n, err := putOutcome.Run(ctx, db.rdb, []string{db.key(proto.JobKey(jobID))},
		strconv.FormatInt(finished.UnixMilli(), 10), string(v)).Int()
	if err != nil {
		return false, fmt.Errorf("record webhook outcome of %s: %w", jobID, err)
	}
	return n == 1, nil
}

// decodeWebhookOutcome reads the record's webhook field.
func decodeWebhookOutcome(v string) (*proto.WebhookOutcome, error) {
	dec := json.NewDecoder(bytes.NewReader([]byte(v)))
	dec.DisallowUnknownFields()
	var o proto.WebhookOutcome
	if err := dec.Decode(&o); err != nil {
		return nil, errors.New("is not a webhook outcome (JSON with delivered, attempts, lastStatus, error)")
	}
	if dec.More() {
		return nil, errors.New("has more than one JSON value")
	}
	switch {
	case o.Attempts < 1:
		return nil, errors.New("has attempts below 1")
	case o.LastStatus != 0 && (o.LastStatus < 100 || o.LastStatus > 599):
		return nil, errors.New("has a lastStatus that is not an HTTP status")
	}
	return &o, nil
}
