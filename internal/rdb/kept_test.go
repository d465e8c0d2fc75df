package rdb_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// A job whose request is kept for /retry (it holds the job's secrets) is
// in the kept index from its end until its retention ends, whichever way
// it ended; then the sweepers take it, once its record is gone.

func TestEveryEndIndexesAKeptJob(t *testing.T) {
	const retention = time.Minute
	ends := map[string]func(t *testing.T, b *bundle, id string) error{
		"completed": func(t *testing.T, b *bundle, id string) error {
			c := b.claim(t, id, "w")
			_, err := b.db.Finish(b.ctx, id, c.Lease.Attempt, proto.StatusCompleted, []byte(`{}`), "", false)
			return err
		},
		"failed with a dead letter": func(t *testing.T, b *bundle, id string) error {
			c := b.claim(t, id, "w")
			_, err := b.db.Finish(b.ctx, id, c.Lease.Attempt, proto.StatusFailed, nil, "boom", true)
			return err
		},
		"cancelled in the queue": func(t *testing.T, b *bundle, id string) error {
			_, err := b.db.CancelQueued(b.ctx, id)
			return err
		},
		"cancelled while running": func(t *testing.T, b *bundle, id string) error {
			b.claim(t, id, "w")
			_, _, err := b.db.Cancel(b.ctx, id)
			return err
		},
		"a retry that could not be queued": func(t *testing.T, b *bundle, id string) error {
			_, err := b.db.Fail(b.ctx, id, 0, "not queued")
			return err
		},
		"timed out on a silent worker": func(t *testing.T, b *bundle, id string) error {
			// The lease lapses after the deadline passed (a lapse at the very
			// millisecond of the deadline is not past it): the job is over.
			_, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: id, WorkerID: "w", Reply: "r", LeaseTTL: 2 * time.Millisecond, ExecTimeout: time.Millisecond})
			require.NoError(t, err)
			b.waitLapsed(t, id)
			r, err := b.db.Reclaim(b.ctx, id, 0)
			require.Equal(t, rdb.TimedOut, r.Outcome)
			return err
		},
	}
	for name, end := range ends {
		t.Run(name, func(t *testing.T) {
			conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
				for _, kept := range []bool{true, false} {
					id := map[bool]string{true: "kept", false: "not-kept"}[kept]
					_, _, err := b.db.Admit(b.ctx, "1", rdb.CreateParams{ID: id, Source: proto.SourceAPI, Retention: retention, Kept: kept}, "")
					require.NoError(t, err)
					_, ok := b.score(t, proto.KeptKey, id)
					require.False(t, ok, "indexed before it ended")
					before := b.now(t)
					require.NoError(t, end(t, b, id))
					rec, err := b.db.Get(b.ctx, id)
					require.NoError(t, err)
					require.True(t, rec.Status.Terminal(), "%s", rec.Status)
					score, ok := b.score(t, proto.KeptKey, id)
					require.Equal(t, kept, ok, "indexed: %s", id)
					if kept {
						at := time.UnixMilli(int64(score))
						require.False(t, at.Before(before.Add(retention).Truncate(time.Millisecond)), "indexed for %v, before the retention's end", at)
						require.True(t, at.Before(b.now(t).Add(retention+time.Millisecond)), "indexed for %v, after the retention's end", at)
					}
				}
			})
		})
	}
}

func TestAdmissionRejectAndExpiryIndexAKeptJob(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		_, _, err := b.db.Admit(b.ctx, "1", rdb.CreateParams{ID: "rejected", Retention: time.Minute, Kept: true}, "field input: bad")
		require.NoError(t, err)
		_, ok := b.score(t, proto.KeptKey, "rejected")
		require.True(t, ok, "a job failed at admission")

		_, _, err = b.db.Admit(b.ctx, "2", rdb.CreateParams{ID: "expired", Retention: time.Minute, TTL: time.Millisecond, Kept: true}, "")
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			rec, err := b.db.Expire(b.ctx, "expired")
			return err == nil && rec.Status == proto.StatusTimedOut
		}, 10*time.Second, 5*time.Millisecond)
		_, ok = b.score(t, proto.KeptKey, "expired")
		require.True(t, ok, "a job that expired in the queue")
	})
}

func TestRetryTakesAKeptJobOutOfTheIndex(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		_, _, err := b.db.Admit(b.ctx, "1", rdb.CreateParams{ID: "j", Kept: true}, "")
		require.NoError(t, err)
		c := b.claim(t, "j", "w")
		_, err = b.db.Finish(b.ctx, "j", c.Lease.Attempt, proto.StatusFailed, nil, "boom", false)
		require.NoError(t, err)
		_, ok := b.score(t, proto.KeptKey, "j")
		require.True(t, ok)
		_, err = b.db.Retry(b.ctx, "j")
		require.NoError(t, err)
		_, ok = b.score(t, proto.KeptKey, "j")
		require.False(t, ok, "the retried job's copy lives as long as the retry")
		require.Equal(t, "1", b.hash(t, "j")["kept"], "and the retry's end indexes it again")
	})
}

// TestDueKept: a job is due once its retention ended and its record is
// gone; it is given to one sweeper at a time, and forgotten once its copy
// is removed.
func TestDueKept(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		end := func(id string, retention time.Duration) {
			_, _, err := b.db.Admit(b.ctx, "1", rdb.CreateParams{ID: id, Retention: retention, Kept: true}, "")
			require.NoError(t, err)
			_, err = b.db.CancelQueued(b.ctx, id)
			require.NoError(t, err)
		}
		end("long", time.Hour)
		end("short", time.Millisecond)
		// The record outlives its retention only on a Redis that has not
		// expired it yet (miniredis never does by itself): the sweep waits.
		var ids []string
		var claim string
		require.Eventually(t, func() bool {
			var err error
			ids, claim, err = b.db.DueKept(b.ctx, 100)
			require.NoError(t, err)
			if len(ids) == 0 {
				require.NoError(t, b.rdb.Del(b.ctx, b.key("short")).Err()) // expired
			}
			return len(ids) > 0
		}, 10*time.Second, 5*time.Millisecond)
		require.Equal(t, []string{"short"}, ids)

		again, _, err := b.db.DueKept(b.ctx, 100)
		require.NoError(t, err)
		require.Empty(t, again, "another sweeper does not take what one holds")
		require.NoError(t, b.db.ForgetKept(b.ctx, claim, ids))
		_, ok := b.score(t, proto.KeptKey, "short")
		require.False(t, ok, "forgotten")
		_, ok = b.score(t, proto.KeptKey, "long")
		require.True(t, ok, "a job still retryable stays")
	})
}

func TestDueKeptLeavesARecordMadeAnew(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		_, _, err := b.db.Admit(b.ctx, "1", rdb.CreateParams{ID: "j", Retention: time.Millisecond, Kept: true}, "")
		require.NoError(t, err)
		_, err = b.db.CancelQueued(b.ctx, "j")
		require.NoError(t, err)
		// Its record expired and a replay made it anew, queued: its copy
		// is the replay's.
		require.NoError(t, b.rdb.Del(b.ctx, b.key("j")).Err())
		_, _, err = b.db.Create(b.ctx, rdb.CreateParams{ID: "j", Kept: true}, time.Time{}, false)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			_, ok := b.score(t, proto.KeptKey, "j")
			if !ok {
				return true
			}
			ids, _, err := b.db.DueKept(b.ctx, 100)
			require.NoError(t, err)
			require.Empty(t, ids, "the copy of a live record is never due")
			return false
		}, 10*time.Second, 5*time.Millisecond)
	})
}

func TestForgetKeptLeavesAJobIndexedAnew(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		_, _, err := b.db.Admit(b.ctx, "1", rdb.CreateParams{ID: "j", Retention: time.Millisecond, Kept: true}, "")
		require.NoError(t, err)
		_, err = b.db.CancelQueued(b.ctx, "j")
		require.NoError(t, err)
		require.NoError(t, b.rdb.Del(b.ctx, b.key("j")).Err())
		var claim string
		require.Eventually(t, func() bool {
			ids, c, err := b.db.DueKept(b.ctx, 100)
			require.NoError(t, err)
			claim = c
			return len(ids) == 1
		}, 10*time.Second, 5*time.Millisecond)
		// Made anew and ended again while the sweeper removed the copy.
		_, _, err = b.db.Admit(b.ctx, "2", rdb.CreateParams{ID: "j", Retention: time.Hour, Kept: true}, "")
		require.NoError(t, err)
		_, err = b.db.CancelQueued(b.ctx, "j")
		require.NoError(t, err)
		require.NoError(t, b.db.ForgetKept(b.ctx, claim, []string{"j"}))
		_, ok := b.score(t, proto.KeptKey, "j")
		require.True(t, ok, "the new end's index entry stays")
	})
}

func TestParamsForKeepsTheAPIsJobs(t *testing.T) {
	t.Parallel()
	require.True(t, rdb.ParamsFor(&proto.Job{ID: "a", Source: proto.SourceAPI}).Kept)
	for _, src := range []string{proto.SourceBatch, proto.SourceRunPod, ""} {
		require.False(t, rdb.ParamsFor(&proto.Job{ID: "a", Source: src}).Kept, src)
	}
}
