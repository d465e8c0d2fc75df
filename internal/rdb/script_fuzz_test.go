package rdb_test

import (
	"cmp"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// FuzzTransitionScript writes an arbitrary hash, well formed or not, as a
// job's record on every backend, applies one operation, and checks that the
// script only ever answers with a typed error, never writes over a record
// it calls corrupt, moves a record only where the state machine allows, and
// that Redis and miniredis agree on the outcome and the resulting hash
// (times aside: each backend writes its own clock's).
func FuzzTransitionScript(f *testing.F) {
	var sides []*bundle
	for _, be := range backends {
		sides = append(sides, setup(f, be, rdb.Options{}))
	}
	var seq atomic.Int64

	f.Add(uint8(2), "IN_QUEUE", "0", "0", "batch", "1000", "", true, 0)
	f.Add(uint8(4), "IN_PROGRESS", "3", "1", "", "1000", `{"a":1}`, true, 3)
	f.Add(uint8(4), "IN_PROGRESS", "3", "1", "", "1000", "", true, 2)
	f.Add(uint8(7), "FAILED", "1", "0", "interactive", "5", "{", true, 0)
	f.Add(uint8(6), "COMPLETED", "1", "0", "", "", "[]", true, 1)
	f.Add(uint8(1), "RUNNING", "1", "0", "", "", "", true, 1)
	f.Add(uint8(2), "IN_QUEUE", "x", "0", "fast", "-1", "", false, 0)
	f.Add(uint8(3), "IN_PROGRESS", "1e2", "0", "", "", "", true, 100)
	f.Fuzz(func(t *testing.T, opIndex uint8, st, attempt, retries, lane, submitted, output string, idMatches bool, argAttempt int) {
		id := fmt.Sprintf("fz-%d", seq.Add(1))
		h := map[string]string{"status": st, "attempt": attempt, "retries": retries, "lane": lane,
			"submitted_at": submitted, "output": output, "retention_ms": "60000", "ttl_ms": "120000"}
		if idMatches {
			h["id"] = id
		} else {
			h["id"] = "someone-else"
		}
		for k, v := range h {
			if v == "" {
				delete(h, k) // absent fields; "" values are in TestCorruptRecord
			}
		}
		type outcome struct {
			class   string
			status  proto.Status
			attempt int
			hash    map[string]string
			ttl     time.Duration
		}
		var outcomes []outcome
		for _, b := range sides {
			key := b.key(id)
			require.NoError(t, b.rdb.HSet(b.ctx, key, h).Err())
			require.NoError(t, b.rdb.PExpire(b.ctx, key, time.Hour).Err())
			_, decodeErr := b.db.Get(b.ctx, id)

			rec, err := fuzzOp(b, id, opIndex, argAttempt)

			o := outcome{class: classify(t, err), hash: b.hash(t, id), ttl: b.pttl(t, id)}
			if rec != nil {
				o.status, o.attempt = rec.Status, rec.Attempt
			}
			for _, k := range []string{b.key(id), b.prefix + proto.LeaseKey(id), b.prefix + proto.AttemptsKey(id)} {
				require.NoError(t, b.rdb.Del(b.ctx, k).Err())
			}
			outcomes = append(outcomes, o)

			if decodeErr != nil {
				require.ErrorIs(t, decodeErr, rdb.ErrCorrupt)
			}
			switch {
			case decodeErr != nil && !strings.Contains(decodeErr.Error(), "field output"):
				// decodeRecord checks output last, so this record has a
				// broken field the script checks too.
				if opIndex%10 > 1 { // create and admit leave an existing record unread
					require.Equal(t, "corrupt", o.class, "op %d on a corrupt record (%v)", opIndex, decodeErr)
				}
				require.Equal(t, h, o.hash, "a record called corrupt was changed")
			case decodeErr != nil:
				// Only a broken output slips past the script; the reply
				// still says so unless the operation replaced the output.
			case o.class != "ok":
				require.NotEqual(t, "corrupt", o.class, "a readable record called corrupt")
				require.Equal(t, h, o.hash, "a refused operation changed the record")
			case opIndex%10 <= 1: // create and admit of an existing record
				require.Equal(t, h, o.hash, "another submission changed an existing record")
			case opIndex%10 == 2: // claim
				require.Equal(t, proto.StatusInProgress, o.status)
				before, _ := strconv.Atoi(cmp.Or(h["attempt"], "0"))
				require.Equal(t, before+1, o.attempt, "claim did not take the next attempt")
			default:
				require.NotEqual(t, proto.Status(st), o.status, "op %d did not move %s", opIndex, st)
				require.False(t, proto.Status(st).Terminal() && o.status != proto.StatusInQueue,
					"op %d moved terminal %s to %s", opIndex, st, o.status)
			}
		}
		a, b := outcomes[0], outcomes[1]
		require.Equal(t, a.class, b.class, "backends disagree")
		require.Equal(t, a.status, b.status, "backends disagree")
		require.Equal(t, maskTimes(h, a.hash), maskTimes(h, b.hash), "backends disagree")
		require.InDelta(t, a.ttl, b.ttl, float64(5*time.Second), "backends disagree on the expiry")
	})
}

// maskTimes replaces the times an operation wrote (by its backend's clock)
// with a placeholder.
func maskTimes(before, after map[string]string) map[string]string {
	out := make(map[string]string, len(after))
	for k, v := range after {
		switch k {
		case "submitted_at", "started_at", "finished_at", "expires_at":
			if before[k] != v {
				v = "<time>"
			}
		}
		out[k] = v
	}
	return out
}

// fuzzOp applies operation i%10.
func fuzzOp(b *bundle, id string, i uint8, attempt int) (*proto.Record, error) {
	db, ctx := b.db, b.ctx
	switch i % 10 {
	case 0:
		rec, _, err := db.Create(ctx, rdb.CreateParams{ID: id}, time.Time{}, false)
		return rec, err
	case 1:
		_, rec, err := db.Admit(ctx, "1", rdb.CreateParams{ID: id}, "bad")
		return rec, err
	case 2:
		c, err := db.Claim(ctx, rdb.ClaimParams{ID: id, WorkerID: "w", Reply: "r", LeaseTTL: time.Minute})
		if err != nil {
			return nil, err
		}
		return c.Record, nil
	case 3:
		_, rec, err := db.Requeue(ctx, id, attempt, "why", true, 3)
		return rec, err
	case 4:
		return db.Finish(ctx, id, attempt, proto.StatusCompleted, []byte(`{"images":[]}`), "", false)
	case 5:
		return db.Finish(ctx, id, attempt, proto.StatusFailed, nil, "err", true)
	case 6:
		rec, _, err := db.Cancel(ctx, id)
		return rec, err
	case 7:
		return db.Retry(ctx, id)
	case 8:
		return db.Expire(ctx, id)
	default:
		return db.Finish(ctx, id, attempt, proto.StatusCancelled, nil, "", false)
	}
}

// classify names the sentinel an error wraps, and fails on any other.
func classify(t *testing.T, err error) string {
	t.Helper()
	for _, c := range []struct {
		name string
		err  error
	}{{"notfound", rdb.ErrNotFound}, {"stale", rdb.ErrStale}, {"terminal", rdb.ErrTerminal},
		{"illegal", rdb.ErrIllegal}, {"corrupt", rdb.ErrCorrupt}, {"held", rdb.ErrHeld},
		{"exhausted", rdb.ErrExhausted}, {"notdue", rdb.ErrNotDue}, {"expired", rdb.ErrExpired}} {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	require.NoError(t, err, "an error that is not typed")
	return "ok"
}
