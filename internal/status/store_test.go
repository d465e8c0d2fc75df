package status_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

const none proto.Status = "" // no record

var allStates = []proto.Status{none, proto.StatusInQueue, proto.StatusInProgress,
	proto.StatusCompleted, proto.StatusFailed, proto.StatusTimedOut, proto.StatusCancelled}

var terminalStates = []proto.Status{proto.StatusCompleted, proto.StatusFailed, proto.StatusTimedOut, proto.StatusCancelled}

// ops are every operation, applied to a record cur (nil when missing).
var ops = map[string]func(b *bundle, id string, cur *proto.Record) (*proto.Record, error){
	"create": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		rec, _, err := b.store.Create(b.ctx, status.CreateParams{ID: id, Pool: "other", Lane: proto.LaneInteractive})
		return rec, err
	},
	"reject": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		return b.store.Reject(b.ctx, status.CreateParams{ID: id}, "field input: bad")
	},
	"claim": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		_, rec, err := b.store.Claim(b.ctx, id, "w2")
		return rec, err
	},
	"requeue": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.store.Requeue(b.ctx, id, attemptOf(cur), "comfyui died")
	},
	"requeue-stale": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.store.Requeue(b.ctx, id, attemptOf(cur)+1, "comfyui died")
	},
	"finish-completed": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.store.Finish(b.ctx, id, attemptOf(cur), proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "")
	},
	"finish-failed": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.store.Finish(b.ctx, id, attemptOf(cur), proto.StatusFailed, nil, "node 3 failed")
	},
	"finish-timed-out": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.store.Finish(b.ctx, id, attemptOf(cur), proto.StatusTimedOut, nil, "execution timeout")
	},
	"finish-stale": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.store.Finish(b.ctx, id, attemptOf(cur)+1, proto.StatusCompleted, nil, "")
	},
	"finish-cancelled": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.store.Finish(b.ctx, id, attemptOf(cur), proto.StatusCancelled, nil, "")
	},
	"finish-in-queue": func(b *bundle, id string, cur *proto.Record) (*proto.Record, error) {
		return b.store.Finish(b.ctx, id, attemptOf(cur), proto.StatusInQueue, nil, "")
	},
	"expire": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		return b.store.Expire(b.ctx, id, "ttl passed")
	},
	"cancel": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		return b.store.Cancel(b.ctx, id)
	},
	"retry": func(b *bundle, id string, _ *proto.Record) (*proto.Record, error) {
		return b.store.Retry(b.ctx, id)
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

	{"reject", []proto.Status{none, proto.StatusInQueue, proto.StatusInProgress}, proto.StatusFailed, nil},
	{"reject", terminalStates, "", status.ErrTerminal},

	{"claim", []proto.Status{proto.StatusInQueue, proto.StatusInProgress}, proto.StatusInProgress, nil},
	{"claim", terminalStates, "", status.ErrTerminal},
	{"claim", []proto.Status{none}, "", status.ErrNotFound},

	{"requeue", []proto.Status{proto.StatusInProgress}, proto.StatusInQueue, nil},
	{"requeue", []proto.Status{proto.StatusInQueue}, "", status.ErrStale},
	{"requeue", terminalStates, "", status.ErrTerminal},
	{"requeue", []proto.Status{none}, "", status.ErrNotFound},

	{"requeue-stale", allStates[1:], "", status.ErrStale},
	{"requeue-stale", []proto.Status{none}, "", status.ErrNotFound},

	{"finish-completed", []proto.Status{proto.StatusInProgress}, proto.StatusCompleted, nil},
	{"finish-failed", []proto.Status{proto.StatusInProgress}, proto.StatusFailed, nil},
	{"finish-timed-out", []proto.Status{proto.StatusInProgress}, proto.StatusTimedOut, nil},
	{"finish-completed", []proto.Status{proto.StatusInQueue}, "", status.ErrStale},
	{"finish-failed", []proto.Status{proto.StatusInQueue}, "", status.ErrStale},
	{"finish-timed-out", []proto.Status{proto.StatusInQueue}, "", status.ErrStale},
	// Repeating the Finish that made the record terminal succeeds and
	// changes nothing (bring reaches COMPLETED and FAILED through Finish).
	{"finish-completed", []proto.Status{proto.StatusCompleted}, "", nil},
	{"finish-failed", []proto.Status{proto.StatusFailed}, "", nil},
	{"finish-completed", []proto.Status{proto.StatusFailed, proto.StatusTimedOut, proto.StatusCancelled}, "", status.ErrTerminal},
	{"finish-failed", []proto.Status{proto.StatusCompleted, proto.StatusTimedOut, proto.StatusCancelled}, "", status.ErrTerminal},
	{"finish-timed-out", terminalStates, "", status.ErrTerminal},
	{"finish-completed", []proto.Status{none}, "", status.ErrNotFound},
	{"finish-failed", []proto.Status{none}, "", status.ErrNotFound},
	{"finish-timed-out", []proto.Status{none}, "", status.ErrNotFound},

	{"finish-stale", allStates[1:], "", status.ErrStale},
	{"finish-stale", []proto.Status{none}, "", status.ErrNotFound},

	{"finish-cancelled", allStates[1:], "", status.ErrIllegal},
	{"finish-cancelled", []proto.Status{none}, "", status.ErrNotFound},
	{"finish-in-queue", allStates[1:], "", status.ErrIllegal},
	{"finish-in-queue", []proto.Status{none}, "", status.ErrNotFound},

	{"expire", []proto.Status{proto.StatusInQueue}, proto.StatusTimedOut, nil},
	{"expire", []proto.Status{proto.StatusInProgress}, "", status.ErrIllegal},
	{"expire", terminalStates, "", status.ErrTerminal},
	{"expire", []proto.Status{none}, "", status.ErrNotFound},

	{"cancel", []proto.Status{proto.StatusInQueue, proto.StatusInProgress}, proto.StatusCancelled, nil},
	{"cancel", terminalStates, "", status.ErrTerminal},
	{"cancel", []proto.Status{none}, "", status.ErrNotFound},

	{"retry", []proto.Status{proto.StatusFailed, proto.StatusTimedOut}, proto.StatusInQueue, nil},
	{"retry", []proto.Status{proto.StatusInQueue, proto.StatusInProgress, proto.StatusCompleted, proto.StatusCancelled}, "", status.ErrIllegal},
	{"retry", []proto.Status{none}, "", status.ErrNotFound},
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
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
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
						if errors.Is(err, status.ErrNotFound) {
							require.Nil(t, got)
							return
						}
						var te *status.TransitionError
						require.ErrorAs(t, err, &te)
						require.Equal(t, tt.op[:strings.IndexByte(tt.op+"-", '-')], te.Op)
						require.Equal(t, id, te.ID)
						require.Equal(t, from, te.From)
						require.Equal(t, cur.Attempt, te.Current)
						require.Equal(t, cur, got, "a refusal returns the current record")
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
					stored, err := b.store.Get(b.ctx, id)
					require.NoError(t, err)
					require.Equal(t, got, stored, "the returned record is the stored one")
				})
			}
		}
	})
}

func TestFencing(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		b.bring(t, "job", proto.StatusInQueue)

		a1, _, err := s.Claim(ctx, "job", "w1")
		require.NoError(t, err)
		require.Equal(t, 1, a1)
		// w1's lease expires; the message is redelivered to w2.
		a2, rec, err := s.Claim(ctx, "job", "w2")
		require.NoError(t, err)
		require.Equal(t, 2, a2)
		require.Equal(t, "w2", rec.WorkerID)
		require.Equal(t, 1, rec.Retries, "a redelivery counts as a retry")

		// w1 wakes up and reports: refused.
		got, err := s.Finish(ctx, "job", a1, proto.StatusFailed, nil, "late")
		require.ErrorIs(t, err, status.ErrStale)
		var te *status.TransitionError
		require.ErrorAs(t, err, &te)
		require.Equal(t, status.TransitionError{Op: "finish", ID: "job", From: proto.StatusInProgress,
			To: proto.StatusFailed, Attempt: 1, Current: 2, Err: status.ErrStale}, *te)
		require.Contains(t, err.Error(), "caller has attempt 1, the record has attempt 2")
		require.Equal(t, proto.StatusInProgress, got.Status)
		_, err = s.Requeue(ctx, "job", a1, "late")
		require.ErrorIs(t, err, status.ErrStale)

		rec, err = s.Get(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, proto.StatusInProgress, rec.Status)
		require.Equal(t, 2, rec.Attempt)
		require.Equal(t, "w2", rec.WorkerID)
		require.Empty(t, rec.Error)

		// w2 completes; w1 still cannot overwrite.
		_, err = s.Finish(ctx, "job", a2, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "")
		require.NoError(t, err)
		_, err = s.Finish(ctx, "job", a1, proto.StatusFailed, nil, "late")
		require.ErrorIs(t, err, status.ErrStale)
		rec, err = s.Get(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, proto.StatusCompleted, rec.Status)
		require.Equal(t, 2, rec.Attempt)
		require.JSONEq(t, `{"images":[]}`, string(rec.Output))
	})
}

// TestTerminalNeverGoesBack applies every operation but Retry to every
// terminal state and checks the hash and its expiry are untouched.
func TestTerminalNeverGoesBack(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		for _, from := range terminalStates {
			id := "final-" + strings.ToLower(string(from))
			cur := b.bring(t, id, from)
			before := b.hash(t, id)
			ttl := b.pttl(t, id)
			for name, op := range ops {
				if name == "retry" {
					continue
				}
				b.clock.Advance(time.Second)
				_, _ = op(b, id, cur)
				require.Equal(t, before, b.hash(t, id), "%s on %s", name, from)
				require.LessOrEqual(t, b.pttl(t, id), ttl, "%s on %s extended the retention", name, from)
			}
		}
	})
}

func TestRetry(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		b.bring(t, "job", proto.StatusInQueue)
		a1, _, err := s.Claim(ctx, "job", "w1")
		require.NoError(t, err)
		_, err = s.Finish(ctx, "job", a1, proto.StatusFailed, json.RawMessage(`{"details":["x"]}`), "node 3 failed")
		require.NoError(t, err)
		b.requireTTL(t, "job", status.DefaultRetention)

		b.clock.Advance(time.Minute)
		rec, err := s.Retry(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, &proto.Record{ID: "job", Status: proto.StatusInQueue, Attempt: 1, Retries: 1,
			Pool: "default", Lane: proto.LaneBatch, Source: "batch", SubmittedAt: b.clock.Now()}, rec)
		b.requireTTL(t, "job", status.DefaultTTL+status.TTLSlack)

		_, err = s.Retry(ctx, "job")
		require.ErrorIs(t, err, status.ErrIllegal, "retry of a queued job")

		a2, _, err := s.Claim(ctx, "job", "w2")
		require.NoError(t, err)
		require.Equal(t, 2, a2, "attempts keep counting across a retry")
		_, err = s.Finish(ctx, "job", a1, proto.StatusCompleted, nil, "")
		require.ErrorIs(t, err, status.ErrStale, "the first run cannot report into the retry")
		rec, err = s.Finish(ctx, "job", a2, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "")
		require.NoError(t, err)
		require.Equal(t, proto.StatusCompleted, rec.Status)
		require.Equal(t, 1, rec.Retries)
		require.Empty(t, rec.Error)
	})
}

func TestCreateIdempotent(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		p := status.CreateParams{ID: "job", Pool: "sdxl", Lane: proto.LaneInteractive, Source: "api",
			BatchID: "b1", SubmittedAt: b.clock.Now().Add(-time.Second)}
		first, created, err := s.Create(ctx, p)
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, &proto.Record{ID: "job", Status: proto.StatusInQueue, Pool: "sdxl",
			Lane: proto.LaneInteractive, Source: "api", BatchID: "b1", SubmittedAt: p.SubmittedAt}, first)
		hash := b.hash(t, "job")

		b.clock.Advance(time.Minute)
		second, created, err := s.Create(ctx, status.CreateParams{ID: "job", Pool: "other"})
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, first, second)
		require.Equal(t, hash, b.hash(t, "job"))

		// Also once the job is running.
		_, _, err = s.Claim(ctx, "job", "w1")
		require.NoError(t, err)
		third, created, err := s.Create(ctx, p)
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, proto.StatusInProgress, third.Status)
	})
}

func TestCreateRejectsBadParams(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		_, _, err := b.store.Create(b.ctx, status.CreateParams{ID: "a b"})
		require.ErrorContains(t, err, "only letters, digits")
		_, _, err = b.store.Create(b.ctx, status.CreateParams{ID: "x", Lane: "fast"})
		require.ErrorContains(t, err, `"fast" is not a lane`)
		_, err = b.store.Reject(b.ctx, status.CreateParams{ID: ""}, "no id")
		require.ErrorContains(t, err, "id is empty")
		_, err = b.store.Finish(b.ctx, "x", 1, proto.StatusCompleted, json.RawMessage(`{`), "")
		require.ErrorContains(t, err, "output is not valid JSON")
	})
}

func TestRetention(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		tests := []struct {
			name      string
			params    status.CreateParams
			queued    time.Duration // expiry while not terminal
			retention time.Duration // expiry once terminal
		}{
			{"run defaults", status.CreateParams{ID: "run"}, 25 * time.Hour, 30 * time.Minute},
			{"runsync", status.CreateParams{ID: "sync", Retention: time.Minute}, 25 * time.Hour, time.Minute},
			{"policy ttl", status.CreateParams{ID: "ttl", TTL: 10 * time.Minute}, 10*time.Minute + time.Hour, 30 * time.Minute},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				id := tt.params.ID
				_, _, err := s.Create(ctx, tt.params)
				require.NoError(t, err)
				b.requireTTL(t, id, tt.queued)
				attempt, _, err := s.Claim(ctx, id, "w1")
				require.NoError(t, err)
				b.requireTTL(t, id, tt.queued)
				_, err = s.Finish(ctx, id, attempt, proto.StatusCompleted, nil, "")
				require.NoError(t, err)
				b.requireTTL(t, id, tt.retention)
			})
		}
		t.Run("cancel, expire and reject keep the retention too", func(t *testing.T) {
			for i, op := range []func(id string) error{
				func(id string) error { _, err := s.Cancel(ctx, id); return err },
				func(id string) error { _, err := s.Expire(ctx, id, "ttl"); return err },
				func(id string) error { _, err := s.Reject(ctx, status.CreateParams{ID: id}, "bad"); return err },
			} {
				id := fmt.Sprintf("short-%d", i)
				_, _, err := s.Create(ctx, status.CreateParams{ID: id, Retention: time.Minute})
				require.NoError(t, err)
				require.NoError(t, op(id))
				b.requireTTL(t, id, time.Minute)
			}
			_, err := s.Reject(ctx, status.CreateParams{ID: "rejected-new", Retention: 2 * time.Minute}, "bad")
			require.NoError(t, err)
			b.requireTTL(t, "rejected-new", 2*time.Minute)
		})
	})
}

func TestStoreOptions(t *testing.T) {
	conformance(t, status.Options{Retention: 5 * time.Minute, QueueTTL: 2 * time.Hour}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		_, _, err := s.Create(ctx, status.CreateParams{ID: "job"})
		require.NoError(t, err)
		b.requireTTL(t, "job", 2*time.Hour)
		_, err = s.Cancel(ctx, "job")
		require.NoError(t, err)
		b.requireTTL(t, "job", 5*time.Minute)
		require.True(t, strings.HasPrefix(s.Key("job"), b.prefix+"cf:job:"))
	})
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, status.Options{}.Validate())
	require.ErrorContains(t, status.Options{Retention: -time.Second}.Validate(), "retention -1s")
	require.ErrorContains(t, status.Options{QueueTTL: -time.Second}.Validate(), "queue TTL -1s")
}

func TestTimes(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		t0 := b.clock.Now()
		rec, _, err := s.Create(ctx, status.CreateParams{ID: "job"})
		require.NoError(t, err)
		require.Equal(t, t0, rec.SubmittedAt, "zero SubmittedAt means now")
		require.Zero(t, rec.DelayTime())

		b.clock.Advance(2624 * time.Millisecond)
		_, rec, err = s.Claim(ctx, "job", "w1")
		require.NoError(t, err)
		require.Equal(t, 2624*time.Millisecond, rec.DelayTime())
		require.Zero(t, rec.ExecutionTime())

		b.clock.Advance(1437 * time.Millisecond)
		rec, err = s.Finish(ctx, "job", 1, proto.StatusCompleted, nil, "")
		require.NoError(t, err)
		require.Equal(t, 2624*time.Millisecond, rec.DelayTime())
		require.Equal(t, 1437*time.Millisecond, rec.ExecutionTime())
		require.Equal(t, t0.Add(4061*time.Millisecond), rec.FinishedAt)

		// A job cancelled in the queue never started.
		_, _, err = s.Create(ctx, status.CreateParams{ID: "queued", SubmittedAt: t0})
		require.NoError(t, err)
		rec, err = s.Cancel(ctx, "queued")
		require.NoError(t, err)
		require.Zero(t, rec.DelayTime())
		require.Zero(t, rec.ExecutionTime())
		require.Equal(t, b.clock.Now(), rec.FinishedAt)
	})
}

func TestRequeue(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		b.bring(t, "job", proto.StatusInQueue)
		a1, _, err := s.Claim(ctx, "job", "w1")
		require.NoError(t, err)
		rec, err := s.Requeue(ctx, "job", a1, "comfyui is down")
		require.NoError(t, err)
		require.Equal(t, proto.StatusInQueue, rec.Status)
		require.Equal(t, 1, rec.Retries)
		require.Equal(t, 1, rec.Attempt)
		require.Empty(t, rec.WorkerID)
		require.True(t, rec.StartedAt.IsZero())
		require.Equal(t, "comfyui is down", b.hash(t, "job")["requeue_reason"])

		_, err = s.Requeue(ctx, "job", a1, "again")
		require.ErrorIs(t, err, status.ErrStale, "the attempt gave the job back already")
		_, err = s.Finish(ctx, "job", a1, proto.StatusCompleted, nil, "")
		require.ErrorIs(t, err, status.ErrStale)

		a2, rec, err := s.Claim(ctx, "job", "w2")
		require.NoError(t, err)
		require.Equal(t, 2, a2)
		require.Equal(t, 1, rec.Retries, "claiming a requeued job is not another retry")
	})
}

func TestReject(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		rec, err := s.Reject(ctx, status.CreateParams{ID: "bad", Source: "batch"}, "Missing 'workflow' parameter")
		require.NoError(t, err)
		require.Equal(t, &proto.Record{ID: "bad", Status: proto.StatusFailed, Source: "batch",
			SubmittedAt: b.clock.Now(), FinishedAt: b.clock.Now(), Error: "Missing 'workflow' parameter"}, rec)

		_, err = s.Reject(ctx, status.CreateParams{ID: "bad"}, "again")
		require.ErrorIs(t, err, status.ErrTerminal)
		rec, err = s.Retry(ctx, "bad")
		require.NoError(t, err, "a rejected job can be retried like any failed one")
		require.Equal(t, proto.StatusInQueue, rec.Status)
	})
}

// TestNoSecrets checks that a job's secrets never reach the record.
func TestNoSecrets(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		job, err := proto.DecodeJob([]byte(`{"v":1,"id":"j","input":{"workflow":{},"comfy_org_api_key":"SECRET-KEY"},
			"s3Config":{"accessId":"AKID","accessSecret":"SECRET-S3","bucketName":"b","endpointUrl":"https://s3"},
			"policy":{"ttl":60000},"retention_ms":60000,"pool":"p","lane":"batch","source":"batch"}`))
		require.NoError(t, err)
		p := status.ParamsFor(job)
		require.Equal(t, status.CreateParams{ID: "j", Pool: "p", Lane: proto.LaneBatch, Source: "batch",
			Retention: time.Minute, TTL: time.Minute}, p)
		_, _, err = b.store.Create(b.ctx, p)
		require.NoError(t, err)
		for field, v := range b.hash(t, "j") {
			require.NotContains(t, v, "SECRET", field)
			require.NotContains(t, v, "AKID", field)
		}
	})
}

func TestCorruptRecord(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
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
				require.NoError(t, b.rdb.HSet(ctx, s.Key(id), tt.field, tt.value).Err())
				before := b.hash(t, id)

				_, err := s.Get(ctx, id)
				var ce *status.CorruptError
				require.ErrorAs(t, err, &ce)
				require.ErrorIs(t, err, status.ErrCorrupt)
				require.Equal(t, tt.field, ce.Field)
				require.Equal(t, tt.value, ce.Value)
				require.Equal(t, s.Key(id), ce.Key)
				require.Contains(t, err.Error(), "field "+tt.field)
				if !tt.guarded {
					return
				}
				for name, op := range ops {
					_, err := op(b, id, &proto.Record{})
					if name == "create" {
						require.Error(t, err, name)
					} else {
						require.ErrorIs(t, err, status.ErrCorrupt, name)
					}
				}
				require.Equal(t, before, b.hash(t, id), "nothing writes over a corrupt record")
			})
		}
		t.Run("not a hash", func(t *testing.T) {
			require.NoError(t, b.rdb.Set(ctx, s.Key("str"), "x", 0).Err())
			_, err := s.Get(ctx, "str")
			require.ErrorContains(t, err, "WRONGTYPE")
			_, err = s.Cancel(ctx, "str")
			require.ErrorContains(t, err, "WRONGTYPE")
		})
		t.Run("missing", func(t *testing.T) {
			_, err := s.Get(ctx, "nobody")
			require.ErrorIs(t, err, status.ErrNotFound)
		})
	})
}

// TestConcurrent races workers (claim then finish) and cancels on one job
// at a time: exactly one terminal write wins and the record is the
// winner's.
func TestConcurrent(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		const rounds, goroutines = 20, 8
		for round := range rounds {
			id := fmt.Sprintf("race-%d", round)
			b.bring(t, id, proto.StatusInQueue)

			var (
				mu        sync.Mutex
				finished  []int // attempts whose Finish succeeded
				cancelled int   // successful cancels
				workerOf  = map[int]string{}
				unexpect  []error
				wg        sync.WaitGroup
				start     = make(chan struct{})
				claimed   = make(chan struct{}) // closed by the first claim
				once      sync.Once
			)
			record := func(f func()) { mu.Lock(); defer mu.Unlock(); f() }
			for g := range goroutines {
				wg.Go(func() {
					<-start
					if g%4 == 3 {
						if round%2 == 1 {
							<-claimed // race the cancel against running workers
						}
						_, err := s.Cancel(ctx, id)
						record(func() {
							if err == nil {
								cancelled++
							} else if !errors.Is(err, status.ErrTerminal) {
								unexpect = append(unexpect, err)
							}
						})
						return
					}
					worker := fmt.Sprintf("w%d", g)
					attempt, _, err := s.Claim(ctx, id, worker)
					if err != nil {
						if !errors.Is(err, status.ErrTerminal) {
							record(func() { unexpect = append(unexpect, err) })
						}
						return
					}
					record(func() { workerOf[attempt] = worker })
					once.Do(func() { close(claimed) })
					out := json.RawMessage(fmt.Sprintf(`{"attempt":%d}`, attempt))
					_, err = s.Finish(ctx, id, attempt, proto.StatusCompleted, out, "")
					record(func() {
						switch {
						case err == nil:
							finished = append(finished, attempt)
						case errors.Is(err, status.ErrStale), errors.Is(err, status.ErrTerminal):
						default:
							unexpect = append(unexpect, err)
						}
					})
				})
			}
			close(start)
			wg.Wait()

			require.Empty(t, unexpect)
			require.Equal(t, 1, len(finished)+cancelled, "exactly one terminal write wins (finished %v, cancelled %d)", finished, cancelled)
			rec, err := s.Get(ctx, id)
			require.NoError(t, err)
			require.True(t, rec.Status.Terminal())
			require.Equal(t, len(workerOf), rec.Attempt, "every claim got its own attempt")
			if cancelled == 1 {
				require.Equal(t, proto.StatusCancelled, rec.Status)
				require.Empty(t, rec.Output)
				continue
			}
			require.Equal(t, proto.StatusCompleted, rec.Status)
			require.Equal(t, finished[0], rec.Attempt, "only the newest attempt can finish")
			require.Equal(t, workerOf[rec.Attempt], rec.WorkerID)
			require.JSONEq(t, fmt.Sprintf(`{"attempt":%d}`, rec.Attempt), string(rec.Output))
			require.Equal(t, max(0, rec.Attempt-1), rec.Retries)
		}
	})
}

func TestFinishRepeated(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		b.bring(t, "job", proto.StatusInQueue)
		attempt, _, err := s.Claim(ctx, "job", "w1")
		require.NoError(t, err)
		first, err := s.Finish(ctx, "job", attempt, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "")
		require.NoError(t, err)
		hash := b.hash(t, "job")

		// The reply was lost; the worker tries again a little later.
		b.clock.Advance(time.Second)
		again, err := s.Finish(ctx, "job", attempt, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "")
		require.NoError(t, err)
		require.Equal(t, first, again)
		require.Equal(t, hash, b.hash(t, "job"))

		// Another status from the same attempt is not a repeat.
		_, err = s.Finish(ctx, "job", attempt, proto.StatusFailed, nil, "x")
		require.ErrorIs(t, err, status.ErrTerminal)
	})
}

func TestCancelWhileRunning(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		s, ctx := b.store, b.ctx
		b.bring(t, "job", proto.StatusInQueue)
		attempt, _, err := s.Claim(ctx, "job", "w1")
		require.NoError(t, err)
		b.clock.Advance(time.Second)
		rec, err := s.Cancel(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, proto.StatusCancelled, rec.Status)
		require.Equal(t, time.Second, rec.ExecutionTime())
		require.Equal(t, "w1", rec.WorkerID)

		// The worker finishes before it hears of the cancel: refused, and
		// it learns the job's fate from the record.
		got, err := s.Finish(ctx, "job", attempt, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "")
		require.ErrorIs(t, err, status.ErrTerminal)
		require.Equal(t, rec, got)
		_, got, err = s.Claim(ctx, "job", "w2")
		require.ErrorIs(t, err, status.ErrTerminal, "a redelivered cancelled job is dropped")
		require.Equal(t, rec, got)
	})
}
