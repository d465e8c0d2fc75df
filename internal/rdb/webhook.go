package rdb

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// A job's webhook target lives in Redis from admission until its delivery
// (proto.WebhookKey: a hash with "url" and, once a delivery ended, "sent"):
// the status record does not carry it, and the job message is gone once a
// worker acks it.

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
