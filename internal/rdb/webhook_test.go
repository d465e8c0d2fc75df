package rdb_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// A webhook's outcome is part of the record of the ending it was for: it
// is read back with the record, never written to a record that is gone
// or that ended anew, and a retry clears it.
func TestWebhookOutcomeIsPartOfTheRecord(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		_, _, err := db.Admit(ctx, "1", rdb.CreateParams{ID: "job", TTL: time.Hour}, "")
		require.NoError(t, err)
		b.claim(t, "job", "w1")
		rec, err := db.Finish(ctx, "job", 1, proto.StatusFailed, json.RawMessage(`{"error":"x"}`), "x", false)
		require.NoError(t, err)
		require.Nil(t, rec.Webhook)
		ttl := b.pttl(t, "job")

		want := proto.WebhookOutcome{Delivered: false, Attempts: 3, LastStatus: 503, Error: "answered 503 Service Unavailable"}
		ok, err := db.PutWebhookOutcome(ctx, "job", rec.FinishedAt.Add(-time.Millisecond), want)
		require.NoError(t, err)
		require.False(t, ok, "another ending's outcome is not written")
		ok, err = db.PutWebhookOutcome(ctx, "job", rec.FinishedAt, want)
		require.NoError(t, err)
		require.True(t, ok)
		got, err := db.Get(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, &want, got.Webhook)
		require.InDelta(t, float64(ttl), float64(b.pttl(t, "job")), float64(time.Second), "the record's expiry is its own")

		_, err = db.Retry(ctx, "job")
		require.NoError(t, err)
		got, err = db.Get(ctx, "job")
		require.NoError(t, err)
		require.Nil(t, got.Webhook, "a retry starts without the last ending's outcome")

		ok, err = db.PutWebhookOutcome(ctx, "gone", rec.FinishedAt, want)
		require.NoError(t, err)
		require.False(t, ok)
		require.Empty(t, b.hash(t, "gone"), "no record is made")
	})
}
