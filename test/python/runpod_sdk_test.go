package pythontest

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

// The settings of the adapters here: short holds and leases, so that a
// lost worker's job comes back within seconds (the SDK pings every
// second at the fastest, RUNPOD_PING_INTERVAL=1000).
const (
	leaseTimeout = 3 * time.Second
	refusalDelay = time.Second
)

// sdk is a fleet with runpod-adapters whose job-take host RunPod's SDK
// workers poll.
type sdk struct {
	*runpodtest.Adapter
	py string
}

func startSDK(t *testing.T, replicas int) *sdk {
	t.Helper()
	py := python(t)
	a := runpodtest.StartAdapter(t, replicas, jobtake.Config{
		TakeHold: time.Second, StopHold: time.Second, LeaseTimeout: leaseTimeout, RefusalDelay: refusalDelay,
	})
	return &sdk{Adapter: a, py: py}
}

// templates are RUNPOD_WEBHOOK_* as RunPod sets them: $ID in the take
// URL, $RUNPOD_POD_ID and $ID in the others, a query on each.
func (s *sdk) templates() map[string]string {
	base := s.URL + "/v2/ep1/"
	return map[string]string{
		"RUNPOD_WEBHOOK_GET_JOB":     base + "job-take/$ID?gpu=TEST",
		"RUNPOD_WEBHOOK_POST_OUTPUT": base + "job-done/$RUNPOD_POD_ID/$ID?gpu=TEST",
		"RUNPOD_WEBHOOK_POST_STREAM": base + "job-stream/$RUNPOD_POD_ID/$ID?gpu=TEST",
		"RUNPOD_WEBHOOK_PING":        base + "ping/$RUNPOD_POD_ID?gpu=TEST",
	}
}

// worker starts test/python/worker.py under RunPod's SDK as pod, with
// the key key ("" means the adapter's), and waits for its first ask.
func (s *sdk) worker(t *testing.T, pod, key string, templates map[string]string, args ...string) *proc {
	t.Helper()
	if key == "" {
		key = runpodtest.WorkerKey
	}
	if templates == nil {
		templates = s.templates()
	}
	env := []string{"RUNPOD_AI_API_KEY=" + key, "RUNPOD_POD_ID=" + pod, "RUNPOD_PING_INTERVAL=1000", "RUNPOD_DEBUG_LEVEL=DEBUG"}
	for k, v := range templates {
		env = append(env, k+"="+v)
	}
	p := start(t, s.py, cleanEnv(env...), append([]string{"worker.py"}, args...)...)
	s.Rec.WaitFor(t, pod+"'s first ping", func(reqs []runpodtest.Request) bool {
		for _, r := range runpodtest.Of(reqs, "ping") {
			if strings.Contains(r.URI, "/ping/"+pod+"?") {
				return true
			}
		}
		select {
		case <-p.done:
			t.Fatalf("worker %s exited:\n%s", pod, p.out)
		default:
		}
		return false
	})
	return p
}

// run submits a job through the endpoint API's /run and returns its id.
func (s *sdk) run(t *testing.T, input string, policy string) string {
	t.Helper()
	body := `{"input":{"workflow":{"9":{"class_type":"SaveImage","inputs":{}}}`
	if rest := strings.TrimPrefix(input, "{"); rest != "}" {
		body += "," + rest
	} else {
		body += "}"
	}
	if policy != "" {
		body += `,"policy":` + policy
	}
	body += "}"
	code, out := s.call(t, "POST", "/v2/ep1/run", body)
	require.Equal(t, http.StatusOK, code, "%v", out)
	return out["id"].(string)
}

func (s *sdk) call(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	return s.Adapter.Call(t, method, path, body)
}

// final waits for a job's terminal /status view.
func (s *sdk) final(t *testing.T, id string) map[string]any {
	t.Helper()
	return s.Adapter.Final(t, id, time.Minute)
}

// stream reads /stream until the job ends and returns every chunk.
func (s *sdk) stream(t *testing.T, id string) []any {
	t.Helper()
	var chunks []any
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		_, out := s.call(t, "GET", "/v2/ep1/stream/"+id, "")
		for _, c := range out["stream"].([]any) {
			chunks = append(chunks, c.(map[string]any)["output"])
		}
		if proto.Status(out["status"].(string)).Terminal() {
			return chunks
		}
	}
	t.Fatalf("job %s never finished streaming", id)
	return nil
}

// requireAnswered checks that the host answered every request of the
// SDK's workers as the SDK needs (no error), but for the kinds allowed.
func requireAnswered(t *testing.T, reqs []runpodtest.Request) {
	t.Helper()
	for _, r := range reqs {
		if r.Kind() == "" {
			continue
		}
		require.Contains(t, []int{200, 204}, r.Code, "%s %s answered %d", r.Method, r.URI, r.Code)
	}
}

// TestSDKWorkerRunsJobs: jobs submitted through /run are taken by the
// SDK's worker; its progress_update values reach /stream and /status
// while it runs, its results reach /status, and a progress update that
// lands after the result is accepted (200) and ignored.
func TestSDKWorkerRunsJobs(t *testing.T) {
	t.Parallel()
	s := startSDK(t, 2)
	s.worker(t, "pod-1", "", nil)

	id := s.run(t, `{"progress":[{"pct":50}],"sleep":1.5,"output":{"images":[{"filename":"a.png","type":"base64","data":"iVBORw0KGgo="}]},"late_progress":{"pct":100}}`, "")
	require.Eventually(t, func() bool {
		_, out := s.call(t, "GET", "/v2/ep1/status/"+id, "")
		p, _ := out["output"].(map[string]any)
		return out["status"] == "IN_PROGRESS" && p["pct"] == float64(50)
	}, 20*time.Second, 20*time.Millisecond, "an IN_PROGRESS job shows its latest progress_update")
	out := s.final(t, id)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
	require.Equal(t, "pod-1", out["workerId"])
	img := out["output"].(map[string]any)["images"].([]any)[0].(map[string]any)
	require.Equal(t, "iVBORw0KGgo=", img["data"])
	_, st := s.call(t, "GET", "/v2/ep1/stream/"+id, "")
	require.Equal(t, []any{map[string]any{"output": map[string]any{"pct": float64(50)}}}, st["stream"], "the progress update reached /stream, the late one did not")

	dones := runpodtest.Of(s.Rec.WaitFor(t, "the late progress update", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-done")) == 3
	}), "job-done")
	require.Contains(t, string(dones[2].Body), `"status": "IN_PROGRESS"`)
	require.Contains(t, string(dones[2].Body), `"pct": 100`)
	_, out = s.call(t, "GET", "/v2/ep1/status/"+id, "")
	require.Equal(t, "COMPLETED", out["status"])

	// Plain values, and a job submitted while the worker is idle.
	for _, tc := range []struct{ in, want string }{{`{"output":"plain"}`, `"plain"`}, {`{"output":[1,2]}`, `[1,2]`}, {`{}`, `"done"`}} {
		out := s.final(t, s.run(t, tc.in, ""))
		got, _ := json.Marshal(out["output"])
		require.JSONEq(t, tc.want, string(got), tc.in)
	}
	requireAnswered(t, s.Rec.Requests())
}

// TestSDKGeneratorStreams: a generator handler's yields reach /stream as
// they come, and with return_aggregate_stream the final output is their
// list.
func TestSDKGeneratorStreams(t *testing.T) {
	t.Parallel()
	s := startSDK(t, 1)
	s.worker(t, "gen-1", "", nil, "--generator")
	id := s.run(t, `{"output":[{"i":0},{"i":1},{"i":2}],"sleep":0.3}`, "")
	want := []any{map[string]any{"i": float64(0)}, map[string]any{"i": float64(1)}, map[string]any{"i": float64(2)}}
	require.Equal(t, want, s.stream(t, id))
	out := s.final(t, id)
	require.Equal(t, "COMPLETED", out["status"])
	require.Equal(t, want, out["output"])
	for _, r := range runpodtest.Of(s.Rec.Requests(), "job-stream") {
		require.Equal(t, http.StatusOK, r.Code)
	}
	requireAnswered(t, s.Rec.Requests())
}

// TestSDKBatchTakes: with a concurrency_modifier of 3 the SDK takes up
// to three jobs in one job-take-batch, runs them together, and names them
// all in its pings.
func TestSDKBatchTakes(t *testing.T) {
	t.Parallel()
	s := startSDK(t, 1)
	var ids []string
	for range 3 {
		ids = append(ids, s.run(t, `{"sleep":2,"output":"x"}`, ""))
	}
	for _, id := range ids {
		s.Fleet.WaitStatus(t, id, proto.StatusInQueue)
	}
	s.worker(t, "pod-3", "", nil, "--concurrency", "3")
	for _, id := range ids {
		require.Equal(t, "COMPLETED", s.final(t, id)["status"])
	}
	reqs := s.Rec.Requests()
	require.NotEmpty(t, runpodtest.Of(reqs, "job-take-batch"), "the SDK asked for a batch")
	var starts, ends []time.Time
	for _, id := range ids {
		rec, err := s.Fleet.DB.Get(context.Background(), id)
		require.NoError(t, err)
		starts, ends = append(starts, rec.StartedAt), append(ends, rec.FinishedAt)
	}
	for _, st := range starts {
		for _, e := range ends {
			require.True(t, st.Before(e), "the three ran at the same time")
		}
	}
	requireAnswered(t, reqs)
}

// TestSDKExecutionTimeout: a job whose policy.executionTimeout is 5 s and
// whose handler would take 14 s ends TIMED_OUT after 5 s; the SDK hears
// it on job-stop and stops the job, and takes the next one.
func TestSDKExecutionTimeout(t *testing.T) {
	t.Parallel()
	s := startSDK(t, 1)
	s.worker(t, "pod-1", "", nil)
	id := s.run(t, `{"sleep":14,"output":"late"}`, `{"executionTimeout":5000}`)
	rec := s.Fleet.WaitStatus(t, id, proto.StatusInProgress)
	started := rec.StartedAt
	out := s.final(t, id)
	require.Equal(t, "TIMED_OUT", out["status"], "%v", out)
	rec, err := s.Fleet.DB.Get(context.Background(), id)
	require.NoError(t, err)
	took := rec.FinishedAt.Sub(started)
	require.GreaterOrEqual(t, took, 5*time.Second)
	require.Less(t, took, 10*time.Second, "ended at its timeout, not when the handler would have")
	s.Rec.WaitFor(t, "the stop", func(reqs []runpodtest.Request) bool {
		for _, r := range runpodtest.Of(reqs, "job-stop") {
			if r.Code == http.StatusOK {
				return true
			}
		}
		return false
	})
	next := s.run(t, `{"output":"next"}`, "")
	require.Equal(t, "next", s.final(t, next)["output"], "the worker stopped the job and is free")
	for _, r := range runpodtest.Of(s.Rec.Requests(), "job-done") {
		require.NotContains(t, r.URI, id, "the stopped job posted nothing")
	}
}

// TestSDKWorkerKilledMidJob: SIGKILL of the worker (its process group:
// the ping process too) hands the job back to the fleet once its lease
// runs out; another worker completes it as attempt 2.
func TestSDKWorkerKilledMidJob(t *testing.T) {
	t.Parallel()
	s := startSDK(t, 1)
	w := s.worker(t, "pod-1", "", nil)
	id := s.run(t, `{"sleep":120,"sleep_on":"pod-1","output":"second time"}`, "")
	rec := s.Fleet.WaitStatus(t, id, proto.StatusInProgress)
	require.Equal(t, "pod-1", rec.WorkerID)
	w.killGroup()
	<-w.done
	rec = s.Fleet.WaitStatus(t, id, proto.StatusInQueue)
	require.Equal(t, 1, rec.Retries, "handed back to the fleet")
	s.worker(t, "pod-2", "", nil)
	out := s.final(t, id)
	require.Equal(t, "COMPLETED", out["status"])
	require.Equal(t, "second time", out["output"])
	rec, err := s.Fleet.DB.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, [2]any{2, "pod-2"}, [2]any{rec.Attempt, rec.WorkerID})
}

// TestSDKOrphanedPingProcess: SIGKILL of the SDK's main process alone
// leaves its ping process running, still naming the job; the job goes
// back to the fleet all the same (its worker's main process shows no
// life), and another worker completes it. A synchronous handler that
// blocks the SDK's event loop past the lease keeps its job meanwhile.
func TestSDKOrphanedPingProcess(t *testing.T) {
	t.Parallel()
	s := startSDK(t, 1)
	w := s.worker(t, "pod-1", "", nil)

	// Blocking the event loop for three leases: only the ping process
	// and the held job-stop poll speak for the worker.
	blocked := s.run(t, `{"block":9,"output":"blocked"}`, "")
	out := s.final(t, blocked)
	require.Equal(t, "COMPLETED", out["status"])
	rec, err := s.Fleet.DB.Get(context.Background(), blocked)
	require.NoError(t, err)
	require.Equal(t, 1, rec.Attempt, "kept while the handler blocked")

	id := s.run(t, `{"sleep":120,"sleep_on":"pod-1","output":"second time"}`, "")
	s.Fleet.WaitStatus(t, id, proto.StatusInProgress)
	// Killed while its job-stop poll is open, as it is nearly always (it
	// is between polls for a second after an answer that names no job).
	require.Eventually(t, func() bool {
		at, ok, err := s.Fleet.DB.LastAlive(context.Background(), "pod-1")
		require.NoError(t, err)
		return ok && !at.After(time.Now())
	}, 20*time.Second, 10*time.Millisecond, "pod-1 polls job-stop")
	w.killMain()
	killed := time.Now()
	rec = s.Fleet.WaitStatus(t, id, proto.StatusInQueue)
	require.Equal(t, 1, rec.Retries, "handed back to the fleet")
	var orphaned bool
	for _, r := range runpodtest.Of(s.Rec.Requests(), "ping") {
		orphaned = orphaned || r.At.After(killed.Add(time.Second)) && strings.Contains(r.URI, "/ping/pod-1?") && strings.Contains(r.URI, id)
	}
	require.True(t, orphaned, "the orphaned ping process went on naming the job")
	s.worker(t, "pod-2", "", nil)
	require.Equal(t, "second time", s.final(t, id)["output"])
	rec, err = s.Fleet.DB.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, [2]any{2, "pod-2"}, [2]any{rec.Attempt, rec.WorkerID})
}

// TestSDKWrongKeyBacksOff: a worker with a wrong RUNPOD_AI_API_KEY is
// refused, slowly enough that the SDK's take loop, which asks again at
// once after an error, makes one take per refusal delay (it made
// thousands a minute against an immediate 401).
func TestSDKWrongKeyBacksOff(t *testing.T) {
	t.Parallel()
	s := startSDK(t, 1)
	env := []string{"RUNPOD_AI_API_KEY=wrong", "RUNPOD_POD_ID=pod-x", "RUNPOD_PING_INTERVAL=1000"}
	for k, v := range s.templates() {
		env = append(env, k+"="+v)
	}
	start(t, s.py, cleanEnv(env...), "worker.py")
	takes := runpodtest.Of(s.Rec.WaitFor(t, "four refused takes", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-take")) >= 4
	}), "job-take")
	for i, tk := range takes[:4] {
		require.Equal(t, http.StatusUnauthorized, tk.Code)
		if i > 0 {
			require.GreaterOrEqual(t, tk.At.Sub(takes[i-1].At), refusalDelay-50*time.Millisecond, "take %d came %v after the last refusal", i, tk.At.Sub(takes[i-1].At))
		}
	}
	stops := runpodtest.Of(s.Rec.Requests(), "job-stop")
	require.LessOrEqual(t, len(stops), 5, "the stop loop backs off too")
}

// TestSDKSharedTemplate: two workers whose RUNPOD_WEBHOOK_GET_JOB has the
// literal $RUNPOD_POD_ID and no "?" (as RunPod's local test server
// writes it; the SDK replaces only $ID there) take and poll under one
// name. /health counts the two real workers, and a cancel reaches the
// worker that runs the job.
func TestSDKSharedTemplate(t *testing.T) {
	t.Parallel()
	s := startSDK(t, 2)
	base := s.URL + "/v2/ep1/"
	tpl := map[string]string{
		"RUNPOD_WEBHOOK_GET_JOB":     base + "job-take/$RUNPOD_POD_ID",
		"RUNPOD_WEBHOOK_POST_OUTPUT": base + "job-done/$RUNPOD_POD_ID/$ID",
		"RUNPOD_WEBHOOK_POST_STREAM": base + "job-stream/$RUNPOD_POD_ID/$ID",
		"RUNPOD_WEBHOOK_PING":        base + "ping/$RUNPOD_POD_ID",
	}
	s.worker(t, "pod-a", "", tpl)
	s.worker(t, "pod-b", "", tpl)
	x, y := s.run(t, `{"sleep":120}`, ""), s.run(t, `{"sleep":120}`, "")
	s.Fleet.WaitStatus(t, x, proto.StatusInProgress)
	s.Fleet.WaitStatus(t, y, proto.StatusInProgress)
	// Which worker runs which: their pings say.
	runner := map[string]string{}
	s.Rec.WaitFor(t, "pings naming both jobs", func(reqs []runpodtest.Request) bool {
		for _, r := range runpodtest.Of(reqs, "ping") {
			for _, pod := range []string{"pod-a", "pod-b"} {
				for _, id := range []string{x, y} {
					if strings.Contains(r.URI, "/ping/"+pod+"?") && strings.Contains(r.URI, "job_id="+id) {
						runner[id] = pod
					}
				}
			}
		}
		return len(runner) == 2 && runner[x] != runner[y]
	})
	_, health := s.call(t, "GET", "/v2/ep1/health", "")
	workers := health["workers"].(map[string]any)
	require.Equal(t, float64(2), workers["idle"].(float64)+workers["running"].(float64), "two workers, no phantom: %v", workers)

	for _, id := range []string{y, x} {
		code, _ := s.call(t, "POST", "/v2/ep1/cancel/"+id, "")
		require.Equal(t, http.StatusOK, code)
		cancelled := time.Now()
		// The runner's pings stop naming the job: it stopped it.
		s.Rec.WaitFor(t, runner[id]+" stops "+id, func(reqs []runpodtest.Request) bool {
			for _, r := range runpodtest.Of(reqs, "ping") {
				if r.At.After(cancelled.Add(200*time.Millisecond)) && strings.Contains(r.URI, "/ping/"+runner[id]+"?") && !strings.Contains(r.URI, id) {
					return true
				}
			}
			return false
		})
	}
	require.Equal(t, "COMPLETED", s.final(t, s.run(t, `{"output":"n"}`, ""))["status"])
}
