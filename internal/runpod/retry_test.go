package runpod_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/proto"
)

// ttlArm is where a queued job's TTL stands in Redis: the record's
// expires_at and the job's score in the TTL index the sweepers read, both
// Unix milliseconds (0 when absent).
type ttlArm struct{ expiresAt, indexed int64 }

func (s *stack) ttlArm(t *testing.T, id string) ttlArm {
	t.Helper()
	ctx := context.Background()
	var a ttlArm
	v, err := s.fleet.Redis.HGet(ctx, s.fleet.Prefix+proto.JobKey(id), "expires_at").Result()
	if err != redis.Nil {
		require.NoError(t, err)
		a.expiresAt, err = strconv.ParseInt(v, 10, 64)
		require.NoError(t, err)
	}
	score, err := s.fleet.Redis.ZScore(ctx, s.fleet.Prefix+proto.TTLKey, id).Result()
	if err != redis.Nil {
		require.NoError(t, err)
		a.indexed = int64(score)
	}
	return a
}

// sweepUntil runs sweeps, as a dispatcher does every second, until the
// job has the status, and returns its record.
func (s *stack) sweepUntil(t *testing.T, sw *lifecycle.Sweeper, id string, want proto.Status) *proto.Record {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		require.NoError(t, sw.RunOnce(context.Background()))
		rec, err := s.fleet.DB.Get(context.Background(), id)
		require.NoError(t, err)
		if rec.Status == want {
			return rec
		}
		require.True(t, time.Now().Before(deadline), "job %s is still %s", id, rec.Status)
		<-time.After(50 * time.Millisecond) // the next sweep
	}
}

// TestRetryRearmsTheTTL: a job whose policy.ttl ran out in the queue is
// TIMED_OUT; /retry queues it again with a fresh TTL counted from the
// retry, so the sweeps that follow leave it queued (its first TTL is long
// past) until the new one runs out, and a worker that comes in time runs
// it.
func TestRetryRearmsTheTTL(t *testing.T) {
	t.Parallel()
	const ttl = 10 * time.Second // RunPod's shortest policy.ttl
	s := startStack(t, runpod.Config{}, 1, 0)
	sw, err := s.fleet.Core.NewSweeper(lifecycle.SweeperConfig{})
	require.NoError(t, err)
	run := func() string {
		code, out := s.call(t, 0, "POST", "/run", `{"input":`+string(runpodtest.Input(runpodtest.Mock{Return: []byte(`{"ok":true}`)}))+`,"policy":{"ttl":10000}}`)
		require.Equal(t, http.StatusOK, code, "%v", out)
		return out["id"].(string)
	}

	// No worker: the job waits out its TTL and a sweep times it out.
	id := run()
	s.fleet.WaitStatus(t, id, proto.StatusInQueue)
	first := s.ttlArm(t, id)
	require.NotZero(t, first.expiresAt)
	require.Equal(t, first.expiresAt, first.indexed, "a queued job is in the TTL index at its expiry")
	rec := s.sweepUntil(t, sw, id, proto.StatusTimedOut)
	require.Equal(t, proto.MsgTTLExpired, rec.Error)
	require.Zero(t, s.ttlArm(t, id).indexed, "a finished job leaves the TTL index")

	retried := time.Now()
	code, out := s.call(t, 0, "POST", "/retry/"+id, "")
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, map[string]any{"id": id, "status": "IN_QUEUE"}, out)
	again := s.ttlArm(t, id)
	require.Equal(t, again.expiresAt, again.indexed, "the retried job is in the TTL index at its new expiry")
	require.GreaterOrEqual(t, again.expiresAt-first.expiresAt, ttl.Milliseconds(), "the TTL moved by at least one TTL")
	require.InDelta(t, retried.Add(ttl).UnixMilli(), again.expiresAt, float64(2*time.Second/time.Millisecond),
		"the new TTL counts from the retry")

	// Sweeps past the first TTL leave it queued.
	for range 3 {
		require.NoError(t, sw.RunOnce(context.Background()))
	}
	rec, err = s.fleet.DB.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, proto.StatusInQueue, rec.Status, "not expired by its first TTL")
	require.Empty(t, rec.Error, "the old error is cleared")
	require.Equal(t, 1, rec.Retries)

	// A worker that comes in time runs it.
	s.fleet.StartWorker(t, "late")
	rec = s.fleet.WaitStatus(t, id, proto.StatusCompleted)
	require.JSONEq(t, `{"ok":true}`, string(rec.Output))
	require.Equal(t, "late", rec.WorkerID)
}

// TestRetriedJobExpiresAtItsNewTTL: the TTL /retry re-arms is tracked
// like the first: nobody takes the job, and a sweep times it out once the
// new TTL, not before, runs out.
func TestRetriedJobExpiresAtItsNewTTL(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 0)
	sw, err := s.fleet.Core.NewSweeper(lifecycle.SweeperConfig{})
	require.NoError(t, err)
	code, out := s.call(t, 0, "POST", "/run", `{"input":`+string(runpodtest.Input(runpodtest.Mock{}))+`,"policy":{"ttl":10000}}`)
	require.Equal(t, http.StatusOK, code, "%v", out)
	id := out["id"].(string)
	s.fleet.WaitStatus(t, id, proto.StatusInQueue)
	s.sweepUntil(t, sw, id, proto.StatusTimedOut)

	code, out = s.call(t, 0, "POST", "/retry/"+id, "")
	require.Equal(t, http.StatusOK, code, "%v", out)
	armed := s.ttlArm(t, id)
	rec := s.sweepUntil(t, sw, id, proto.StatusTimedOut)
	require.Equal(t, proto.MsgTTLExpired, rec.Error)
	require.GreaterOrEqual(t, rec.FinishedAt.UnixMilli(), armed.expiresAt, "timed out at its new TTL, not before")
	require.Equal(t, 1, rec.Retries)
}
