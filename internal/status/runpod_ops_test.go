package status_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestCancelQueued checks purge-queue's transition in every state: only
// IN_QUEUE moves, to CANCELLED with its retention and a count.
func TestCancelQueued(t *testing.T) {
	conformance(t, status.Options{Retention: time.Minute}, func(t *testing.T, b *bundle) {
		for _, from := range allStates {
			t.Run(stateName(from), func(t *testing.T) {
				id := "cq-" + strings.ToLower(strings.ReplaceAll(stateName(from), "_", "-"))
				cur := b.bring(t, id, from)
				before := map[string]string{}
				if cur != nil {
					before = b.hash(t, id)
				}
				got, err := b.store.CancelQueued(b.ctx, id)
				switch from {
				case none:
					require.ErrorIs(t, err, status.ErrNotFound)
				case proto.StatusInQueue:
					require.NoError(t, err)
					require.Equal(t, proto.StatusCancelled, got.Status)
					require.False(t, got.FinishedAt.IsZero())
					b.requireTTL(t, id, time.Minute)
				case proto.StatusInProgress:
					require.ErrorIs(t, err, status.ErrIllegal, "a running job continues")
					require.Equal(t, cur, got)
					require.Equal(t, before, b.hash(t, id))
				default:
					require.ErrorIs(t, err, status.ErrTerminal)
					require.Equal(t, cur, got)
					require.Equal(t, before, b.hash(t, id))
				}
			})
		}
	})
}

// TestCancelQueuedRacesClaim runs purge and claim together on many jobs:
// every job ends either claimed (and running) or cancelled, never both.
func TestCancelQueuedRacesClaim(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		const n = 40
		for i := range n {
			b.bring(t, fmt.Sprintf("race-%d", i), proto.StatusInQueue)
		}
		var wg sync.WaitGroup
		claimed := make([]bool, n)
		cancelled := make([]bool, n)
		for i := range n {
			id := fmt.Sprintf("race-%d", i)
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, _, err := b.store.Claim(b.ctx, id, "w")
				claimed[i] = err == nil
			}()
			go func() {
				defer wg.Done()
				_, err := b.store.CancelQueued(b.ctx, id)
				cancelled[i] = err == nil
			}()
		}
		wg.Wait()
		for i := range n {
			require.True(t, claimed[i] != cancelled[i], "job %d: claimed %v, cancelled %v", i, claimed[i], cancelled[i])
		}
	})
}

func TestStreamCursor(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		c, err := b.store.StreamCursor(b.ctx, "j1")
		require.NoError(t, err)
		require.Zero(t, c, "a job never streamed starts at 0")

		ok, err := b.store.AdvanceStreamCursor(b.ctx, "j1", 0, 17, time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
		c, err = b.store.StreamCursor(b.ctx, "j1")
		require.NoError(t, err)
		require.Equal(t, uint64(17), c)

		ok, err = b.store.AdvanceStreamCursor(b.ctx, "j1", 0, 20, time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "another reader moved it from 0 already")
		c, err = b.store.StreamCursor(b.ctx, "j1")
		require.NoError(t, err)
		require.Equal(t, uint64(17), c, "a lost race changes nothing")

		d, err := b.rdb.PTTL(b.ctx, b.prefix+"cf:stream:j1").Result()
		require.NoError(t, err)
		require.Greater(t, d, 50*time.Second)

		require.NoError(t, b.rdb.Set(b.ctx, b.prefix+"cf:stream:bad", "x", 0).Err())
		_, err = b.store.StreamCursor(b.ctx, "bad")
		require.ErrorIs(t, err, status.ErrCorrupt)
	})
}

func TestShortenRetention(t *testing.T) {
	conformance(t, status.Options{Retention: time.Hour}, func(t *testing.T, b *bundle) {
		_, err := b.store.ShortenRetention(b.ctx, "missing", time.Second)
		require.ErrorIs(t, err, status.ErrNotFound)

		b.bring(t, "done", proto.StatusCompleted)
		ok, err := b.store.ShortenRetention(b.ctx, "done", 2*time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
		b.requireTTL(t, "done", 2*time.Minute)
		ok, err = b.store.ShortenRetention(b.ctx, "done", 30*time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "never extends")
		b.requireTTL(t, "done", 2*time.Minute)

		b.bring(t, "queued", proto.StatusInQueue)
		before := b.pttl(t, "queued")
		ok, err = b.store.ShortenRetention(b.ctx, "queued", time.Second)
		require.NoError(t, err)
		require.False(t, ok, "a job that is not terminal keeps its record")
		require.InDelta(t, before, b.pttl(t, "queued"), float64(5*time.Second))
	})
}
