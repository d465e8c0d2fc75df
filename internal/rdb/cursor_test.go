package rdb_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestStreamCursor: a job's /stream cursor and its preview cursor start
// at 0, move only from where their mover read them, expire, and a
// corrupt value is an error.
func TestStreamCursor(t *testing.T) {
	for name, c := range map[string]struct {
		read    func(b *bundle, id string) (uint64, error)
		advance func(b *bundle, id string, from, to uint64) (bool, error)
		key     func(id string) string
	}{
		"stream": {
			read: func(b *bundle, id string) (uint64, error) { return b.db.StreamCursor(b.ctx, id) },
			advance: func(b *bundle, id string, from, to uint64) (bool, error) {
				return b.db.AdvanceStreamCursor(b.ctx, id, from, to, time.Minute)
			},
			key: proto.StreamCursorKey,
		},
		"preview": {
			read: func(b *bundle, id string) (uint64, error) { return b.db.PreviewCursor(b.ctx, id) },
			advance: func(b *bundle, id string, from, to uint64) (bool, error) {
				return b.db.AdvancePreviewCursor(b.ctx, id, from, to, time.Minute)
			},
			key: proto.PreviewCursorKey,
		},
	} {
		t.Run(name, func(t *testing.T) {
			conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
				v, err := c.read(b, "j1")
				require.NoError(t, err)
				require.Zero(t, v, "a job never streamed starts at 0")

				ok, err := c.advance(b, "j1", 0, 17)
				require.NoError(t, err)
				require.True(t, ok)
				v, err = c.read(b, "j1")
				require.NoError(t, err)
				require.Equal(t, uint64(17), v)

				ok, err = c.advance(b, "j1", 0, 20)
				require.NoError(t, err)
				require.False(t, ok, "another reader moved it from 0 already")
				v, err = c.read(b, "j1")
				require.NoError(t, err)
				require.Equal(t, uint64(17), v, "a lost race changes nothing")

				d, err := b.rdb.PTTL(b.ctx, b.prefix+c.key("j1")).Result()
				require.NoError(t, err)
				require.Greater(t, d, 50*time.Second)

				require.NoError(t, b.rdb.Set(b.ctx, b.prefix+c.key("bad"), "x", 0).Err())
				_, err = c.read(b, "bad")
				require.ErrorIs(t, err, rdb.ErrCorrupt)
			})
		})
	}
	require.NotEqual(t, proto.StreamCursorKey("j"), proto.PreviewCursorKey("j"))
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
