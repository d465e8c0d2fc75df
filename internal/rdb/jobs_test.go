package rdb_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

const none proto.Status = "" // no record

var allStates = []proto.Status{none, proto.StatusInQueue, proto.StatusInProgress,
	proto.StatusCompleted, proto.StatusFailed, proto.StatusTimedOut, proto.StatusCancelled}

var terminalStates = []proto.Status{proto.StatusCompleted, proto.StatusFailed, proto.StatusTimedOut, proto.StatusCancelled}

// ops are every operation, applied to a record cur (nil when missing).
var ops = map[string]func(b *bundle, id string, cur *proto.Record) (*proto.Record, error){
	"create": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		rec, _, err := b.db.Create(b.ctx, rdb.CreateParams{ID: id, Pool: "other", Lane: proto.LaneInteractive}, time.Time{}, false)
		return rec, err
	},
	"admit": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		_, rec, err := b.db.Admit(b.ctx, "99", rdb.CreateParams{ID: id, Pool: "other", Lane: proto.LaneInteractive}, "")
		return rec, err
	},
	"admit-reject": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		_, rec, err := b.db.Admit(b.ctx, "99", rdb.CreateParams{ID: id}, "field input: bad")
		return rec, err
	},
	"claim": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		c, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: id, WorkerID: "w2", Reply: "r2", LeaseTTL: time.Minute})
		if err != nil {
			return nil, err
		}
		return c.Record, nil
	},
	"requeue": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		_, rec, err := b.db.Requeue(b.ctx, id, attemptOf(cur), "comfyui died", false, 0)
		return rec, err
	},
	"requeue-stale": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		_, rec, err := b.db.Requeue(b.ctx, id, attemptOf(cur)+1, "comfyui died", true, 3)
		return rec, err
	},
	"finish-completed": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.db.Finish(b.ctx, id, attemptOf(cur), proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "", false)
	},
	"finish-failed": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.db.Finish(b.ctx, id, attemptOf(cur), proto.StatusFailed, nil, "boom", false)
	},
	"finish-timed-out": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.db.Finish(b.ctx, id, attemptOf(cur), proto.StatusTimedOut, nil, "execution timeout", false)
	},
	"finish-stale": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.db.Finish(b.ctx, id, attemptOf(cur)+1, proto.StatusCompleted, nil, "", false)
	},
	"finish-cancelled": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.db.Finish(b.ctx, id, attemptOf(cur), proto.StatusCancelled, nil, "", false)
	},
	"finish-in-queue": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.db.Finish(b.ctx, id, attemptOf(cur), proto.StatusInQueue, nil, "", false)
	},
	"expire": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		return b.db.Expire(b.ctx, id)
	},
	"cancel": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		rec, _, err := b.db.Cancel(b.ctx, id)
		return rec, err
	},
	"cancelqueued": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		return b.db.CancelQueued(b.ctx, id)
	},
	"fail": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.db.Fail(b.ctx, id, attemptOf(cur), "retry could not be queued")
	},
	"retry": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		return b.db.Retry(b.ctx, id)
	},
}

func attemptOf(r *proto.Record) int {
	if r == nil {
		return 0
	}
	return r.Attempt
}

// transitions is the state machine: for each operation, which states it
// accepts and what they become. want "" with no error means "unchanged".
var transitions = []struct {
	op      string
	from    []proto.Status
	want    proto.Status
	wantErr error
}{
	{"create", []proto.Status{none}, proto.StatusInQueue, nil},
	{"create", allStates[1:], "", nil},

	// bring makes records outside admission (no intake): every admission
	// of an existing id is another submission, which changes nothing.
	{"admit", []proto.Status{none}, proto.StatusInQueue, nil},
	{"admit", allStates[1:], "", nil},
	{"admit-reject", []proto.Status{none}, proto.StatusFailed, nil},
	{"admit-reject", allStates[1:], "", nil},

	{"claim", []proto.Status{proto.StatusInQueue}, proto.StatusInProgress, nil},
	{"claim", []proto.Status{proto.StatusInProgress}, "", rdb.ErrHeld},
	{"claim", terminalStates, "", rdb.ErrTerminal},
	{"claim", []proto.Status{none}, "", rdb.ErrNotFound},

	{"requeue", []proto.Status{proto.StatusInProgress}, proto.StatusInQueue, nil},
	{"requeue", []proto.Status{proto.StatusInQueue}, "", rdb.ErrStale},
	{"requeue", terminalStates, "", rdb.ErrTerminal},
	{"requeue", []proto.Status{none}, "", rdb.ErrNotFound},

	{"requeue-stale", allStates[1:], "", rdb.ErrStale},
	{"requeue-stale", []proto.Status{none}, "", rdb.ErrNotFound},

	{"finish-completed", []proto.Status{proto.StatusInProgress}, proto.StatusCompleted, nil},
	{"finish-failed", []proto.Status{proto.StatusInProgress}, proto.StatusFailed, nil},
	{"finish-timed-out", []proto.Status{proto.StatusInProgress}, proto.StatusTimedOut, nil},
	{"finish-completed", []proto.Status{proto.StatusInQueue}, "", rdb.ErrStale},
	{"finish-failed", []proto.Status{proto.StatusInQueue}, "", rdb.ErrStale},
	{"finish-timed-out", []proto.Status{proto.StatusInQueue}, "", rdb.ErrStale},
	// Repeating the Finish that made the record terminal succeeds and
	// changes nothing (bring reaches these three through Finish).
	{"finish-completed", []proto.Status{proto.StatusCompleted}, "", nil},
	{"finish-failed", []proto.Status{proto.StatusFailed}, "", nil},
	{"finish-timed-out", []proto.Status{proto.StatusTimedOut}, "", nil},
	{"finish-completed", []proto.Status{proto.StatusFailed, proto.StatusTimedOut, proto.StatusCancelled}, "", rdb.ErrTerminal},
	{"finish-failed", []proto.Status{proto.StatusCompleted, proto.StatusTimedOut, proto.StatusCancelled}, "", rdb.ErrTerminal},
	{"finish-timed-out", []proto.Status{proto.StatusCompleted, proto.StatusFailed, proto.StatusCancelled}, "", rdb.ErrTerminal},
	{"finish-completed", []proto.Status{none}, "", rdb.ErrNotFound},
	{"finish-failed", []proto.Status{none}, "", rdb.ErrNotFound},
	{"finish-timed-out", []proto.Status{none}, "", rdb.ErrNotFound},

	{"finish-stale", allStates[1:], "", rdb.ErrStale},
	{"finish-stale", []proto.Status{none}, "", rdb.ErrNotFound},

	{"finish-cancelled", allStates[1:], "", rdb.ErrIllegal},
	{"finish-cancelled", []proto.Status{none}, "", rdb.ErrNotFound},
	{"finish-in-queue", allStates[1:], "", rdb.ErrIllegal},
	{"finish-in-queue", []proto.Status{none}, "", rdb.ErrNotFound},

	// A fresh job's TTL (24 h) has not run out: see TestExpire.
	{"expire", []proto.Status{proto.StatusInQueue}, "", rdb.ErrNotDue},
	{"expire", []proto.Status{proto.StatusInProgress}, "", rdb.ErrIllegal},
	{"expire", terminalStates, "", rdb.ErrTerminal},
	{"expire", []proto.Status{none}, "", rdb.ErrNotFound},

	{"cancel", []proto.Status{proto.StatusInQueue, proto.StatusInProgress}, proto.StatusCancelled, nil},
	{"cancel", terminalStates, "", rdb.ErrTerminal},
	{"cancel", []proto.Status{none}, "", rdb.ErrNotFound},

	{"cancelqueued", []proto.Status{proto.StatusInQueue}, proto.StatusCancelled, nil},
	{"cancelqueued", []proto.Status{proto.StatusInProgress}, "", rdb.ErrIllegal},
	{"cancelqueued", terminalStates, "", rdb.ErrTerminal},
	{"cancelqueued", []proto.Status{none}, "", rdb.ErrNotFound},

	{"fail", []proto.Status{proto.StatusInQueue}, proto.StatusFailed, nil},
	{"fail", []proto.Status{proto.StatusInProgress}, "", rdb.ErrStale},
	{"fail", terminalStates, "", rdb.ErrTerminal},
	{"fail", []proto.Status{none}, "", rdb.ErrNotFound},

	{"retry", []proto.Status{proto.StatusFailed, proto.StatusTimedOut}, proto.StatusInQueue, nil},
	{"retry", []proto.Status{proto.StatusInQueue, proto.StatusInProgress, proto.StatusCompleted, proto.StatusCancelled}, "", rdb.ErrIllegal},
	{"retry", []proto.Status{none}, "", rdb.ErrNotFound},
}

func stateName(s proto.Status) string {
	if s == none {
		return "NONE"
	}
	return string(s)
}

// TestTransitionTableComplete checks that the table names every operation
// in every state exactly once.
func TestTransitionTableComplete(t *testing.T) {
	t.Parallel()
	seen := map[string]int{}
	for _, tt := range transitions {
		require.Contains(t, ops, tt.op)
		for _, from := range tt.from {
			seen[tt.op+"/"+stateName(from)]++
		}
	}
	for op := range ops {
		for _, from := range allStates {
			require.Equal(t, 1, seen[op+"/"+stateName(from)], "%s from %s", op, stateName(from))
		}
	}
}

func TestTransitions(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		for _, tt := range transitions {
			for _, from := range tt.from {
				name := tt.op + "/" + stateName(from)
				t.Run(name, func(t *testing.T) {
					id := strings.ReplaceAll(strings.ToLower(name), "/", "-")
					cur := b.bring(t, id, from)
					hashBefore := b.hash(t, id)

					got, err := ops[tt.op](b, id, cur)

					if tt.wantErr != nil {
						require.ErrorIs(t, err, tt.wantErr)
						require.Equal(t, hashBefore, b.hash(t, id), "a refused operation changed the record")
						var he *rdb.HeldError
						if errors.Is(err, rdb.ErrNotFound) || errors.As(err, &he) {
							require.Nil(t, got)
							return
						}
						var te *rdb.TransitionError
						require.ErrorAs(t, err, &te)
						require.Equal(t, tt.op[:strings.IndexByte(tt.op+"-", '-')], te.Op)
						require.Equal(t, id, te.ID)
						require.Equal(t, from, te.From)
						require.Equal(t, cur.Attempt, te.Current)
						if tt.op != "claim" { // a refused claim has no Claimed
							require.Equal(t, cur, got, "a refusal returns the current record")
						}
						return
					}
					require.NoError(t, err)
					want := tt.want
					if want == "" {
						want = from
						require.Equal(t, cur, got, "want the record unchanged")
						require.Equal(t, hashBefore, b.hash(t, id))
					}
					require.Equal(t, want, got.Status)
					stored, err := b.db.Get(b.ctx, id)
					require.NoError(t, err)
					require.Equal(t, got, stored, "the returned record is the stored one")
				})
			}
		}
	})
}

// TestFencing: a worker whose lease lapsed and whose job another worker
// claimed can never write over the newer attempt, and learns it lost the
// job at its next renewal.
func TestFencing(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		b.bring(t, "job", proto.StatusInQueue)

		c1, err := db.Claim(ctx, rdb.ClaimParams{ID: "job", WorkerID: "w1", Reply: "r1", LeaseTTL: 50 * time.Millisecond})
		require.NoError(t, err)
		require.Equal(t, 1, c1.Lease.Attempt)
		// w1 goes silent; its lease lapses and the message is redelivered
		// to w2.
		b.waitLapsed(t, "job")
		c2 := b.claim(t, "job", "w2")
		require.Equal(t, 2, c2.Lease.Attempt)
		require.Equal(t, "w2", c2.Record.WorkerID)
		require.Equal(t, 1, c2.Record.Retries, "a redelivery counts as a retry")

		// w1 wakes up: its renewal says it lost the job, its reports are
		// refused.
		require.ErrorIs(t, db.Renew(ctx, "job", 1, time.Minute), rdb.ErrLeaseLost)
		got, err := db.Finish(ctx, "job", 1, proto.StatusFailed, nil, "late", false)
		require.ErrorIs(t, err, rdb.ErrStale)
		var te *rdb.TransitionError
		require.ErrorAs(t, err, &te)
		require.Equal(t, rdb.TransitionError{Op: "finish", ID: "job", From: proto.StatusInProgress,
			Attempt: 1, Current: 2, Err: rdb.ErrStale}, *te)
		require.Contains(t, err.Error(), "caller has attempt 1, the record has attempt 2")
		require.Equal(t, proto.StatusInProgress, got.Status)
		_, _, err = db.Requeue(ctx, "job", 1, "late", true, 3)
		require.ErrorIs(t, err, rdb.ErrStale)
		l, err := db.Lease(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, 2, l.Attempt, "the lease is the new attempt's")
		require.Equal(t, "reply.w2", l.Reply)

		// w2 completes; w1 still cannot overwrite.
		_, err = db.Finish(ctx, "job", 2, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "", false)
		require.NoError(t, err)
		_, err = db.Finish(ctx, "job", 1, proto.StatusFailed, nil, "late", false)
		require.ErrorIs(t, err, rdb.ErrStale)
		rec, err := db.Get(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, proto.StatusCompleted, rec.Status)
		require.Equal(t, 2, rec.Attempt)
		require.JSONEq(t, `{"images":[]}`, string(rec.Output))
		_, err = db.Lease(ctx, "job")
		require.ErrorIs(t, err, rdb.ErrLeaseLost, "Finish ends the lease")
	})
}

// TestClaimHeld: a delivery of a job whose holder's lease is alive is a
// duplicate; the claim says how long the lease has left and changes
// nothing.
func TestClaimHeld(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		b.bring(t, "job", proto.StatusInQueue)
		b.claim(t, "job", "w1")
		_, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: "job", WorkerID: "w2", Reply: "r2", LeaseTTL: time.Minute})
		var he *rdb.HeldError
		require.ErrorAs(t, err, &he)
		require.Greater(t, he.Left, 50*time.Second)
		require.LessOrEqual(t, he.Left, time.Minute)
		rec, err := b.db.Get(b.ctx, "job")
		require.NoError(t, err)
		require.Equal(t, 1, rec.Attempt)
		require.Equal(t, "w1", rec.WorkerID)
	})
}

// TestLeaseTimesAreRedis: the lease's expiry and deadline are on Redis's
// clock, and the held set names the worker's jobs.
func TestLeaseTimesAreRedis(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		b.bring(t, "job", proto.StatusInQueue)
		before := b.now(t)
		c, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: "job", WorkerID: "w1", Taker: "pod-1", Reply: "r", LeaseTTL: 20 * time.Second, ExecTimeout: time.Minute})
		require.NoError(t, err)
		after := b.now(t)
		require.WithinRange(t, c.Lease.Deadline, before.Add(time.Minute-time.Millisecond), after.Add(time.Minute+time.Millisecond))
		exp, ok := b.score(t, proto.LeasesKey, "job")
		require.True(t, ok)
		require.InDelta(t, float64(before.Add(20*time.Second).UnixMilli()), exp, float64(time.Second/time.Millisecond))
		l, err := b.db.Lease(b.ctx, "job")
		require.NoError(t, err)
		require.Equal(t, rdb.Lease{JobID: "job", Attempt: 1, WorkerID: "w1", Taker: "pod-1", Reply: "r",
			Deadline: c.Lease.Deadline, TTL: 20 * time.Second}, *l)
		held, err := b.db.Held(b.ctx, "w1")
		require.NoError(t, err)
		require.Equal(t, []string{"job"}, held)
		_, err = b.db.Finish(b.ctx, "job", 1, proto.StatusCompleted, nil, "", false)
		require.NoError(t, err)
		held, err = b.db.Held(b.ctx, "w1")
		require.NoError(t, err)
		require.Empty(t, held)
	})
}

// TestRenewRevivesALapsedLease: a lease that lapsed while nobody took it
// (Redis was away, the sweeper waited) is renewed, and drops out of the
// lapsed list.
func TestRenewRevivesALapsedLease(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		b.bring(t, "job", proto.StatusInQueue)
		_, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: "job", WorkerID: "w1", Reply: "r", LeaseTTL: 30 * time.Millisecond})
		require.NoError(t, err)
		b.waitLapsed(t, "job")
		require.NoError(t, b.db.Renew(b.ctx, "job", 1, time.Minute))
		ids, err := b.db.LapsedLeases(b.ctx, 100)
		require.NoError(t, err)
		require.NotContains(t, ids, "job")
		r, err := b.db.Reclaim(b.ctx, "job", 0)
		require.NoError(t, err)
		require.Equal(t, rdb.Skipped, r.Outcome, "a renewed lease is not reclaimed")
	})
}

// TestRenewAfterCancel: a job cancelled while it ran tells its holder at
// the next renewal; Release then ends the lease.
func TestRenewAfterCancel(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		b.bring(t, "job", proto.StatusInQueue)
		b.claim(t, "job", "w1")
		_, running, err := b.db.Cancel(b.ctx, "job")
		require.NoError(t, err)
		require.True(t, running)
		require.ErrorIs(t, b.db.Renew(b.ctx, "job", 1, time.Minute), rdb.ErrTerminal)
		require.ErrorIs(t, b.db.Renew(b.ctx, "job", 2, time.Minute), rdb.ErrLeaseLost, "another attempt's renewal")
		_, err = b.db.Lease(b.ctx, "job")
		require.NoError(t, err, "the cancel leaves the lease for the holder to settle")
		require.NoError(t, b.db.Release(b.ctx, "job", 1))
		_, err = b.db.Lease(b.ctx, "job")
		require.ErrorIs(t, err, rdb.ErrLeaseLost)
		_, ok := b.score(t, proto.LeasesKey, "job")
		require.False(t, ok)
	})
}

// TestReclaim is the sweeper's step for each state a lapsed lease can
// meet.
func TestReclaim(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		lapse := func(t *testing.T, id string, exec time.Duration) {
			t.Helper()
			b.bring(t, id, proto.StatusInQueue)
			_, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: id, WorkerID: "w1", Reply: "reply-" + id, LeaseTTL: 20 * time.Millisecond, ExecTimeout: exec})
			require.NoError(t, err)
			b.waitLapsed(t, id)
		}
		t.Run("handed back", func(t *testing.T) {
			lapse(t, "lost", time.Hour)
			r, err := b.db.Reclaim(b.ctx, "lost", time.Minute)
			require.NoError(t, err)
			require.Equal(t, rdb.Requeued, r.Outcome)
			require.False(t, r.Ack)
			require.Equal(t, "reply-lost", r.Lease.Reply)
			require.Equal(t, 1, r.Failures)
			require.Equal(t, proto.StatusInQueue, r.Record.Status)
			require.Equal(t, 1, r.Record.Retries)
			errs, err := b.db.AttemptErrors(b.ctx, "lost")
			require.NoError(t, err)
			require.Equal(t, []string{"attempt 1: " + proto.MsgLeaseLapsed}, errs)
			_, ok := b.score(t, proto.TTLKey, "lost")
			require.True(t, ok, "back in the TTL index")
			again, err := b.db.Reclaim(b.ctx, "lost", time.Minute)
			require.NoError(t, err)
			require.Equal(t, rdb.Skipped, again.Outcome, "only one sweeper gets a lease")
		})
		t.Run("past its deadline", func(t *testing.T) {
			lapse(t, "late", time.Millisecond)
			r, err := b.db.Reclaim(b.ctx, "late", 0)
			require.NoError(t, err)
			require.Equal(t, rdb.TimedOut, r.Outcome)
			require.True(t, r.Ack)
			require.Equal(t, proto.StatusTimedOut, r.Record.Status)
			require.Equal(t, proto.MsgWorkerSilent, r.Record.Error)
			require.JSONEq(t, `{"error":"`+proto.MsgWorkerSilent+`"}`, string(r.Record.Output))
		})
		t.Run("ended but never acked", func(t *testing.T) {
			lapse(t, "ended", time.Hour)
			_, _, err := b.db.Cancel(b.ctx, "ended")
			require.NoError(t, err)
			r, err := b.db.Reclaim(b.ctx, "ended", 0)
			require.NoError(t, err)
			require.Equal(t, rdb.Settle, r.Outcome)
			require.True(t, r.Ack)
			require.Equal(t, "reply-ended", r.Lease.Reply)
		})
		t.Run("record lost", func(t *testing.T) {
			lapse(t, "gone", time.Hour)
			require.NoError(t, b.rdb.Del(b.ctx, b.key("gone")).Err())
			r, err := b.db.Reclaim(b.ctx, "gone", 0)
			require.NoError(t, err)
			require.Equal(t, rdb.Settle, r.Outcome)
			require.False(t, r.Ack, "handed back, so a worker makes the record again")
			require.Nil(t, r.Record)
		})
		t.Run("not lapsed", func(t *testing.T) {
			b.bring(t, "alive", proto.StatusInQueue)
			b.claim(t, "alive", "w1")
			r, err := b.db.Reclaim(b.ctx, "alive", 0)
			require.NoError(t, err)
			require.Equal(t, rdb.Skipped, r.Outcome)
		})
	})
}

// TestReclaimRaces: sweepers on many replicas reclaim the same lapsed
// leases at once; each job is handed back exactly once.
func TestReclaimRaces(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		const n, sweepers = 20, 4
		for i := range n {
			id := fmt.Sprintf("r-%d", i)
			b.bring(t, id, proto.StatusInQueue)
			_, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: id, WorkerID: "w1", Reply: "r", LeaseTTL: 10 * time.Millisecond})
			require.NoError(t, err)
		}
		b.waitLapsed(t, fmt.Sprintf("r-%d", n-1))
		var mu sync.Mutex
		requeued := map[string]int{}
		var wg sync.WaitGroup
		for range sweepers {
			wg.Go(func() {
				for i := range n {
					id := fmt.Sprintf("r-%d", i)
					r, err := b.db.Reclaim(b.ctx, id, time.Minute)
					if err == nil && r.Outcome == rdb.Requeued {
						mu.Lock()
						requeued[id]++
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		require.Len(t, requeued, n)
		for id, c := range requeued {
			require.Equal(t, 1, c, id)
		}
	})
}

// TestSweepClock: after a gap in the sweeps, lease reclaims wait so the
// workers, who could not renew meanwhile, renew first.
func TestSweepClock(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		wait, err := b.db.SweepClock(b.ctx, 3*time.Second, time.Minute)
		require.NoError(t, err)
		require.Zero(t, wait, "the first sweep ever")
		wait, err = b.db.SweepClock(b.ctx, 3*time.Second, time.Minute)
		require.NoError(t, err)
		require.Zero(t, wait, "sweeps close together")

		// The last sweep was ten seconds ago (Redis was down).
		last := b.now(t).Add(-10 * time.Second).UnixMilli()
		require.NoError(t, b.rdb.HSet(b.ctx, b.prefix+proto.SweepKey, "last", last).Err())
		wait, err = b.db.SweepClock(b.ctx, 3*time.Second, 200*time.Millisecond)
		require.NoError(t, err)
		require.Greater(t, wait, 100*time.Millisecond)
		require.LessOrEqual(t, wait, 200*time.Millisecond)
		require.Eventually(t, func() bool {
			w, err := b.db.SweepClock(b.ctx, 3*time.Second, 200*time.Millisecond)
			return err == nil && w == 0
		}, 5*time.Second, 10*time.Millisecond, "the wait ends")
	})
}

// TestAttemptsAndDeadLetterDebt: counted requeues fill the attempt log;
// the last one is refused (ErrExhausted) and the job is finished with a
// dead letter owed, which a later claim of a delivery sees until it is
// paid.
func TestAttemptsAndDeadLetterDebt(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		b.bring(t, "job", proto.StatusInQueue)
		b.claim(t, "job", "w1")
		n, rec, err := db.Requeue(ctx, "job", 1, "out of memory", true, 2)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Equal(t, proto.StatusInQueue, rec.Status)
		require.Equal(t, "out of memory", b.hash(t, "job")["requeue_reason"])

		c := b.claim(t, "job", "w2")
		require.Equal(t, 1, c.Failures, "the claim says how many attempts failed")
		n, rec, err = db.Requeue(ctx, "job", 2, "out of memory again", true, 2)
		require.ErrorIs(t, err, rdb.ErrExhausted)
		require.Equal(t, 2, n)
		require.Equal(t, proto.StatusInProgress, rec.Status, "the caller finishes it")
		errs, err := db.AttemptErrors(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, []string{"attempt 1: out of memory", "attempt 2: out of memory again"}, errs)

		_, err = db.Finish(ctx, "job", 2, proto.StatusFailed, nil, "Job failed after 2 attempts", true)
		require.NoError(t, err)
		_, err = db.Claim(ctx, rdb.ClaimParams{ID: "job", WorkerID: "w3", Reply: "r3", LeaseTTL: time.Minute})
		require.ErrorIs(t, err, rdb.ErrTerminal)
		require.True(t, rdb.DeadLetterOwed(err), "the dead letter is still owed")
		require.NoError(t, db.DeadLettered(ctx, "job", 2))
		_, err = db.Claim(ctx, rdb.ClaimParams{ID: "job", WorkerID: "w3", Reply: "r3", LeaseTTL: time.Minute})
		require.ErrorIs(t, err, rdb.ErrTerminal)
		require.False(t, rdb.DeadLetterOwed(err))
		require.NotContains(t, b.hash(t, "job"), "dlq")

		// A retry starts the attempts afresh.
		_, err = db.Retry(ctx, "job")
		require.NoError(t, err)
		errs, err = db.AttemptErrors(ctx, "job")
		require.NoError(t, err)
		require.Empty(t, errs)
	})
}

// TestAdmit: a new id is recorded (and TTL-indexed); the redelivery of the
// submission that made the record goes on from it; any other submission
// of the id changes nothing and is counted.
func TestAdmit(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		p := rdb.CreateParams{ID: "job", Pool: "sdxl", Lane: proto.LaneInteractive, Source: "api", Tenant: "acme", TTL: time.Hour}
		adm, rec, err := db.Admit(ctx, "7", p, "")
		require.NoError(t, err)
		require.Equal(t, rdb.Created, adm)
		require.Equal(t, proto.StatusInQueue, rec.Status)
		require.Equal(t, "acme", rec.Tenant)
		score, ok := b.score(t, proto.TTLKey, "job")
		require.True(t, ok)
		require.InDelta(t, float64(rec.SubmittedAt.Add(time.Hour).UnixMilli()), score, 1)
		hash := b.hash(t, "job")

		adm, _, err = db.Admit(ctx, "7", p, "")
		require.NoError(t, err)
		require.Equal(t, rdb.Same, adm, "the same submission, redelivered")
		adm, got, err := db.Admit(ctx, "8", rdb.CreateParams{ID: "job", Pool: "other", Lane: proto.LaneBatch, Tenant: "beta"}, "field lane: bad")
		require.NoError(t, err)
		require.Equal(t, rdb.Exists, adm, "another submission of the id")
		require.Equal(t, rec, got)
		require.Equal(t, "acme", got.Tenant, "another tenant's submission changes nothing")
		require.Equal(t, hash, b.hash(t, "job"), "nothing changed")

		// Once a worker runs it, even its own submission cannot fail it.
		b.claim(t, "job", "w1")
		adm, got, err = db.Admit(ctx, "7", p, "models missing")
		require.NoError(t, err)
		require.Equal(t, rdb.Same, adm)
		require.Equal(t, proto.StatusInProgress, got.Status)

		// While it waits, its own submission may still reject it.
		_, _, err = db.Admit(ctx, "9", rdb.CreateParams{ID: "j2"}, "")
		require.NoError(t, err)
		adm, got, err = db.Admit(ctx, "9", rdb.CreateParams{ID: "j2"}, "no worker has the models")
		require.NoError(t, err)
		require.Equal(t, rdb.Rejected, adm)
		require.Equal(t, proto.StatusFailed, got.Status)
		require.Equal(t, "no worker has the models", got.Error)
		_, ok = b.score(t, proto.TTLKey, "j2")
		require.False(t, ok, "a terminal job leaves the TTL index")

		counts, err := db.Counts(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), counts[rdb.CountDuplicate])
	})
}

// TestCreateRecreated: a record made again from a job message is counted,
// and keeps the message's submission time.
func TestCreateRecreated(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		submitted := b.now(t).Add(-time.Minute).Truncate(time.Millisecond)
		rec, created, err := b.db.Create(b.ctx, rdb.CreateParams{ID: "job"}, submitted, true)
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, submitted.UTC(), rec.SubmittedAt)
		_, created, err = b.db.Create(b.ctx, rdb.CreateParams{ID: "job"}, submitted, true)
		require.NoError(t, err)
		require.False(t, created)
		counts, err := b.db.Counts(b.ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), counts[rdb.CountRecreated])

		// A submission time ahead of Redis's clock is taken as now, so the
		// job's delayTime is never negative.
		now := b.now(t)
		rec, _, err = b.db.Create(b.ctx, rdb.CreateParams{ID: "ahead"}, now.Add(time.Hour), true)
		require.NoError(t, err)
		require.False(t, rec.SubmittedAt.After(b.now(t)), "submitted_at %s is not in the future", rec.SubmittedAt)
		require.False(t, rec.SubmittedAt.Before(now.Add(-time.Second)))
	})
}

// TestExpire: a job still queued when its TTL runs out is timed out, by
// the sweeper (Expire) or at its claim.
func TestExpire(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		for _, id := range []string{"swept", "claimed"} {
			_, _, err := b.db.Admit(b.ctx, "1", rdb.CreateParams{ID: id, TTL: 20 * time.Millisecond}, "")
			require.NoError(t, err)
		}
		require.Eventually(t, func() bool {
			ids, err := b.db.DueTTL(b.ctx, 100)
			return err == nil && len(ids) == 2
		}, 5*time.Second, 5*time.Millisecond)
		rec, err := b.db.Expire(b.ctx, "swept")
		require.NoError(t, err)
		require.Equal(t, proto.StatusTimedOut, rec.Status)
		require.Equal(t, proto.MsgTTLExpired, rec.Error)
		_, err = b.db.Claim(b.ctx, rdb.ClaimParams{ID: "claimed", WorkerID: "w", Reply: "r", LeaseTTL: time.Minute})
		require.ErrorIs(t, err, rdb.ErrExpired)
		rec, err = b.db.Get(b.ctx, "claimed")
		require.NoError(t, err)
		require.Equal(t, proto.StatusTimedOut, rec.Status)
		ids, err := b.db.DueTTL(b.ctx, 100)
		require.NoError(t, err)
		require.Empty(t, ids, "both left the index")
	})
}

// TestRetryRearmsTheTTL: a retried job's TTL counts from the retry.
func TestRetryRearmsTheTTL(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		_, _, err := db.Admit(ctx, "1", rdb.CreateParams{ID: "job", TTL: time.Hour}, "")
		require.NoError(t, err)
		b.claim(t, "job", "w1")
		_, err = db.Finish(ctx, "job", 1, proto.StatusFailed, json.RawMessage(`{"details":["x"]}`), "node 3 failed", false)
		require.NoError(t, err)
		_, ok := b.score(t, proto.TTLKey, "job")
		require.False(t, ok)
		b.requireTTL(t, "job", rdb.DefaultRetention)

		before := b.now(t)
		rec, err := db.Retry(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, &proto.Record{ID: "job", Status: proto.StatusInQueue, Attempt: 1, Retries: 1,
			Tenant: proto.DefaultTenant, SubmittedAt: rec.SubmittedAt}, rec)
		require.False(t, rec.SubmittedAt.Before(before.Truncate(time.Millisecond)), "submitted_at is the retry's")
		score, ok := b.score(t, proto.TTLKey, "job")
		require.True(t, ok, "back in the TTL index")
		require.InDelta(t, float64(rec.SubmittedAt.Add(time.Hour).UnixMilli()), score, 1)
		require.Equal(t, fmt.Sprint(rec.SubmittedAt.Add(time.Hour).UnixMilli()), b.hash(t, "job")["expires_at"])
		b.requireTTL(t, "job", 2*time.Hour)

		_, err = db.Retry(ctx, "job")
		require.ErrorIs(t, err, rdb.ErrIllegal, "retry of a queued job")
		c := b.claim(t, "job", "w2")
		require.Equal(t, 2, c.Lease.Attempt, "attempts keep counting across a retry")
		_, err = db.Finish(ctx, "job", 1, proto.StatusCompleted, nil, "", false)
		require.ErrorIs(t, err, rdb.ErrStale, "the first run cannot report into the retry")
		rec, err = db.Finish(ctx, "job", 2, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "", false)
		require.NoError(t, err)
		require.Equal(t, proto.StatusCompleted, rec.Status)
		require.Empty(t, rec.Error)
	})
}

// TestTerminalNeverGoesBack applies every operation but Retry to every
// terminal state and checks the hash and its expiry are untouched.
func TestTerminalNeverGoesBack(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		for _, from := range terminalStates {
			id := "final-" + strings.ToLower(string(from))
			cur := b.bring(t, id, from)
			before := b.hash(t, id)
			ttl := b.pttl(t, id)
			for name, op := range ops {
				if name == "retry" {
					continue
				}
				_, _ = op(b, id, cur)
				require.Equal(t, before, b.hash(t, id), "%s on %s", name, from)
				require.LessOrEqual(t, b.pttl(t, id), ttl, "%s on %s extended the retention", name, from)
			}
		}
	})
}

func TestCreateRejectsBadParams(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		_, _, err := b.db.Create(b.ctx, rdb.CreateParams{ID: "a b"}, time.Time{}, false)
		require.ErrorContains(t, err, "only letters, digits")
		_, _, err = b.db.Create(b.ctx, rdb.CreateParams{ID: "x", Lane: "fast"}, time.Time{}, false)
		require.ErrorContains(t, err, `"fast" is not a lane`)
		_, _, err = b.db.Admit(b.ctx, "1", rdb.CreateParams{ID: ""}, "no id")
		require.ErrorContains(t, err, "id is empty")
		_, err = b.db.Finish(b.ctx, "x", 1, proto.StatusCompleted, json.RawMessage(`{`), "", false)
		require.ErrorContains(t, err, "output is not valid JSON")
		_, err = b.db.Claim(b.ctx, rdb.ClaimParams{ID: "x"})
		require.ErrorContains(t, err, "lease TTL must be positive")
	})
}

func TestRetention(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		tests := []struct {
			name      string
			params    rdb.CreateParams
			queued    time.Duration // expiry while not terminal
			retention time.Duration // expiry once terminal
		}{
			{"run defaults", rdb.CreateParams{ID: "run"}, 25 * time.Hour, 30 * time.Minute},
			{"runsync", rdb.CreateParams{ID: "sync", Retention: time.Minute}, 25 * time.Hour, time.Minute},
			{"policy ttl", rdb.CreateParams{ID: "ttl", TTL: 10 * time.Minute}, 10*time.Minute + time.Hour, 30 * time.Minute},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				id := tt.params.ID
				_, _, err := db.Create(ctx, tt.params, time.Time{}, false)
				require.NoError(t, err)
				b.requireTTL(t, id, tt.queued)
				c := b.claim(t, id, "w1")
				b.requireTTL(t, id, tt.queued)
				_, err = db.Finish(ctx, id, c.Lease.Attempt, proto.StatusCompleted, nil, "", false)
				require.NoError(t, err)
				b.requireTTL(t, id, tt.retention)
			})
		}
		t.Run("cancel, fail and rejection keep the retention too", func(t *testing.T) {
			for i, op := range []func(id string) error{
				func(id string) error { _, _, err := db.Cancel(ctx, id); return err },
				func(id string) error { _, err := db.Fail(ctx, id, 0, "bad"); return err },
			} {
				id := fmt.Sprintf("short-%d", i)
				_, _, err := db.Create(ctx, rdb.CreateParams{ID: id, Retention: time.Minute}, time.Time{}, false)
				require.NoError(t, err)
				require.NoError(t, op(id))
				b.requireTTL(t, id, time.Minute)
			}
			_, _, err := db.Admit(ctx, "1", rdb.CreateParams{ID: "rejected-new", Retention: 2 * time.Minute}, "bad")
			require.NoError(t, err)
			b.requireTTL(t, "rejected-new", 2*time.Minute)
		})
	})
}

func TestOptions(t *testing.T) {
	conformance(t, rdb.Options{Retention: 5 * time.Minute, TTL: time.Hour}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		_, _, err := db.Create(ctx, rdb.CreateParams{ID: "job"}, time.Time{}, false)
		require.NoError(t, err)
		b.requireTTL(t, "job", 2*time.Hour)
		_, _, err = db.Cancel(ctx, "job")
		require.NoError(t, err)
		b.requireTTL(t, "job", 5*time.Minute)
		require.Equal(t, b.prefix, db.Prefix())
	})
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, rdb.Options{}.Validate())
	require.ErrorContains(t, rdb.Options{Retention: -time.Second}.Validate(), "retention -1s")
	require.ErrorContains(t, rdb.Options{TTL: -time.Second}.Validate(), "TTL -1s")
	require.ErrorContains(t, rdb.Options{WorkerTTL: -time.Second}.Validate(), "worker TTL -1s")
}

// TestTimes: every time is Redis's; delayTime and executionTime follow.
func TestTimes(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		t0 := b.now(t).Truncate(time.Millisecond)
		rec, _, err := db.Create(ctx, rdb.CreateParams{ID: "job"}, time.Time{}, false)
		require.NoError(t, err)
		require.False(t, rec.SubmittedAt.Before(t0))
		require.Zero(t, rec.DelayTime())

		c := b.claim(t, "job", "w1")
		require.False(t, c.Record.StartedAt.Before(rec.SubmittedAt))
		require.GreaterOrEqual(t, c.Record.DelayTime(), time.Duration(0))
		require.Zero(t, c.Record.ExecutionTime())
		rec, err = db.Finish(ctx, "job", 1, proto.StatusCompleted, nil, "", false)
		require.NoError(t, err)
		require.False(t, rec.FinishedAt.Before(rec.StartedAt))
		require.Equal(t, rec.FinishedAt.Sub(rec.StartedAt), rec.ExecutionTime())
		require.False(t, b.now(t).Before(rec.FinishedAt))

		// A job cancelled in the queue never started.
		_, _, err = db.Create(ctx, rdb.CreateParams{ID: "queued"}, time.Time{}, false)
		require.NoError(t, err)
		rec, _, err = db.Cancel(ctx, "queued")
		require.NoError(t, err)
		require.Zero(t, rec.DelayTime())
		require.Zero(t, rec.ExecutionTime())
		require.False(t, rec.FinishedAt.IsZero())
	})
}

func TestRequeue(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		b.bring(t, "job", proto.StatusInQueue)
		b.claim(t, "job", "w1")
		_, rec, err := db.Requeue(ctx, "job", 1, "worker stopped", false, 1)
		require.NoError(t, err, "an uncounted requeue is never the last attempt")
		require.Equal(t, proto.StatusInQueue, rec.Status)
		require.Equal(t, 1, rec.Retries)
		require.Equal(t, 1, rec.Attempt)
		require.Empty(t, rec.WorkerID)
		require.True(t, rec.StartedAt.IsZero())
		errs, err := db.AttemptErrors(ctx, "job")
		require.NoError(t, err)
		require.Empty(t, errs, "not counted")
		_, err = db.Lease(ctx, "job")
		require.ErrorIs(t, err, rdb.ErrLeaseLost, "the lease ended")

		_, _, err = db.Requeue(ctx, "job", 1, "again", false, 0)
		require.ErrorIs(t, err, rdb.ErrStale, "the attempt gave the job back already")
		_, err = db.Finish(ctx, "job", 1, proto.StatusCompleted, nil, "", false)
		require.ErrorIs(t, err, rdb.ErrStale)

		c := b.claim(t, "job", "w2")
		require.Equal(t, 2, c.Lease.Attempt)
		require.Equal(t, 1, c.Record.Retries, "claiming a requeued job is not another retry")
		require.NotContains(t, b.hash(t, "job"), "requeue_reason", "the reason belongs to the queued state")
	})
}

// TestNoSecrets checks that a job's secrets never reach Redis.
func TestNoSecrets(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		job, err := proto.DecodeJob([]byte(`{"v":1,"id":"j","input":{"workflow":{},"comfy_org_api_key":"SECRET-KEY"},
			"s3Config":{"accessId":"AKID","accessSecret":"SECRET-S3","bucketName":"b","endpointUrl":"https://s3"},
			"policy":{"ttl":60000},"retention_ms":60000,"pool":"p","lane":"batch","source":"batch"}`))
		require.NoError(t, err)
		p := rdb.ParamsFor(job)
		require.Equal(t, rdb.CreateParams{ID: "j", Pool: "p", Lane: proto.LaneBatch, Source: "batch",
			Retention: time.Minute, TTL: time.Minute}, p)
		_, _, err = b.db.Admit(b.ctx, "1", p, "")
		require.NoError(t, err)
		b.claim(t, "j", "w1")
		keys, err := b.rdb.Keys(b.ctx, b.prefix+"*").Result()
		require.NoError(t, err)
		for _, k := range keys {
			typ, err := b.rdb.Type(b.ctx, k).Result()
			require.NoError(t, err)
			if typ != "hash" {
				continue
			}
			for field, v := range b.rdb.HGetAll(b.ctx, k).Val() {
				require.NotContains(t, v, "SECRET", "%s %s", k, field)
				require.NotContains(t, v, "AKID", "%s %s", k, field)
			}
		}
	})
}

func TestCorruptRecord(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		tests := []struct {
			field, value string
			guarded      bool // the script refuses to change such a record
		}{
			{"status", "RUNNING", true},
			{"status", "", true},
			{"attempt", "x1", true},
			{"attempt", "1e3", true},
			{"retries", "-1", true},
			{"submitted_at", "yesterday", true},
			{"started_at", "1.5", true},
			{"finished_at", "99999999999999999999", true},
			{"lane", "fast", true},
			{"id", "someone-else", true},
			{"id", "", true},
			// The script does not parse JSON: a transition on a record
			// whose output is broken goes ahead, and the reply says
			// ErrCorrupt.
			{"output", `{"images":`, false},
		}
		for i, tt := range tests {
			t.Run(fmt.Sprintf("%s=%q", tt.field, tt.value), func(t *testing.T) {
				id := fmt.Sprintf("corrupt-%d", i)
				b.bring(t, id, proto.StatusInQueue)
				require.NoError(t, b.rdb.HSet(ctx, b.key(id), tt.field, tt.value).Err())
				before := b.hash(t, id)

				_, err := db.Get(ctx, id)
				var ce *rdb.CorruptError
				require.ErrorAs(t, err, &ce)
				require.ErrorIs(t, err, rdb.ErrCorrupt)
				require.Equal(t, tt.field, ce.Field)
				require.Equal(t, tt.value, ce.Value)
				require.Equal(t, b.key(id), ce.Key)
				require.Contains(t, err.Error(), "field "+tt.field)
				if !tt.guarded {
					return
				}
				for name, op := range ops {
					_, err := op(b, id, &proto.Record{})
					switch name {
					case "create", "admit", "admit-reject":
						// An existing record is left alone without being read.
					default:
						require.ErrorIs(t, err, rdb.ErrCorrupt, name)
					}
				}
				require.Equal(t, before, b.hash(t, id), "nothing writes over a corrupt record")
			})
		}
		t.Run("not a hash", func(t *testing.T) {
			require.NoError(t, b.rdb.Set(ctx, b.key("str"), "x", 0).Err())
			_, err := db.Get(ctx, "str")
			require.ErrorContains(t, err, "WRONGTYPE")
			_, _, err = db.Cancel(ctx, "str")
			require.ErrorContains(t, err, "WRONGTYPE")
		})
		t.Run("missing", func(t *testing.T) {
			_, err := db.Get(ctx, "nobody")
			require.ErrorIs(t, err, rdb.ErrNotFound)
		})
	})
}

// TestConcurrent races workers (claim then finish) and cancels on one job
// at a time: exactly one claim gets the job while its lease lives, exactly
// one terminal write wins, and the record is the winner's.
func TestConcurrent(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		const rounds, goroutines = 20, 8
		for round := range rounds {
			id := fmt.Sprintf("race-%d", round)
			b.bring(t, id, proto.StatusInQueue)

			var (
				mu        sync.Mutex
				finished  []int // attempts whose Finish succeeded
				claims    int
				cancelled int // successful cancels
				unexpect  []error
				wg        sync.WaitGroup
				start     = make(chan struct{})
			)
			record := func(f func()) { mu.Lock(); defer mu.Unlock(); f() }
			for g := range goroutines {
				wg.Go(func() {
					<-start
					if g%4 == 3 {
						_, _, err := db.Cancel(ctx, id)
						record(func() {
							if err == nil {
								cancelled++
							} else if !errors.Is(err, rdb.ErrTerminal) {
								unexpect = append(unexpect, err)
							}
						})
						return
					}
					worker := fmt.Sprintf("w%d", g)
					c, err := db.Claim(ctx, rdb.ClaimParams{ID: id, WorkerID: worker, Reply: worker, LeaseTTL: time.Minute})
					if err != nil {
						if !errors.Is(err, rdb.ErrTerminal) && !errors.Is(err, rdb.ErrHeld) {
							record(func() { unexpect = append(unexpect, err) })
						}
						return
					}
					record(func() { claims++ })
					out := json.RawMessage(fmt.Sprintf(`{"attempt":%d}`, c.Lease.Attempt))
					_, err = db.Finish(ctx, id, c.Lease.Attempt, proto.StatusCompleted, out, "", false)
					record(func() {
						switch {
						case err == nil:
							finished = append(finished, c.Lease.Attempt)
						case errors.Is(err, rdb.ErrStale), errors.Is(err, rdb.ErrTerminal):
						default:
							unexpect = append(unexpect, err)
						}
					})
				})
			}
			close(start)
			wg.Wait()

			require.Empty(t, unexpect)
			require.LessOrEqual(t, claims, 1, "one claim while the lease lives")
			require.Equal(t, 1, len(finished)+cancelled, "exactly one terminal write wins (finished %v, cancelled %d)", finished, cancelled)
			rec, err := db.Get(ctx, id)
			require.NoError(t, err)
			require.True(t, rec.Status.Terminal())
			if cancelled == 1 {
				require.Equal(t, proto.StatusCancelled, rec.Status)
				require.Empty(t, rec.Output)
				continue
			}
			require.Equal(t, proto.StatusCompleted, rec.Status)
			require.Equal(t, 1, rec.Attempt)
			require.JSONEq(t, `{"attempt":1}`, string(rec.Output))
		}
	})
}

func TestFinishRepeated(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		b.bring(t, "job", proto.StatusInQueue)
		c := b.claim(t, "job", "w1")
		first, err := db.Finish(ctx, "job", c.Lease.Attempt, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "", false)
		require.NoError(t, err)
		hash := b.hash(t, "job")

		// The reply was lost; the worker tries again.
		again, err := db.Finish(ctx, "job", c.Lease.Attempt, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "", false)
		require.NoError(t, err)
		require.Equal(t, first, again)
		require.Equal(t, hash, b.hash(t, "job"))

		// Another status from the same attempt is not a repeat.
		_, err = db.Finish(ctx, "job", c.Lease.Attempt, proto.StatusFailed, nil, "x", false)
		require.ErrorIs(t, err, rdb.ErrTerminal)
	})
}

func TestCancelWhileRunning(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		db, ctx := b.db, b.ctx
		b.bring(t, "job", proto.StatusInQueue)
		c := b.claim(t, "job", "w1")
		rec, running, err := db.Cancel(ctx, "job")
		require.NoError(t, err)
		require.True(t, running)
		require.Equal(t, proto.StatusCancelled, rec.Status)
		require.Equal(t, "w1", rec.WorkerID)

		// The worker finishes before it hears of the cancel: refused, and
		// it learns the job's fate from the record.
		got, err := db.Finish(ctx, "job", c.Lease.Attempt, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "", false)
		require.ErrorIs(t, err, rdb.ErrTerminal)
		require.Equal(t, rec, got)
		_, err = db.Claim(ctx, rdb.ClaimParams{ID: "job", WorkerID: "w2", Reply: "r", LeaseTTL: time.Minute})
		require.ErrorIs(t, err, rdb.ErrTerminal, "a redelivered cancelled job is dropped")
	})
}

func TestCounts(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		got, err := b.db.Counts(b.ctx)
		require.NoError(t, err)
		require.Empty(t, got)

		b.bring(t, "c1", proto.StatusCompleted)
		b.bring(t, "c2", proto.StatusCompleted)
		b.bring(t, "f1", proto.StatusFailed)
		b.bring(t, "x1", proto.StatusCancelled)
		_, err = b.db.Retry(b.ctx, "f1")
		require.NoError(t, err)
		// A refused transition counts nothing.
		_, _, err = b.db.Cancel(b.ctx, "c1")
		require.ErrorIs(t, err, rdb.ErrTerminal)

		got, err = b.db.Counts(b.ctx)
		require.NoError(t, err)
		require.Equal(t, map[proto.Status]int64{
			proto.StatusCompleted: 2, proto.StatusFailed: 1, proto.StatusCancelled: 1, rdb.CountRetried: 1,
		}, got)
	})
}

// TestCancelQueuedRacesClaim runs purge and claim together on many jobs:
// every job ends either claimed (and running) or cancelled, never both.
func TestCancelQueuedRacesClaim(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		const n = 40
		for i := range n {
			b.bring(t, fmt.Sprintf("race-%d", i), proto.StatusInQueue)
		}
		var wg sync.WaitGroup
		claimed := make([]bool, n)
		cancelled := make([]bool, n)
		for i := range n {
			id := fmt.Sprintf("race-%d", i)
			wg.Go(func() {
				_, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: id, WorkerID: "w", Reply: "r", LeaseTTL: time.Minute})
				claimed[i] = err == nil
			})
			wg.Go(func() {
				_, err := b.db.CancelQueued(b.ctx, id)
				cancelled[i] = err == nil
			})
		}
		wg.Wait()
		for i := range n {
			require.True(t, claimed[i] != cancelled[i], "job %d: claimed %v, cancelled %v", i, claimed[i], cancelled[i])
		}
	})
}
