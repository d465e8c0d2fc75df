package jobtake_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod/jobtake"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/proto"
)

// requirePythonRequests checks that every request the mock worker made
// is one of Appendix A's, and that the host answered each as the SDK
// needs: 200 or 204 (takes and stops), never an error.
func requirePythonRequests(t *testing.T, reqs []runpodtest.Request, podID string) {
	t.Helper()
	for _, r := range reqs {
		if r.Kind() == "" {
			continue // the test's own API calls
		}
		require.Equal(t, workerKey, r.Header.Get("Authorization"), "raw key: %s", r.URI)
		switch r.Kind() {
		case "job-take":
			require.Regexp(t, `^/v2/ep1/job-take/`+podID+`\?gpu=TEST&job_in_progress=[01]$`, r.URI)
		case "job-take-batch":
			require.Regexp(t, `^/v2/ep1/job-take-batch/`+podID+`\?gpu=TEST&batch_size=\d+&job_in_progress=[01]$`, r.URI)
		case "job-stop":
			require.Equal(t, "/v2/ep1/job-stop/"+podID+"?gpu=TEST", r.URI)
		case "job-done", "job-stream":
			require.Regexp(t, `^/v2/ep1/`+r.Kind()+`/`+podID+`/[A-Za-z0-9_-]+\?gpu=TEST&isStream=(true|false)$`, r.URI)
			require.Equal(t, "application/x-www-form-urlencoded", r.Header.Get("Content-Type"))
			require.Equal(t, "utf-8", r.Header.Get("charset"))
			require.Contains(t, string(r.Body), `": `, "Python's JSON spacing")
		case "ping":
			require.Regexp(t, `^/v2/ep1/ping/`+podID+`\?gpu=TEST&(job_id=[A-Za-z0-9_%-]+&)?runpod_version=unknown$`, r.URI)
			require.Equal(t, "python-requests/2.28.1", r.Header.Get("User-Agent"))
		}
		require.Contains(t, []int{200, 204}, r.Code, "%s %s answered %d", r.Method, r.URI, r.Code)
	}
}

func TestPythonWorkerRunsFleetJobs(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.worker(t, "worker-1", nil)
	cases := []struct {
		name, fields string
		want         map[string]any
	}{
		{"basic (tests.json)", `"mock_return":{"a":1}`, map[string]any{"status": "COMPLETED", "output": map[string]any{"a": float64(1)}}},
		{"plain string", `"mock_return":"plain"`, map[string]any{"status": "COMPLETED", "output": "plain"}},
		{"default", ``, map[string]any{"status": "COMPLETED", "output": "Hello World"}},
		{"delay (tests.json, shortened)", `"mock_return":[1,2],"mock_delay":0.3`, map[string]any{"status": "COMPLETED", "output": []any{float64(1), float64(2)}}},
		{"error returned", `"mock_return":{"error":"bad thing","x":1}`, map[string]any{"status": "FAILED", "error": "bad thing", "output": map[string]any{"x": float64(1)}}},
		{"null return", `"mock_return":null`, map[string]any{"status": "COMPLETED", "output": nil}},
	}
	for _, tc := range cases {
		id := b.run(t, tc.fields)
		out := b.final(t, id)
		require.Equal(t, tc.want["status"], out["status"], "%s: %v", tc.name, out)
		require.Equal(t, tc.want["output"], out["output"], tc.name)
		if e, ok := tc.want["error"]; ok {
			require.Equal(t, e, out["error"], tc.name)
		}
		require.Equal(t, "worker-1", out["workerId"], tc.name)
		rec, err := b.fleet.DB.Get(context.Background(), id)
		require.NoError(t, err)
		require.Equal(t, 1, rec.Attempt, "one claim, one attempt")
	}
	requirePythonRequests(t, b.rec.Requests(), "worker-1")
	// The worker is in the fleet registry, so /health counts it.
	_, health := b.call(t, "GET", "/v2/ep1/health", "")
	workers := health["workers"].(map[string]any)
	require.Equal(t, float64(1), workers["idle"].(float64)+workers["running"].(float64), "%v", workers)
}

func TestHandlerExceptionFailsTheJob(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.worker(t, "worker-1", nil)
	out := b.final(t, b.run(t, `"mock_error":"boom"`))
	require.Equal(t, "FAILED", out["status"])
	var report map[string]any
	require.NoError(t, json.Unmarshal([]byte(out["error"].(string)), &report), "the SDK's error is itself JSON, kept as a string")
	require.Equal(t, "boom", report["error_message"])
	require.Equal(t, "worker-1", report["worker_id"])
}

func TestProgressUpdatesAndStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.worker(t, "worker-1", nil)
	id := b.run(t, `"mock_progress":[{"pct":50}],"mock_delay":1,"mock_return":"done"`)
	require.Eventually(t, func() bool {
		_, out := b.call(t, "GET", "/v2/ep1/status/"+id, "")
		p, _ := out["output"].(map[string]any)
		return out["status"] == "IN_PROGRESS" && p["pct"] == float64(50)
	}, 10*time.Second, 20*time.Millisecond, "an IN_PROGRESS job shows its latest progress_update")
	out := b.final(t, id)
	require.Equal(t, "done", out["output"])
	_, stream := b.call(t, "GET", "/v2/ep1/stream/"+id, "")
	require.Equal(t, []any{map[string]any{"output": map[string]any{"pct": float64(50)}}}, stream["stream"])

	// A progress update that comes after the result (the SDK posts it
	// from a thread of its own, §A.9) is answered 200 and ignored.
	dones := runpodtest.Of(b.rec.WaitFor(t, "progress and result", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-done")) == 2
	}), "job-done")
	require.Contains(t, string(dones[0].Body), `"status": "IN_PROGRESS"`)
	late, err := http.NewRequest("POST", b.url+dones[0].URI, strings.NewReader(string(dones[0].Body)))
	require.NoError(t, err)
	late.Header.Set("Authorization", workerKey)
	resp, err := http.DefaultClient.Do(late)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "a progress update after the result is accepted and ignored")
	_, out = b.call(t, "GET", "/v2/ep1/status/"+id, "")
	require.Equal(t, "COMPLETED", out["status"])
}

func TestGeneratorWorkerStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.worker(t, "g-worker", func(c *runpodtest.MockWorkerConfig) { c.Generator, c.AggregateStream = true, true })
	id := b.run(t, `"mock_return":[{"i":0},{"i":1},{"i":2}],"mock_delay":0.2`)
	var chunks []any
	for i := 0; ; i++ {
		require.Less(t, i, 300)
		_, out := b.call(t, "GET", "/v2/ep1/stream/"+id, "")
		for _, c := range out["stream"].([]any) {
			chunks = append(chunks, c.(map[string]any)["output"])
		}
		if proto.Status(out["status"].(string)).Terminal() {
			require.Equal(t, "COMPLETED", out["status"])
			break
		}
	}
	want := []any{map[string]any{"i": float64(0)}, map[string]any{"i": float64(1)}, map[string]any{"i": float64(2)}}
	require.Equal(t, want, chunks)
	out := b.final(t, id)
	require.Equal(t, want, out["output"], "return_aggregate_stream: the final output is the list of yields")
	for _, d := range runpodtest.Of(b.rec.WaitFor(t, "the result", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-done")) == 1
	}), "job-done") {
		require.Contains(t, d.URI, "isStream=true")
	}

	id = b.run(t, `"mock_return":[{"i":0}],"mock_error":"gen boom"`)
	out = b.final(t, id)
	require.Equal(t, "FAILED", out["status"])
	require.True(t, strings.HasPrefix(out["error"].(string), "handler: gen boom \ntraceback: Traceback"), out["error"])
}

func TestCancelReachesTheWorkerThroughJobStop(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	w := b.worker(t, "worker-1", nil)
	id := b.run(t, `"mock_delay":60`)
	b.fleet.WaitStatus(t, id, proto.StatusInProgress)
	code, out := b.call(t, "POST", "/v2/ep1/cancel/"+id, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "CANCELLED", out["status"])
	reqs := b.rec.WaitFor(t, "jobsToStop", func(reqs []runpodtest.Request) bool {
		for _, r := range runpodtest.Of(reqs, "job-stop") {
			if r.Code == 200 {
				return true
			}
		}
		return false
	})
	_ = reqs
	// The worker is free again: the next job runs at once.
	next := b.run(t, `"mock_return":"next"`)
	require.Equal(t, "next", b.final(t, next)["output"])
	require.NotContains(t, w.Reported(), id, "a stopped job posts nothing")
	rec := b.fleet.WaitStatus(t, id, proto.StatusCancelled)
	require.Equal(t, 1, rec.Attempt)
}

func TestRefresh(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	// The handler returns refresh_worker: stopPod, and the worker goes on.
	b.worker(t, "worker-1", nil)
	out := b.final(t, b.run(t, `"mock_return":{"v":1},"mock_refresh":true`))
	require.Equal(t, "COMPLETED", out["status"])
	require.Equal(t, map[string]any{"v": float64(1)}, out["output"])
	done := runpodtest.Of(b.rec.WaitFor(t, "the result", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-done")) == 1
	}), "job-done")
	require.JSONEq(t, `{"output":{"v":1},"stopPod":true}`, string(done[len(done)-1].Body))
	require.Equal(t, "COMPLETED", b.final(t, b.run(t, ``))["status"])

	// refresh_worker in the config: the worker exits after its job.
	b2 := setup(t, 1, nil)
	w := b2.worker(t, "worker-2", func(c *runpodtest.MockWorkerConfig) { c.RefreshWorker = true })
	require.Equal(t, "COMPLETED", b2.final(t, b2.run(t, `"mock_return":"x"`))["status"])
	select {
	case <-w.Exited():
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not exit")
	}
}

func TestConcurrencyThree(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	var ids []string
	for _, d := range []string{"1", "2", "2", "0.1"} {
		ids = append(ids, b.run(t, `"mock_delay":`+d))
	}
	// All four admitted before the worker asks, so its first batch is three.
	require.Eventually(t, func() bool {
		s, err := b.fleet.NATS.JS.Stream(context.Background(), proto.JobsStream)
		require.NoError(t, err)
		info, err := s.Info(context.Background())
		require.NoError(t, err)
		return info.State.Msgs == 4
	}, 20*time.Second, 10*time.Millisecond)
	b.worker(t, "worker-1", func(c *runpodtest.MockWorkerConfig) { c.Concurrency = 3 })
	for _, id := range ids {
		require.Equal(t, "COMPLETED", b.final(t, id)["status"])
	}
	reqs := b.rec.Requests()
	requirePythonRequests(t, reqs, "worker-1")
	var takes []runpodtest.Request
	for _, r := range reqs {
		if r.Kind() == "job-take" || r.Kind() == "job-take-batch" {
			takes = append(takes, r)
		}
	}
	require.Equal(t, "/v2/ep1/job-take-batch/worker-1?gpu=TEST&batch_size=3&job_in_progress=0", takes[0].URI)
	var single bool
	for _, tk := range takes {
		single = single || tk.URI == "/v2/ep1/job-take/worker-1?gpu=TEST&job_in_progress=1"
	}
	require.True(t, single, "one free slot takes one job, saying jobs are in progress")
	var three bool
	for _, p := range runpodtest.Of(reqs, "ping") {
		if strings.Count(p.URI, "%2C") == 2 {
			three = true
		}
	}
	require.True(t, three, "a ping named three held jobs, comma-joined")
	var starts []time.Time
	for _, id := range ids[:3] {
		rec, err := b.fleet.DB.Get(context.Background(), id)
		require.NoError(t, err)
		starts = append(starts, rec.StartedAt)
	}
	rec, err := b.fleet.DB.Get(context.Background(), ids[1])
	require.NoError(t, err)
	for _, s := range starts {
		require.True(t, s.Before(rec.FinishedAt), "the first three ran at the same time")
	}
}

// TestResultPostRetriedOn503: the adapter (or something before it)
// answers 503 twice; the SDK posts again after 2 and 3 (here 0.2 and 0.3)
// seconds, and the third post lands.
func TestResultPostRetriedOn503(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	id := b.run(t, `"mock_return":"third time"`)
	b.rec.FailDone(id, 503, 503)
	b.worker(t, "worker-1", nil)
	require.Equal(t, "third time", b.final(t, id)["output"])
	posts := runpodtest.Of(b.rec.WaitFor(t, "three posts", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-done")) == 3
	}), "job-done")
	require.Equal(t, []int{503, 503, 200}, []int{posts[0].Code, posts[1].Code, posts[2].Code})
	require.GreaterOrEqual(t, posts[1].At.Sub(posts[0].At), 200*time.Millisecond)
	require.GreaterOrEqual(t, posts[2].At.Sub(posts[1].At), 300*time.Millisecond)
}

// TestCrashedWorkerLosesTheLease: the worker dies mid-job (mock_crash);
// its pings stop, the lease runs out, the job goes back on the queue and
// a gpuworker finishes it as attempt 2.
func TestCrashedWorkerLosesTheLease(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	w := b.worker(t, "worker-1", nil)
	id := b.run(t, `"mock_crash":true`)
	<-w.Exited()
	rec := b.fleet.WaitStatus(t, id, proto.StatusInQueue)
	require.Equal(t, 1, rec.Retries, "a lost lease counts as a retry")
	b.fleet.StartWorker(t, "gpu-a")
	rec = b.fleet.WaitStatus(t, id, proto.StatusCompleted)
	require.Equal(t, 2, rec.Attempt)
	require.Equal(t, "gpu-a", rec.WorkerID)
}

// TestStaleResultIsFencedOut: a worker that went quiet loses its job to
// another; its late result changes nothing.
func TestStaleResultIsFencedOut(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, func(c *jobtake.Config) { c.LeaseTimeout = 600 * time.Millisecond })
	// A worker without pings holds the job past its lease.
	slow := b.worker(t, "slow", func(c *runpodtest.MockWorkerConfig) { c.Ping = "" })
	id := b.run(t, `"mock_delay":2,"mock_return":"slow"`)
	b.fleet.WaitStatus(t, id, proto.StatusInProgress)
	rec := b.fleet.WaitStatus(t, id, proto.StatusInQueue)
	require.Equal(t, 1, rec.Attempt)
	b.worker(t, "fast", nil)
	rec = b.fleet.WaitStatus(t, id, proto.StatusInProgress)
	require.Equal(t, 2, rec.Attempt)
	require.Equal(t, "fast", rec.WorkerID)
	rec = b.fleet.WaitStatus(t, id, proto.StatusCompleted)
	require.Equal(t, "fast", rec.WorkerID)
	require.Eventually(t, func() bool { return len(slow.Reported()) == 1 }, 20*time.Second, 20*time.Millisecond, "the slow worker posts its result")
	posts := runpodtest.Of(b.rec.WaitFor(t, "both results", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-done")) == 2
	}), "job-done")
	for _, p := range posts {
		switch {
		case strings.Contains(p.URI, "/job-done/slow/"):
			// 409 while attempt 2 runs (as timed here), 404 once it ended.
			require.Contains(t, []int{http.StatusConflict, http.StatusNotFound}, p.Code, "attempt 1's late result is fenced out")
		case strings.Contains(p.URI, "/job-done/fast/"):
			require.Equal(t, http.StatusOK, p.Code)
		default:
			t.Fatalf("unexpected post %s", p.URI)
		}
	}
	rec, err := b.fleet.DB.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, "fast", rec.WorkerID)
	require.Equal(t, 2, rec.Attempt)
}

// TestStatelessReplicas: two adapter replicas behind a round-robin
// balancer; a worker's take, pings, stop polls and results land on either.
func TestStatelessReplicas(t *testing.T) {
	t.Parallel()
	b := setup(t, 2, nil)
	b.worker(t, "worker-1", func(c *runpodtest.MockWorkerConfig) { c.Concurrency = 2 })
	var ids []string
	for i := range 6 {
		ids = append(ids, b.run(t, `"mock_return":`+string(rune('0'+i))+`,"mock_delay":0.3,"mock_progress":[1]`))
	}
	for i, id := range ids {
		out := b.final(t, id)
		require.Equal(t, "COMPLETED", out["status"])
		require.Equal(t, float64(i), out["output"])
	}
	held := b.run(t, `"mock_delay":60`)
	b.fleet.WaitStatus(t, held, proto.StatusInProgress)
	b.call(t, "POST", "/v2/ep1/cancel/"+held, "")
	b.rec.WaitFor(t, "jobsToStop", func(reqs []runpodtest.Request) bool {
		for _, r := range runpodtest.Of(reqs, "job-stop") {
			if r.Code == 200 {
				return true
			}
		}
		return false
	})
	requirePythonRequests(t, b.rec.Requests(), "worker-1")
}

// TestPingsKeepTheMessage: a job that runs three times longer than the
// consumers' AckWait is not redelivered while its worker pings, so it
// runs once, as attempt 1 (a redelivery would reach the worker's free
// second slot as attempt 2).
func TestPingsKeepTheMessage(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, func(c *jobtake.Config) { c.AckWait = time.Second; c.LeaseTimeout = 1500 * time.Millisecond })
	b.worker(t, "worker-1", func(c *runpodtest.MockWorkerConfig) { c.Concurrency = 2 })
	id := b.run(t, `"mock_delay":3,"mock_return":"long"`)
	out := b.final(t, id)
	require.Equal(t, "long", out["output"])
	rec, err := b.fleet.DB.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, 1, rec.Attempt, "never redelivered")
	require.Zero(t, rec.Retries)
}

// takeAs takes one job as the RunPod worker name, by hand, and returns
// its id.
func (b *bundle) takeAs(t *testing.T, name string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, _, body := b.raw(t, "GET", "/v2/ep1/job-take/"+name+"?gpu=TEST&job_in_progress=0", "")
		if code == http.StatusOK {
			var j struct{ ID string }
			require.NoError(t, json.Unmarshal(body, &j), "%s", body)
			return j.ID
		}
		require.Equal(t, http.StatusNoContent, code, "%s", body)
		require.True(t, time.Now().Before(deadline), "%s got no job", name)
	}
}

// TestQuietWorkerLosesTheJob: a RunPod worker that stops pinging loses
// its job to the dispatcher's sweeper, the job goes back on the queue and
// another worker completes it; every later post of the quiet worker is
// refused (409 while the other holds the job, 404 once it ended), its
// ping revives nothing, and the record keeps the other worker's result.
func TestQuietWorkerLosesTheJob(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil) // leases of 1.5 s
	ctx := context.Background()
	form := []string{"Content-Type", "application/x-www-form-urlencoded", "charset", "utf-8"}
	id := b.run(t, `"mock_return":1`)
	b.fleet.WaitStatus(t, id, proto.StatusInQueue)

	require.Equal(t, id, b.takeAs(t, "quiet"))
	rec := b.fleet.WaitStatus(t, id, proto.StatusInProgress)
	require.Equal(t, [2]any{1, "quiet"}, [2]any{rec.Attempt, rec.WorkerID})

	// No ping: the lease lapses and the sweeper gives the job back.
	rec = b.fleet.WaitStatus(t, id, proto.StatusInQueue)
	require.Equal(t, 1, rec.Retries, "a lost lease counts as a retry")
	errs, err := b.fleet.Core.AttemptErrors(ctx, id)
	require.NoError(t, err)
	require.Equal(t, []string{"attempt 1: " + proto.MsgLeaseLapsed}, errs)
	code, _, _ := b.raw(t, "GET", "/v2/ep1/ping/quiet?gpu=TEST&job_id="+id+"&runpod_version=1.12.0", "")
	require.Equal(t, http.StatusOK, code)
	rec, err = b.fleet.DB.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, proto.StatusInQueue, rec.Status, "a late ping does not take the job back")

	require.Equal(t, id, b.takeAs(t, "other"))
	rec = b.fleet.WaitStatus(t, id, proto.StatusInProgress)
	require.Equal(t, [2]any{2, "other"}, [2]any{rec.Attempt, rec.WorkerID})
	code, _, _ = b.raw(t, "GET", "/v2/ep1/ping/other?gpu=TEST&job_id="+id+"&runpod_version=1.12.0", "")
	require.Equal(t, http.StatusOK, code, "the other worker keeps its lease")

	// The quiet worker's result and chunk, while the other holds the job.
	code, _, body := b.raw(t, "POST", "/v2/ep1/job-done/quiet/"+id+"?gpu=TEST&isStream=false", `{"output": "stale"}`, form...)
	require.Equal(t, http.StatusConflict, code, "%s", body)
	require.Contains(t, string(body), "held by another worker now (attempt 2)")
	code, _, body = b.raw(t, "POST", "/v2/ep1/job-stream/quiet/"+id+"?gpu=TEST&isStream=false", `{"output": "stale chunk"}`, form...)
	require.Equal(t, http.StatusConflict, code, "%s", body)

	code, _, body = b.raw(t, "POST", "/v2/ep1/job-done/other/"+id+"?gpu=TEST&isStream=false", `{"output": "fresh"}`, form...)
	require.Equal(t, http.StatusOK, code, "%s", body)
	rec = b.fleet.WaitStatus(t, id, proto.StatusCompleted)

	// Once it ended: no lease at all.
	code, _, body = b.raw(t, "POST", "/v2/ep1/job-done/quiet/"+id+"?gpu=TEST&isStream=false", `{"output": "stale"}`, form...)
	require.Equal(t, http.StatusNotFound, code, "%s", body)
	after, err := b.fleet.DB.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, rec, after, "the refused posts changed nothing")
	require.JSONEq(t, `"fresh"`, string(after.Output))
	require.Equal(t, [2]any{2, "other"}, [2]any{after.Attempt, after.WorkerID})
	_, stream := b.call(t, "GET", "/v2/ep1/stream/"+id, "")
	require.Equal(t, []any{}, stream["stream"], "the stale chunk was not published")
}
