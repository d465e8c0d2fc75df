package rdb_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestStreamCursor(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		c, err := b.db.StreamCursor(b.ctx, "j1")
		require.NoError(t, err)
		require.Zero(t, c, "a job never streamed starts at 0")

		ok, err := b.db.AdvanceStreamCursor(b.ctx, "j1", 0, 17, time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
		c, err = b.db.StreamCursor(b.ctx, "j1")
		require.NoError(t, err)
		require.Equal(t, uint64(17), c)

		ok, err = b.db.AdvanceStreamCursor(b.ctx, "j1", 0, 20, time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "another reader moved it from 0 already")
		c, err = b.db.StreamCursor(b.ctx, "j1")
		require.NoError(t, err)
		require.Equal(t, uint64(17), c, "a lost race changes nothing")

		d, err := b.rdb.PTTL(b.ctx, b.prefix+proto.StreamCursorKey("j1")).Result()
		require.NoError(t, err)
		require.Greater(t, d, 50*time.Second)

		require.NoError(t, b.rdb.Set(b.ctx, b.prefix+proto.StreamCursorKey("bad"), "x", 0).Err())
		_, err = b.db.StreamCursor(b.ctx, "bad")
		require.ErrorIs(t, err, rdb.ErrCorrupt)
	})
}

func TestShortenRetention(t *testing.T) {
	conformance(t, rdb.Options{Retention: time.Hour}, func(t *testing.T, b *bundle) {
		_, err := b.db.ShortenRetention(b.ctx, "missing", time.Second)
		require.ErrorIs(t, err, rdb.ErrNotFound)

		b.bring(t, "done", proto.StatusCompleted)
		ok, err := b.db.ShortenRetention(b.ctx, "done", 2*time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
		b.requireTTL(t, "done", 2*time.Minute)
		ok, err = b.db.ShortenRetention(b.ctx, "done", 30*time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "never extends")
		b.requireTTL(t, "done", 2*time.Minute)

		b.bring(t, "queued", proto.StatusInQueue)
		before := b.pttl(t, "queued")
		ok, err = b.db.ShortenRetention(b.ctx, "queued", time.Second)
		require.NoError(t, err)
		require.False(t, ok, "a job that is not terminal keeps its record")
		require.InDelta(t, before, b.pttl(t, "queued"), float64(5*time.Second))
	})
}

func TestWebhookTargets(t *testing.T) {
	conformance(t, rdb.Options{WebhookTTL: time.Minute}, func(t *testing.T, b *bundle) {
		url, sent, err := b.db.Webhook(b.ctx, "j")
		require.NoError(t, err)
		require.Empty(t, url)
		require.Empty(t, sent)
		require.NoError(t, b.db.PutWebhook(b.ctx, "j", "https://example.com/hook"))
		require.NoError(t, b.db.MarkWebhookSent(b.ctx, "j", "1700"))
		url, sent, err = b.db.Webhook(b.ctx, "j")
		require.NoError(t, err)
		require.Equal(t, "https://example.com/hook", url)
		require.Equal(t, "1700", sent)
		d, err := b.rdb.PTTL(b.ctx, b.prefix+proto.WebhookKey("j")).Result()
		require.NoError(t, err)
		require.Greater(t, d, 50*time.Second)
		require.LessOrEqual(t, d, time.Minute)
	})
}
