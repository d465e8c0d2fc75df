package jobtake_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod/jobtake"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/proto"
)

// The tests of this file pin down what a first run of RunPod's Python SDK
// 1.12.0 against the host found (CHANGELOG, issue 18); test/python runs
// the real SDK against the same behaviour.

// TestExecutionTimeoutEndsTheJob: a job that runs past its execution
// timeout ends TIMED_OUT, as RunPod fails it, and its worker is told on
// job-stop; it posts nothing, and the worker runs the next job.
func TestExecutionTimeoutEndsTheJob(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, func(c *jobtake.Config) { c.ExecutionTimeout = 800 * time.Millisecond })
	w := b.worker(t, "worker-1", nil)
	id := b.run(t, `"mock_delay":30,"mock_return":"late"`)
	rec := b.fleet.WaitStatus(t, id, proto.StatusTimedOut)
	require.Equal(t, 1, rec.Attempt)
	require.Contains(t, rec.Error, "timed out after 800ms (policy.executionTimeout)")
	b.rec.WaitFor(t, "jobsToStop", func(reqs []runpodtest.Request) bool {
		for _, r := range runpodtest.Of(reqs, "job-stop") {
			if r.Code == http.StatusOK {
				return true
			}
		}
		return false
	})
	require.Eventually(t, func() bool { return len(w.Held()) == 0 }, 10*time.Second, 10*time.Millisecond, "the worker stopped the job")
	next := b.run(t, `"mock_return":"next"`)
	require.Equal(t, "next", b.final(t, next)["output"])
	require.NotContains(t, w.Reported(), id, "a stopped job posts nothing")
	_, out := b.call(t, "GET", "/v2/ep1/status/"+id, "")
	require.Equal(t, "TIMED_OUT", out["status"])
}

// TestResultAfterTheDeadlineIsDropped: a result that comes after the
// job's execution timeout, before any poll or ping noticed it, does not
// complete the job.
func TestResultAfterTheDeadlineIsDropped(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, func(c *jobtake.Config) { c.ExecutionTimeout = 300 * time.Millisecond; c.LeaseTimeout = 5 * time.Second })
	form := []string{"Content-Type", "application/x-www-form-urlencoded", "charset", "utf-8"}
	id := b.run(t, `"mock_return":1`)
	b.fleet.WaitStatus(t, id, proto.StatusInQueue)
	require.Equal(t, id, b.takeAs(t, "w1"))
	lease, err := b.fleet.DB.Lease(context.Background(), id)
	require.NoError(t, err)
	require.False(t, lease.Deadline.IsZero(), "the lease has the job's deadline")
	require.Eventually(t, func() bool { return time.Now().After(lease.Deadline) }, 5*time.Second, 5*time.Millisecond)
	code, _, body := b.raw(t, "POST", "/v2/ep1/job-done/w1/"+id+"?gpu=TEST&isStream=false", `{"output": "too late"}`, form...)
	require.Equal(t, http.StatusOK, code, "%s", body)
	rec := b.fleet.WaitStatus(t, id, proto.StatusTimedOut)
	require.NotContains(t, string(rec.Output), "too late")
	code, _, body = b.raw(t, "POST", "/v2/ep1/job-done/w1/"+id+"?gpu=TEST&isStream=false", `{"status": "IN_PROGRESS", "output": {"pct": 99}}`, form...)
	require.Equal(t, http.StatusOK, code, "a late progress update is accepted and ignored: %s", body)
}

// TestSharedNameWorkers: two workers whose take template carries the
// literal $RUNPOD_POD_ID take and poll under one name. /health counts
// the two real workers (their pings name them), not a phantom; a cancel
// reaches the worker that runs the job, whichever polls first.
func TestSharedNameWorkers(t *testing.T) {
	t.Parallel()
	b := setup(t, 2, nil)
	literal := func(c *runpodtest.MockWorkerConfig) {
		base := b.url + "/v2/ep1/"
		c.GetJob, c.PostOutput, c.PostStream, c.Ping = base+"job-take/$RUNPOD_POD_ID", base+"job-done/$RUNPOD_POD_ID/$ID", base+"job-stream/$RUNPOD_POD_ID/$ID", base+"ping/$RUNPOD_POD_ID"
	}
	wa, wb := b.worker(t, "pod-a", literal), b.worker(t, "pod-b", literal)
	x, y := b.run(t, `"mock_delay":60`), b.run(t, `"mock_delay":60`)
	b.fleet.WaitStatus(t, x, proto.StatusInProgress)
	b.fleet.WaitStatus(t, y, proto.StatusInProgress)
	require.Eventually(t, func() bool { return len(wa.Held()) == 1 && len(wb.Held()) == 1 }, 20*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		ws, err := b.fleet.DB.Workers(context.Background())
		require.NoError(t, err)
		var ids []string
		for _, w := range ws {
			ids = append(ids, w.ID)
		}
		slices.Sort(ids)
		return slices.Equal(ids, []string{"pod-a", "pod-b"})
	}, 10*time.Second, 10*time.Millisecond, "the registry holds the two real workers and no phantom")
	_, health := b.call(t, "GET", "/v2/ep1/health", "")
	workers := health["workers"].(map[string]any)
	require.Equal(t, float64(2), workers["idle"].(float64)+workers["running"].(float64), "%v", workers)

	// Cancel the job of each worker in turn: each stops its own.
	for _, w := range []*runpodtest.MockWorker{wb, wa} {
		id := w.Held()[0]
		code, _ := b.call(t, "POST", "/v2/ep1/cancel/"+id, "")
		require.Equal(t, http.StatusOK, code)
		require.Eventually(t, func() bool { return len(w.Held()) == 0 }, 10*time.Second, 10*time.Millisecond, "%s stopped %s", w, id)
	}
	require.Empty(t, wa.Reported())
	require.Empty(t, wb.Reported())
	// And the next job runs on either.
	require.Equal(t, "COMPLETED", b.final(t, b.run(t, `"mock_return":"n"`))["status"])
}

// pinger pings as the SDK's ping process does, naming job, every period,
// until the test ends.
func (b *bundle) pinger(t *testing.T, name, job string, period time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			req, _ := http.NewRequestWithContext(ctx, "GET", b.url+"/v2/ep1/ping/"+name+"?gpu=TEST&job_id="+job+"&runpod_version=1.12.0", nil)
			req.Header.Set("Authorization", workerKey)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// stopPoller polls job-stop as the SDK's main process does until its
// context ends (the process dies); it returns when the poll loop ended.
func (b *bundle) stopPoller(ctx context.Context, name string) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, "GET", b.url+"/v2/ep1/job-stop/"+name+"?gpu=TEST", nil)
			req.Header.Set("Authorization", workerKey)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}()
	return done
}

// TestOrphanedPingsKeepNothing: the SDK's ping process outlives a killed
// main process and keeps naming its job. While the main process polls
// job-stop, pings keep the job for as long as it runs; once it is gone,
// they keep nothing and the job goes back to the fleet. A worker that
// never polls job-stop (an older SDK) keeps its job by pings alone.
func TestOrphanedPingsKeepNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, 2, func(c *jobtake.Config) { c.LeaseTimeout = time.Second })
	ctx := context.Background()
	orphaned, old := b.run(t, `"mock_return":1`), ""
	b.fleet.WaitStatus(t, orphaned, proto.StatusInQueue)
	require.Equal(t, orphaned, b.takeAs(t, "main"))
	mainCtx, kill := context.WithCancel(ctx)
	polls := b.stopPoller(mainCtx, "main")
	b.pinger(t, "main", orphaned, 200*time.Millisecond)

	old = b.run(t, `"mock_return":2`)
	b.fleet.WaitStatus(t, old, proto.StatusInQueue)
	require.Equal(t, old, b.takeAs(t, "old"))
	b.pinger(t, "old", old, 200*time.Millisecond)

	// Both are kept for three leases.
	until := time.Now().Add(3 * time.Second)
	for time.Now().Before(until) {
		for _, id := range []string{orphaned, old} {
			rec, err := b.fleet.DB.Get(ctx, id)
			require.NoError(t, err)
			require.Equal(t, [2]any{proto.StatusInProgress, 1}, [2]any{rec.Status, rec.Attempt}, "%s is kept", id)
		}
		b.fleet.WaitStatus(t, orphaned, proto.StatusInProgress) // a Redis round trip between reads
	}

	// The main process dies; its pings go on.
	kill()
	<-polls
	rec := b.fleet.WaitStatus(t, orphaned, proto.StatusInQueue)
	require.Equal(t, 1, rec.Retries, "handed back to the fleet")
	rec, err := b.fleet.DB.Get(ctx, old)
	require.NoError(t, err)
	require.Equal(t, proto.StatusInProgress, rec.Status, "the older SDK's worker keeps its job")
	b.fleet.StartWorker(t, "gpu-a")
	rec = b.fleet.WaitStatus(t, orphaned, proto.StatusCompleted)
	require.Equal(t, [2]any{2, "gpu-a"}, [2]any{rec.Attempt, rec.WorkerID})
}

// TestWrongKeyIsRefusedSlowly: a 401 comes after RefusalDelay, so that
// the SDK's take loop, which asks again at once after an error, backs
// off.
func TestWrongKeyIsRefusedSlowly(t *testing.T) {
	t.Parallel()
	const delay = 300 * time.Millisecond
	b := setup(t, 1, func(c *jobtake.Config) { c.RefusalDelay = delay })
	start := time.Now()
	code, _, body := b.raw(t, "GET", "/v2/ep1/job-take/w1?gpu=TEST&job_in_progress=0", "", "Authorization", "wrong")
	require.Equal(t, http.StatusUnauthorized, code)
	require.GreaterOrEqual(t, time.Since(start), delay)
	var e map[string]any
	require.NoError(t, json.Unmarshal(body, &e), "%s", body)

	b.worker(t, "w2", func(c *runpodtest.MockWorkerConfig) { c.APIKey = "wrong" })
	takes := runpodtest.Of(b.rec.WaitFor(t, "four refused takes", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-take")) >= 4
	}), "job-take")
	for i, tk := range takes[:4] {
		require.Equal(t, http.StatusUnauthorized, tk.Code)
		if i > 0 {
			require.GreaterOrEqual(t, tk.At.Sub(takes[i-1].At), delay-10*time.Millisecond, "take %d came %v after the refusal", i, tk.At.Sub(takes[i-1].At))
		}
	}
}

// TestDrainAnswersHeldStops: a job-stop poll held because its worker
// holds a job is answered 204 at once when the host drains (shutdown),
// and the worker keeps its job.
func TestDrainAnswersHeldStops(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, func(c *jobtake.Config) { c.StopHold = 300 * time.Millisecond })
	id := b.run(t, `"mock_return":1`)
	b.fleet.WaitStatus(t, id, proto.StatusInQueue)
	require.Equal(t, id, b.takeAs(t, "w1"))
	answered := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("GET", b.url+"/v2/ep1/job-stop/w1?gpu=TEST", nil)
		req.Header.Set("Authorization", workerKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	b.pinger(t, "w1", id, 200*time.Millisecond)
	select {
	case code := <-answered:
		t.Fatalf("a stop poll of a worker that holds a job was answered %d before the drain", code)
	case <-time.After(time.Second):
	}
	b.hosts[0].Drain()
	require.Equal(t, http.StatusNoContent, <-answered)
	rec, err := b.fleet.DB.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, proto.StatusInProgress, rec.Status, "the worker keeps its job")
}

// TestBlockedLoopKeepsItsJob: a synchronous handler blocks the SDK's
// event loop, so that its job-stop loop cannot poll again while the job
// runs. A worker whose poll was answered (204, no job held) and that took
// a job before polling again keeps that job by its pings alone.
func TestBlockedLoopKeepsItsJob(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, func(c *jobtake.Config) { c.LeaseTimeout = time.Second; c.StopHold = 200 * time.Millisecond })
	ctx := context.Background()
	code, _, _ := b.raw(t, "GET", "/v2/ep1/job-stop/w1?gpu=TEST", "")
	require.Equal(t, http.StatusNoContent, code, "nothing held: answered after the hold")
	id := b.run(t, `"mock_return":1`)
	b.fleet.WaitStatus(t, id, proto.StatusInQueue)
	require.Equal(t, id, b.takeAs(t, "w1"), "taken in the second between two polls")
	b.pinger(t, "w1", id, 200*time.Millisecond)
	until := time.Now().Add(5 * time.Second) // past the second after the poll, a liveness timeout and a lease
	for time.Now().Before(until) {
		rec := b.fleet.WaitStatus(t, id, proto.StatusInProgress)
		require.Equal(t, 1, rec.Attempt, "kept by its pings")
	}
	rec, err := b.fleet.DB.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, [2]any{proto.StatusInProgress, 0}, [2]any{rec.Status, rec.Retries})
}
