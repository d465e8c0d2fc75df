package serverless_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/internal/runpod/serverless"
	"github.com/comfyfleet/comfyfleet/proto"
)

const version = "comfyfleet-test"

type bundle struct {
	fleet    *runpodtest.Fleet
	platform *runpodtest.Platform
	worker   *serverless.Worker
	workers  []*runpodtest.FleetWorker
}

// setup runs a serverless worker between a fake RunPod platform and a
// fleet (admission and fleetWorkers scripted workers), with the
// protocol's waits shortened.
func setup(t *testing.T, fleetWorkers int, edit func(*serverless.Config), jobs ...map[string]any) *bundle {
	t.Helper()
	b := &bundle{fleet: runpodtest.StartFleet(t), platform: runpodtest.StartPlatform(t)}
	for _, j := range jobs { // queued before the worker's first take
		b.platform.AddJob(j)
	}
	for i := range fleetWorkers {
		b.workers = append(b.workers, b.fleet.StartWorker(t, "gpu-"+string(rune('a'+i))))
	}
	getJob, postOutput, postStream, ping := b.platform.Templates()
	cfg := serverless.Config{
		GetJobURL: getJob, PostOutputURL: postOutput, PostStreamURL: postStream, PingURL: ping,
		APIKey: "secret-key", WorkerID: "worker-1", Version: version,
		PingInterval: 100 * time.Millisecond, IdleWait: 50 * time.Millisecond, ThrottleWait: 400 * time.Millisecond,
		RetryWaits: []time.Duration{200 * time.Millisecond, 300 * time.Millisecond}, PollInterval: 100 * time.Millisecond,
		Grace: 5 * time.Second,
	}
	if edit != nil {
		edit(&cfg)
	}
	q, core := b.fleet.ReplicaCore(t)
	w, err := serverless.New(cfg, serverless.Deps{Queue: q, Core: core, Blobs: q.Blobs(), Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(w.Stop)
	b.worker = w
	return b
}

func rpJob(id string, m runpodtest.Mock) map[string]any {
	return map[string]any{"id": id, "input": json.RawMessage(runpodtest.Input(m))}
}

// done waits for the job-done posts of the job and returns them.
func (b *bundle) done(t *testing.T, jobID string, n int) []runpodtest.Request {
	t.Helper()
	var out []runpodtest.Request
	b.platform.WaitFor(t, "job-done of "+jobID, func(reqs []runpodtest.Request) bool {
		out = nil
		for _, r := range runpodtest.Of(reqs, "job-done") {
			if strings.Contains(r.URI, "/"+jobID+"?") || strings.Contains(r.URI, "/"+jobID+"&") {
				out = append(out, r)
			}
		}
		return len(out) >= n
	})
	return out
}

// requireWorkerHeaders checks the headers of the SDK's aiohttp session.
func requireWorkerHeaders(t *testing.T, r runpodtest.Request) {
	t.Helper()
	require.Equal(t, "secret-key", r.Header.Get("Authorization"), "the raw key, no Bearer: %s", r.URI)
	require.Contains(t, r.Header.Get("User-Agent"), "comfyfleet-runpod-adapter/"+version)
	switch r.Kind() {
	case "job-done", "job-stream":
		require.Equal(t, "POST", r.Method)
		require.Equal(t, "application/x-www-form-urlencoded", r.Header.Get("Content-Type"), "as the SDK, though the body is JSON")
		require.Equal(t, "utf-8", r.Header.Get("charset"))
		require.NotEmpty(t, r.Header.Get("X-Request-ID"))
		require.True(t, json.Valid(r.Body), "%s", r.Body)
	case "job-take", "job-take-batch", "job-stop":
		require.Equal(t, "GET", r.Method)
		require.Equal(t, "application/json", r.Header.Get("Content-Type"), "the session's default, on a GET too")
	case "ping":
		require.Equal(t, "GET", r.Method)
		require.Empty(t, r.Header.Get("Content-Type"))
	default:
		t.Fatalf("unexpected request %s %s", r.Method, r.URI)
	}
}

func TestJobRunsOnTheFleetAndIsReported(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.platform.AddJob(rpJob("job-ok", runpodtest.Mock{Return: json.RawMessage(`{"a":1}`), DelayMS: 300}))
	done := b.done(t, "job-ok", 1)[0]
	require.Equal(t, "/v2/ep1/job-done/worker-1/job-ok?gpu=TEST&isStream=false", done.URI)
	require.JSONEq(t, `{"output":{"a":1}}`, string(done.Body))
	require.Equal(t, "job-ok", done.Header.Get("X-Request-ID"))

	reqs := b.platform.WaitFor(t, "an idle ping after the job", func(reqs []runpodtest.Request) bool {
		pings := runpodtest.Of(reqs, "ping")
		return len(pings) > 0 && pings[len(pings)-1].At.After(done.At) && !strings.Contains(pings[len(pings)-1].URI, "job_id")
	})
	for _, r := range reqs {
		requireWorkerHeaders(t, r)
	}
	takes := runpodtest.Of(reqs, "job-take")
	require.Equal(t, "/v2/ep1/job-take/worker-1?gpu=TEST&job_in_progress=0", takes[0].URI)
	require.Equal(t, "/v2/ep1/job-stop/worker-1?gpu=TEST", runpodtest.Of(reqs, "job-stop")[0].URI)
	var heldPing bool
	for _, p := range runpodtest.Of(reqs, "ping") {
		switch p.URI {
		case "/v2/ep1/ping/worker-1?gpu=TEST&job_id=job-ok&runpod_version=" + version:
			heldPing = true
			require.True(t, p.At.Before(done.At), "the job is named only while held")
		case "/v2/ep1/ping/worker-1?gpu=TEST&runpod_version=" + version:
		default:
			t.Fatalf("unexpected ping %s", p.URI)
		}
	}
	require.True(t, heldPing, "a ping named the held job")
	for _, tk := range takes {
		if tk.At.After(done.At) {
			require.Equal(t, "/v2/ep1/job-take/worker-1?gpu=TEST&job_in_progress=0", tk.URI)
		}
	}

	rec := b.fleet.WaitStatus(t, serverless.FleetID("job-ok"), proto.StatusCompleted)
	require.Equal(t, proto.SourceRunPod, rec.Source)
	require.Equal(t, "gpu-a", rec.WorkerID)
}

func TestFailuresAreReportedAsErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.platform.AddJob(rpJob("job-err", runpodtest.Mock{Error: "bad thing"}))
	b.platform.AddJob(map[string]any{"id": "job-noinput", "input": map[string]any{"prompt": "x"}})
	b.platform.AddJob(map[string]any{"id": "job-bad"}) // no input: dropped, as the SDK drops it
	b.platform.AddJob(rpJob("job-after", runpodtest.Mock{}))
	require.JSONEq(t, `{"error":"bad thing (attempt 1)"}`, string(b.done(t, "job-err", 1)[0].Body))
	require.JSONEq(t, `{"error":"Missing 'workflow' parameter"}`, string(b.done(t, "job-noinput", 1)[0].Body))
	require.JSONEq(t, `{"output":{"images":[]}}`, string(b.done(t, "job-after", 1)[0].Body))
	for _, r := range runpodtest.Of(b.platform.Requests(), "job-done") {
		require.NotContains(t, r.URI, "job-bad")
	}
}

// TestJobTooLargeForTheFleetFails: a RunPod job whose message cannot fit
// in a NATS message ends FAILED with the reason (its size, the limit, what
// to do), once, instead of being submitted again and again; the next job
// runs.
func TestJobTooLargeForTheFleetFails(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	big := map[string]any{"workflow": map[string]any{"9": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"pad": strings.Repeat("x", 1200<<10)}}}}
	b.platform.AddJob(map[string]any{"id": "job-big", "input": big})
	b.platform.AddJob(rpJob("job-next", runpodtest.Mock{}))
	var body struct {
		Error string `json:"error"`
	}
	require.NoError(t, json.Unmarshal(b.done(t, "job-big", 1)[0].Body, &body))
	require.Regexp(t, `^the job message is \d+ bytes, more than the \d+ bytes a NATS message may carry`, body.Error)
	require.Contains(t, body.Error, "raise max_payload on the NATS server")
	require.JSONEq(t, `{"output":{"images":[]}}`, string(b.done(t, "job-next", 1)[0].Body))
	require.Len(t, b.done(t, "job-big", 1), 1, "reported once")
	_, err := b.fleet.DB.Get(context.Background(), serverless.FleetID("job-big"))
	require.ErrorIs(t, err, rdb.ErrNotFound, "nothing reached the fleet")
}

func TestProgressIsStreamedBeforeTheResult(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.platform.AddJob(rpJob("job-p", runpodtest.Mock{Progress: 3, DelayMS: 100}))
	done := b.done(t, "job-p", 1)[0]
	chunks := runpodtest.Of(b.platform.Requests(), "job-stream")
	require.Len(t, chunks, 3)
	for i, c := range chunks {
		requireWorkerHeaders(t, c)
		require.Equal(t, "/v2/ep1/job-stream/worker-1/job-p?gpu=TEST&isStream=false", c.URI)
		var body struct {
			Output struct {
				Type  string `json:"type"`
				Value int    `json:"value"`
				Max   int    `json:"max"`
			} `json:"output"`
		}
		require.NoError(t, json.Unmarshal(c.Body, &body))
		require.Equal(t, "progress", body.Output.Type)
		require.Equal(t, i+1, body.Output.Value)
		require.Equal(t, 3, body.Output.Max)
		require.True(t, c.At.Before(done.At), "chunks come before the result")
	}
}

func TestStopCancelsTheFleetJobAndReportsNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.platform.AddJob(rpJob("aj-2", runpodtest.Mock{Hold: true}))
	b.fleet.WaitStatus(t, serverless.FleetID("aj-2"), proto.StatusInProgress)
	stopAt := time.Now()
	b.platform.StopJobs("aj-2", "not-held")
	b.fleet.WaitStatus(t, serverless.FleetID("aj-2"), proto.StatusCancelled)
	// Once the worker no longer names the job in its pings it has let go.
	b.platform.WaitFor(t, "a ping without the stopped job", func(reqs []runpodtest.Request) bool {
		pings := runpodtest.Of(reqs, "ping")
		return len(pings) > 0 && pings[len(pings)-1].At.After(stopAt) && !strings.Contains(pings[len(pings)-1].URI, "job_id")
	})
	b.platform.AddJob(rpJob("after-stop", runpodtest.Mock{}))
	b.done(t, "after-stop", 1)
	require.Empty(t, b.doneOf("aj-2"), "a stopped job is never reported")
}

func (b *bundle) doneOf(jobID string) []runpodtest.Request {
	var out []runpodtest.Request
	for _, r := range runpodtest.Of(b.platform.Requests(), "job-done") {
		if strings.Contains(r.URI, "/"+jobID+"?") {
			out = append(out, r)
		}
	}
	return out
}

func TestRefreshWorkerStopsAfterTheJob(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, func(c *serverless.Config) { c.RefreshWorker = true })
	b.platform.AddJob(rpJob("job-refresh", runpodtest.Mock{Return: json.RawMessage(`{"v":1}`)}))
	done := b.done(t, "job-refresh", 1)[0]
	require.JSONEq(t, `{"output":{"v":1},"stopPod":true}`, string(done.Body))
	select {
	case <-b.worker.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not end after its job")
	}
	for _, r := range b.platform.Requests() {
		if r.Kind() == "job-take" || r.Kind() == "job-take-batch" {
			require.False(t, r.At.After(done.At), "no take after the refresh: %s", r.URI)
		}
	}
}

func TestConcurrencyThree(t *testing.T) {
	t.Parallel()
	b := setup(t, 4, func(c *serverless.Config) { c.Concurrency = 3 },
		rpJob("aj-1", runpodtest.Mock{DelayMS: 600}),
		rpJob("aj-2", runpodtest.Mock{DelayMS: 2000}),
		rpJob("aj-3", runpodtest.Mock{DelayMS: 2000}),
		rpJob("aj-4", runpodtest.Mock{DelayMS: 100}))
	for _, id := range []string{"aj-1", "aj-2", "aj-3", "aj-4"} {
		b.done(t, id, 1)
	}
	reqs := b.platform.Requests()
	takes := append(runpodtest.Of(reqs, "job-take-batch"), runpodtest.Of(reqs, "job-take")...)
	first := takes[0]
	for _, tk := range takes {
		if tk.At.Before(first.At) {
			first = tk
		}
	}
	require.Equal(t, "/v2/ep1/job-take-batch/worker-1?gpu=TEST&batch_size=3&job_in_progress=0", first.URI)
	// aj-1 ends first: one free slot, two jobs held.
	var single bool
	for _, tk := range runpodtest.Of(reqs, "job-take") {
		if tk.URI == "/v2/ep1/job-take/worker-1?gpu=TEST&job_in_progress=1" {
			single = true
		}
	}
	require.True(t, single, "one free slot takes one job, saying jobs are in progress")
	var three bool
	for _, p := range runpodtest.Of(reqs, "ping") {
		require.LessOrEqual(t, strings.Count(p.URI, "%2C"), 2, "never more than three held: %s", p.URI)
		if p.URI == "/v2/ep1/ping/worker-1?gpu=TEST&job_id=aj-1%2Caj-2%2Caj-3&runpod_version="+version {
			three = true
		}
	}
	require.True(t, three, "a ping named the three held jobs, comma-joined")
	var inFlight int
	for _, w := range b.workers {
		inFlight += len(w.Jobs())
	}
	require.Equal(t, 4, inFlight)
}

// TestPlatformAnswering503Twice replays Appendix A's last transcript:
// templates without "?" (RunPod's own harness), $RUNPOD_POD_ID left in the
// take URL, and a result post retried after 2 and 3 (here 0.2 and 0.3)
// seconds until the platform takes it.
func TestPlatformAnswering503Twice(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, func(c *serverless.Config) {
		base := c.GetJobURL[:strings.Index(c.GetJobURL, "job-take")]
		c.GetJobURL = base + "job-take/$RUNPOD_POD_ID"
		c.PostOutputURL = base + "job-done/$RUNPOD_POD_ID/$ID"
		c.PostStreamURL = ""
		c.PingURL = ""
	})
	b.platform.FailDone("r-1", 503, 503)
	b.platform.AddJob(rpJob("r-1", runpodtest.Mock{Return: json.RawMessage(`"plain"`)}))
	reqs := b.platform.WaitFor(t, "three posts of r-1", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-done")) == 3
	})
	require.Equal(t, "/v2/ep1/job-take/$RUNPOD_POD_ID&job_in_progress=0", runpodtest.Of(reqs, "job-take")[0].URI)
	require.Equal(t, "/v2/ep1/job-stop/$RUNPOD_POD_ID", runpodtest.Of(reqs, "job-stop")[0].URI)
	posts := runpodtest.Of(reqs, "job-done")
	for i, p := range posts {
		requireWorkerHeaders(t, p)
		require.Equal(t, "/v2/ep1/job-done/worker-1/r-1&isStream=false", p.URI)
		require.JSONEq(t, `{"output":"plain"}`, string(p.Body))
		require.Equal(t, []int{503, 503, 200}[i], p.Code)
	}
	require.GreaterOrEqual(t, posts[1].At.Sub(posts[0].At), 200*time.Millisecond)
	require.GreaterOrEqual(t, posts[2].At.Sub(posts[1].At), 300*time.Millisecond)
	require.Empty(t, runpodtest.Of(reqs, "ping"), "no ping template, no pings")
}

func TestTakeAnswersTheSDKTolerates(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	p := b.platform
	p.AddAnswer(runpodtest.Answer{Code: http.StatusBadRequest})
	p.AddAnswer(runpodtest.Answer{Code: http.StatusOK, ContentType: "text/plain", Body: `{"id":"t-text","input":{}}`})
	p.AddAnswer(runpodtest.Answer{Code: http.StatusOK, ContentType: "application/json", Body: ``})
	p.AddAnswer(runpodtest.Answer{Code: http.StatusOK, ContentType: "application/json", Body: `[]`})
	p.AddAnswer(runpodtest.Answer{Code: http.StatusOK, ContentType: "application/json", Body: `not json`})
	p.AddAnswer(runpodtest.Answer{Code: http.StatusOK, ContentType: "application/json", Body: `{"id":"t-noinput"}`})
	p.AddAnswer(runpodtest.Answer{Code: http.StatusInternalServerError})
	p.AddAnswer(runpodtest.Answer{Code: http.StatusTooManyRequests})
	job, _ := json.Marshal(rpJob("t-good", runpodtest.Mock{}))
	p.AddAnswer(runpodtest.Answer{Code: http.StatusOK, ContentType: "application/json; charset=utf-8", Body: string(job)})
	b.done(t, "t-good", 1)
	reqs := p.Requests()
	takes := runpodtest.Of(reqs, "job-take")
	require.GreaterOrEqual(t, len(takes), 9)
	// After the 429, the worker waited ThrottleWait before asking again.
	for i, r := range takes {
		if r.Code == http.StatusTooManyRequests {
			require.GreaterOrEqual(t, takes[i+1].At.Sub(r.At), 400*time.Millisecond)
		}
	}
	for _, r := range runpodtest.Of(reqs, "job-done") {
		require.NotContains(t, r.URI, "t-text")
		require.NotContains(t, r.URI, "t-noinput")
	}
}

// TestJobHandedOutTwiceRunsOnce: RunPod gives a job to a second worker
// when the first is lost; both map to one fleet job, which runs once.
func TestJobHandedOutTwiceRunsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.platform.AddJob(rpJob("twice", runpodtest.Mock{Return: json.RawMessage(`{"n":1}`)}))
	first := b.done(t, "twice", 1)[0]
	b.platform.AddJob(rpJob("twice", runpodtest.Mock{Return: json.RawMessage(`{"n":1}`)}))
	second := b.done(t, "twice", 2)[1]
	require.JSONEq(t, string(first.Body), string(second.Body))
	require.Len(t, b.workers[0].Jobs(), 1, "the fleet ran it once")
}

func TestFleetID(t *testing.T) {
	t.Parallel()
	require.Equal(t, "runpod-c80ffee4-1234-u1", serverless.FleetID("c80ffee4-1234-u1"))
	require.Equal(t, "runpod-sync-abc", serverless.FleetID("sync-abc"))
	a := serverless.FleetID("weird id/with.dots")
	require.NoError(t, proto.ValidID(a))
	require.Equal(t, a, serverless.FleetID("weird id/with.dots"), "stable")
	require.NotEqual(t, a, serverless.FleetID("weird id/with.dot"))
	require.NoError(t, proto.ValidID(serverless.FleetID(strings.Repeat("x", 200))), "too long for a fleet id: hashed")
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	require.ErrorContains(t, serverless.Config{}.Validate(), "RUNPOD_WEBHOOK_GET_JOB")
	require.ErrorContains(t, serverless.Config{GetJobURL: "x"}.Validate(), "RUNPOD_WEBHOOK_POST_OUTPUT")
	require.NoError(t, serverless.Config{GetJobURL: "x", PostOutputURL: "y"}.Validate())
}
