package status_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestLeases(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		deadline := b.clock.Now().Add(time.Minute).Truncate(time.Millisecond)
		l := status.Lease{JobID: "j1", Attempt: 2, WorkerID: "w1", Reply: "$JS.ACK.x", Deadline: deadline}
		require.NoError(t, b.store.Lease(b.ctx, l, time.Second))

		// Not lapsed: nothing to take; renewals by another attempt fail.
		ids, err := b.store.ExpiredLeases(b.ctx, 10)
		require.NoError(t, err)
		require.Empty(t, ids)
		require.ErrorIs(t, b.store.Renew(b.ctx, "j1", 1, time.Second), status.ErrLeaseLost)
		b.clock.Advance(900 * time.Millisecond)
		require.NoError(t, b.store.Renew(b.ctx, "j1", 2, time.Second))
		b.clock.Advance(900 * time.Millisecond)
		ids, err = b.store.ExpiredLeases(b.ctx, 10)
		require.NoError(t, err)
		require.Empty(t, ids, "renewed")

		b.clock.Advance(200 * time.Millisecond)
		ids, err = b.store.ExpiredLeases(b.ctx, 10)
		require.NoError(t, err)
		require.Equal(t, []string{"j1"}, ids)
		got, err := b.store.TakeLease(b.ctx, "j1")
		require.NoError(t, err)
		require.NotNil(t, got)
		require.Equal(t, l.JobID, got.JobID)
		require.Equal(t, l.Attempt, got.Attempt)
		require.Equal(t, l.WorkerID, got.WorkerID)
		require.Equal(t, l.Reply, got.Reply)
		require.True(t, l.Deadline.Equal(got.Deadline))
		again, err := b.store.TakeLease(b.ctx, "j1")
		require.NoError(t, err)
		require.Nil(t, again, "taken once")
		require.ErrorIs(t, b.store.Renew(b.ctx, "j1", 2, time.Second), status.ErrLeaseLost)

		// Release by the holder ends it; by another attempt it does not.
		require.NoError(t, b.store.Lease(b.ctx, status.Lease{JobID: "j2", Attempt: 1}, time.Millisecond))
		require.NoError(t, b.store.Release(b.ctx, "j2", 7))
		b.clock.Advance(time.Second)
		ids, err = b.store.ExpiredLeases(b.ctx, 10)
		require.NoError(t, err)
		require.Equal(t, []string{"j2"}, ids)
		require.NoError(t, b.store.Release(b.ctx, "j2", 1))
		ids, err = b.store.ExpiredLeases(b.ctx, 10)
		require.NoError(t, err)
		require.Empty(t, ids)
	})
}

func TestTakeLeaseRaceHasOneWinner(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		require.NoError(t, b.store.Lease(b.ctx, status.Lease{JobID: "race", Attempt: 1}, time.Millisecond))
		b.clock.Advance(time.Second)
		var wg sync.WaitGroup
		var mu sync.Mutex
		won := 0
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l, err := b.store.TakeLease(b.ctx, "race")
				require.NoError(t, err)
				if l != nil {
					mu.Lock()
					won++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		require.Equal(t, 1, won)
	})
}

func TestTTLIndex(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		now := b.clock.Now()
		for i, d := range []time.Duration{time.Second, time.Hour, 2 * time.Second} {
			require.NoError(t, b.store.TrackTTL(b.ctx, fmt.Sprintf("t%d", i), now.Add(d)))
		}
		due, err := b.store.DueTTL(b.ctx, 10)
		require.NoError(t, err)
		require.Empty(t, due)
		b.clock.Advance(3 * time.Second)
		due, err = b.store.DueTTL(b.ctx, 10)
		require.NoError(t, err)
		require.Equal(t, []string{"t0", "t2"}, due)
		require.NoError(t, b.store.ForgetTTL(b.ctx, "t0"))
		due, err = b.store.DueTTL(b.ctx, 1)
		require.NoError(t, err)
		require.Equal(t, []string{"t2"}, due)
	})
}

func TestAttemptLogAndRetryClearsIt(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		b.bring(t, "a1", proto.StatusInProgress)
		n, err := b.store.AddAttemptError(b.ctx, "a1", 1, "oom")
		require.NoError(t, err)
		require.Equal(t, 1, n)
		n, err = b.store.AddAttemptError(b.ctx, "a1", 1, "oom")
		require.NoError(t, err)
		require.Equal(t, 1, n, "a repeat is not logged twice")
		n, err = b.store.AddAttemptError(b.ctx, "a1", 2, "worker lost")
		require.NoError(t, err)
		require.Equal(t, 2, n)
		log, err := b.store.AttemptErrors(b.ctx, "a1")
		require.NoError(t, err)
		require.Equal(t, []string{"attempt 1: oom", "attempt 2: worker lost"}, log)

		rec, err := b.store.Get(b.ctx, "a1")
		require.NoError(t, err)
		_, err = b.store.Finish(b.ctx, "a1", rec.Attempt, proto.StatusFailed, nil, "oom")
		require.NoError(t, err)
		_, err = b.store.Retry(b.ctx, "a1")
		require.NoError(t, err)
		log, err = b.store.AttemptErrors(b.ctx, "a1")
		require.NoError(t, err)
		require.Empty(t, log)
	})
}
