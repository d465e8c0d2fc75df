package runpod_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/proto"
)

// stack is the API in front of a whole fleet (admission, scripted
// worker), served by one or more replicas.
type stack struct {
	fleet   *runpodtest.Fleet
	urls    []string // one per replica
	workers []*runpodtest.FleetWorker
}

// startStack serves `replicas` API replicas, each on its own NATS
// connection, over one fleet; workers FleetWorkers take the jobs.
func startStack(t *testing.T, cfg runpod.Config, replicas, workers int) *stack {
	t.Helper()
	return startStackLogging(t, cfg, replicas, workers, zaptest.NewLogger(t))
}

func startStackLogging(t *testing.T, cfg runpod.Config, replicas, workers int, log *zap.Logger) *stack {
	t.Helper()
	f := runpodtest.StartFleet(t)
	s := &stack{fleet: f}
	for range replicas {
		q, core := f.ReplicaCore(t)
		api := runpod.NewAPI(cfg, runpod.Deps{Queue: q, Core: core, DB: f.DB, Blobs: q.Blobs(), Logger: log})
		srv := httptest.NewServer(api)
		t.Cleanup(srv.Close)
		s.urls = append(s.urls, srv.URL)
	}
	for i := range workers {
		s.workers = append(s.workers, f.StartWorker(t, "fw-"+string(rune('a'+i))))
	}
	return s
}

// call makes one request to replica i and decodes the JSON answer.
func (s *stack) call(t *testing.T, i int, method, path, body string, header ...string) (int, map[string]any) {
	t.Helper()
	code, data := s.raw(t, i, method, path, body, header...)
	var out map[string]any
	require.NoError(t, json.Unmarshal(data, &out), "%s %s answered %s", method, path, data)
	return code, out
}

func (s *stack) raw(t *testing.T, i int, method, path, body string, header ...string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.urls[i]+path, rd)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for j := 0; j+1 < len(header); j += 2 {
		req.Header.Set(header[j], header[j+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"), "%s %s", method, path)
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, data
}

// run submits input through /run and returns the job id.
func (s *stack) run(t *testing.T, input json.RawMessage) string {
	t.Helper()
	code, out := s.call(t, 0, "POST", "/v2/ep/run", `{"input":`+string(input)+`}`)
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "IN_QUEUE", out["status"])
	return out["id"].(string)
}

func TestRunSyncCompletesWithInlineOutput(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 1)
	png := "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
	code, out := s.call(t, 0, "POST", "/v2/ep/runsync?wait=20000", `{"input":`+string(runpodtest.Input(runpodtest.Mock{Image: png}))+`}`)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
	require.True(t, strings.HasPrefix(out["id"].(string), "sync-"))
	require.Equal(t, "fw-a", out["workerId"])
	require.Contains(t, out, "delayTime")
	images := out["output"].(map[string]any)["images"].([]any)
	require.Len(t, images, 1)
	item := images[0].(map[string]any)
	require.Equal(t, png, item["data"], "the bytes come back inline from the blob store")
	require.Equal(t, "base64", item["type"])
	require.NotContains(t, item, "blob", "the blob key is ours, not the client's")
}

func TestOutputBeyondTheInlineCapSaysSo(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 1)
	code, out := s.call(t, 0, "POST", "/runsync", `{"input":`+string(runpodtest.Input(runpodtest.Mock{Image: "AAAA", ImageSize: 30 << 20}))+`}`)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
	output := out["output"].(map[string]any)
	require.Empty(t, output["images"].([]any)[0].(map[string]any)["data"])
	require.Contains(t, output["errors"].([]any)[0], "too large to return inline within the 20 MB result limit; configure S3")
}

func TestFailedJobIsA200WithAStringError(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 1)
	code, out := s.call(t, 0, "POST", "/runsync", `{"input":`+string(runpodtest.Input(runpodtest.Mock{Error: "node 3 exploded"}))+`}`)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "FAILED", out["status"])
	require.Equal(t, "node 3 exploded (attempt 1)", out["error"])
}

func TestStatusSyncWaitsForTheEnd(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 1)
	for _, method := range []string{"GET", "POST"} {
		id := s.run(t, runpodtest.Input(runpodtest.Mock{DelayMS: 300, Return: json.RawMessage(`{"v":1}`)}))
		code, out := s.call(t, 0, method, "/v2/ep/status-sync/"+id+"?wait=20000", "")
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "COMPLETED", out["status"], "%s: %v", method, out)
		require.Equal(t, map[string]any{"v": float64(1)}, out["output"])
	}
}

func TestSyncCallsAnswerTheInFlightViewAfterTheirWait(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 1)
	id := s.run(t, runpodtest.Input(runpodtest.Mock{Hold: true, Progress: 1}))
	s.fleet.WaitStatus(t, id, proto.StatusInProgress)
	for _, path := range []string{"/status-sync/" + id + "?wait=1000", "/status-sync/" + id + "?wait=10"} {
		start := time.Now()
		code, out := s.call(t, 0, "GET", path, "")
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "IN_PROGRESS", out["status"])
		require.GreaterOrEqual(t, time.Since(start), time.Second, "wait is clamped to at least 1 s")
		require.Equal(t, "fw-a", out["workerId"])
	}
	code, out := s.call(t, 0, "GET", "/status-sync/nope?wait=1000", "")
	require.Equal(t, http.StatusNotFound, code)
	require.Contains(t, out["error"], "job nope not found")
	code, _ = s.call(t, 0, "POST", "/cancel/"+id, "")
	require.Equal(t, http.StatusOK, code)
}

func TestInProgressStatusShowsTheLatestProgress(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 1)
	id := s.run(t, runpodtest.Input(runpodtest.Mock{Hold: true, Progress: 2, DelayMS: 10}))
	require.Eventually(t, func() bool {
		_, out := s.call(t, 0, "GET", "/status/"+id, "")
		p, ok := out["output"].(map[string]any)
		return out["status"] == "IN_PROGRESS" && ok && p["value"] == float64(2)
	}, 10*time.Second, 20*time.Millisecond)
	_, out := s.call(t, 0, "GET", "/status/"+id, "")
	require.Equal(t, map[string]any{"type": "progress", "node": "3", "value": float64(2), "max": float64(2), "percent": float64(100)}, out["output"])
	s.call(t, 0, "POST", "/cancel/"+id, "")
}

func TestStreamDrainsAcrossReplicas(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 2, 1)
	id := s.run(t, runpodtest.Input(runpodtest.Mock{Progress: 6, DelayMS: 60}))
	var values []float64
	var last string
	for i := 0; ; i++ {
		require.Less(t, i, 200, "the stream never ended")
		method := []string{"GET", "POST"}[i%2]
		code, out := s.call(t, i%2, method, "/v2/ep/stream/"+id, "")
		require.Equal(t, http.StatusOK, code)
		stream, ok := out["stream"].([]any)
		require.True(t, ok, "every answer carries a stream array: %v", out)
		for _, el := range stream {
			chunk := el.(map[string]any)["output"].(map[string]any)
			require.Equal(t, "progress", chunk["type"])
			values = append(values, chunk["value"].(float64))
		}
		last = out["status"].(string)
		if proto.Status(last).Terminal() {
			break
		}
	}
	require.Equal(t, "COMPLETED", last)
	require.Equal(t, []float64{1, 2, 3, 4, 5, 6}, values, "every chunk once, in order, whichever replica answered")

	code, out := s.call(t, 1, "GET", "/stream/"+id, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "COMPLETED", out["status"])
	require.Equal(t, []any{}, out["stream"], "a drained stream stays empty")
}

func TestStreamLongPollsUntilSomethingHappens(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 1)
	id := s.run(t, runpodtest.Input(runpodtest.Mock{Hold: true}))
	s.fleet.WaitStatus(t, id, proto.StatusInProgress)
	start := time.Now()
	code, out := s.call(t, 0, "POST", "/stream/"+id+"?wait=700", "")
	require.Equal(t, http.StatusOK, code)
	require.GreaterOrEqual(t, time.Since(start), 700*time.Millisecond, "held for ?wait while nothing happened")
	require.Equal(t, "IN_PROGRESS", out["status"])
	require.Equal(t, []any{}, out["stream"])

	// A cancel during the hold ends it at once with the terminal status.
	done := make(chan map[string]any, 1)
	go func() {
		_, out := s.call(t, 0, "GET", "/stream/"+id+"?wait=60000", "")
		done <- out
	}()
	code, _ = s.call(t, 0, "POST", "/cancel/"+id, "")
	require.Equal(t, http.StatusOK, code)
	select {
	case out = <-done:
		require.Equal(t, "CANCELLED", out["status"])
	case <-time.After(20 * time.Second):
		t.Fatal("the held /stream did not see the cancel")
	}
	code, out = s.call(t, 0, "GET", "/stream/unknown-job", "")
	require.Equal(t, http.StatusNotFound, code, "%v", out)
}

func TestCancel(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 2, 0)
	// Queued (no worker runs): it never starts.
	queued := s.run(t, runpodtest.Input(runpodtest.Mock{}))
	for i, body := range []string{"", "{}"} {
		code, out := s.call(t, i, "POST", "/v2/ep/cancel/"+queued, body)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, map[string]any{"id": queued, "status": "CANCELLED"}, out)
	}
	code, out := s.call(t, 1, "GET", "/status/"+queued, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "CANCELLED", out["status"])
	w := s.fleet.StartWorker(t, "late")
	done := s.run(t, runpodtest.Input(runpodtest.Mock{}))
	s.fleet.WaitStatus(t, done, proto.StatusCompleted)
	for _, j := range w.Jobs() {
		if j.ID == queued {
			s.fleet.WaitStatus(t, queued, proto.StatusCancelled) // claimed, found cancelled, dropped
		}
	}

	// Running: the worker is told and stops.
	running := s.run(t, runpodtest.Input(runpodtest.Mock{Hold: true}))
	s.fleet.WaitStatus(t, running, proto.StatusInProgress)
	code, out = s.call(t, 0, "POST", "/cancel/"+running, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "CANCELLED", out["status"])
	s.fleet.WaitStatus(t, running, proto.StatusCancelled)

	// Finished: the answer keeps the real status.
	code, out = s.call(t, 0, "POST", "/cancel/"+done, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "COMPLETED", out["status"])

	code, out = s.call(t, 0, "POST", "/cancel/no-such-job", "")
	require.Equal(t, http.StatusNotFound, code, "%v", out)
}

func TestRetryRunsTheSameInputUnderTheSameID(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 2, 1)
	in := runpodtest.Input(runpodtest.Mock{FailAttempts: 1, Return: json.RawMessage(`{"ok":true}`)})
	code, out := s.call(t, 0, "POST", "/runsync", `{"input":`+string(in)+`,"s3Config":{"accessId":"AK","accessSecret":"SEKRIT","bucketName":"b","endpointUrl":"https://s3.example"}}`)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "FAILED", out["status"], "%v", out)
	id := out["id"].(string)

	// Within the queue's dedupe window, on the other replica.
	code, out = s.call(t, 1, "POST", "/v2/ep/retry/"+id, "")
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, map[string]any{"id": id, "status": "IN_QUEUE"}, out)
	code, out = s.call(t, 0, "GET", "/status-sync/"+id+"?wait=20000", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
	require.Equal(t, map[string]any{"ok": true}, out["output"])
	require.Equal(t, float64(1), out["retries"])
	require.NotContains(t, out, "error", "the old error is cleared")

	rec := s.fleet.WaitStatus(t, id, proto.StatusCompleted)
	require.Equal(t, 2, rec.Attempt)
	var jobs []*proto.Job
	for _, j := range s.fleetWorkerJobs() {
		if j.ID == id {
			jobs = append(jobs, j)
		}
	}
	require.Len(t, jobs, 2)
	require.JSONEq(t, string(jobs[0].Input), string(jobs[1].Input), "the same input")
	require.Equal(t, "SEKRIT", jobs[1].S3Config.AccessSecret, "s3Config reaches the worker again")

	code, out = s.call(t, 0, "POST", "/retry/"+id, "{}")
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, out["error"], "is COMPLETED; only FAILED or TIMED_OUT jobs can be retried")
	code, _ = s.call(t, 0, "POST", "/retry/never-was", "")
	require.Equal(t, http.StatusNotFound, code)
}

// fleetWorkerJobs is every job message the stack's first worker received.
func (s *stack) fleetWorkerJobs() []*proto.Job { return s.workers[0].Jobs() }

func TestPurgeQueueCancelsOnlyQueuedAPIJobs(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 0)
	var queued []string
	for range 3 {
		queued = append(queued, s.run(t, runpodtest.Input(runpodtest.Mock{})))
	}
	// A job in progress (claimed by hand) and a batch job stay.
	running := s.run(t, runpodtest.Input(runpodtest.Mock{}))
	for _, id := range append(queued, running) {
		s.fleet.WaitStatus(t, id, proto.StatusInQueue)
	}
	ctx := context.Background()
	_, err := s.fleet.DB.Claim(ctx, rdb.ClaimParams{ID: running, WorkerID: "someone", LeaseTTL: time.Hour})
	require.NoError(t, err)
	batch := &proto.Job{ID: "batch-1", Input: runpodtest.Input(runpodtest.Mock{})}
	_, err = s.fleet.Queue.Submit(ctx, proto.SourceBatch, batch)
	require.NoError(t, err)
	s.fleet.WaitStatus(t, "batch-1", proto.StatusInQueue)

	for _, body := range []string{"", "{}"} {
		code, out := s.call(t, 0, "POST", "/v2/ep/purge-queue", body)
		require.Equal(t, http.StatusOK, code)
		want := 3
		if body != "" {
			want = 0 // the second purge finds nothing left
		}
		require.Equal(t, map[string]any{"removed": float64(want), "status": "completed"}, out)
	}
	for _, id := range queued {
		s.fleet.WaitStatus(t, id, proto.StatusCancelled)
	}
	s.fleet.WaitStatus(t, running, proto.StatusInProgress)
	s.fleet.WaitStatus(t, "batch-1", proto.StatusInQueue)
	// The purged jobs' messages left the streams, so /health's depth is true.
	left := s.queuedIDs(t)
	for _, id := range queued {
		require.NotContains(t, left, id)
	}
	require.Contains(t, left, "batch-1")
}

// queuedIDs lists the job ids of every message in the work-queue streams.
func (s *stack) queuedIDs(t *testing.T) []string {
	t.Helper()
	var ids []string
	for _, name := range []string{proto.SubmitStream, proto.JobsStream} {
		st, err := s.fleet.NATS.JS.Stream(context.Background(), name)
		require.NoError(t, err)
		info, err := st.Info(context.Background())
		require.NoError(t, err)
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
			m, err := st.GetMsg(context.Background(), seq)
			if err != nil {
				continue // deleted
			}
			var j struct{ ID string }
			require.NoError(t, json.Unmarshal(m.Data, &j))
			ids = append(ids, j.ID)
		}
	}
	return ids
}
