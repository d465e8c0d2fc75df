package runpod_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/proto"
)

// endpoints is the map of these tests: two RunPod endpoints, two pools.
var endpoints = runpod.Endpoints{"sdxl": "pool-sdxl", "flux": "pool-flux"}

// startPools serves the API with endpoints over a fleet; workers are
// started by the test.
func startPools(t *testing.T) *stack {
	t.Helper()
	return startStack(t, runpod.Config{Endpoints: endpoints}, 1, 0)
}

// runOn submits through /v2/{endpoint}/run and returns the job id.
func (s *stack) runOn(t *testing.T, endpoint string, m runpodtest.Mock) string {
	t.Helper()
	code, out := s.call(t, 0, "POST", "/v2/"+endpoint+"/run", `{"input":`+string(runpodtest.Input(m))+`}`)
	require.Equal(t, http.StatusOK, code, "%v", out)
	return out["id"].(string)
}

// TestEndpointJobsRunOnTheirPoolOnly: with a worker of each pool idle, a
// job through /v2/sdxl/run runs on pool-sdxl's worker and never on
// pool-flux's, and the other way round.
func TestEndpointJobsRunOnTheirPoolOnly(t *testing.T) {
	t.Parallel()
	s := startPools(t)
	wSDXL := s.fleet.StartPoolWorker(t, "w-sdxl", "pool-sdxl")
	wFlux := s.fleet.StartPoolWorker(t, "w-flux", "pool-flux")
	for range 4 {
		for endpoint, worker := range map[string]string{"sdxl": "w-sdxl", "flux": "w-flux"} {
			code, out := s.call(t, 0, "POST", "/v2/"+endpoint+"/runsync?wait=20000", `{"input":`+string(runpodtest.Input(runpodtest.Mock{}))+`}`)
			require.Equal(t, http.StatusOK, code, "%v", out)
			require.Equal(t, "COMPLETED", out["status"], "%v", out)
			require.Equal(t, worker, out["workerId"], "a job of /v2/%s", endpoint)
			rec, err := s.fleet.DB.Get(context.Background(), out["id"].(string))
			require.NoError(t, err)
			require.Equal(t, endpoints[endpoint], rec.Pool)
		}
	}
	for _, j := range wSDXL.Jobs() {
		require.Equal(t, "pool-sdxl", j.Pool)
	}
	for _, j := range wFlux.Jobs() {
		require.Equal(t, "pool-flux", j.Pool)
	}
	require.Len(t, wSDXL.Jobs(), 4)
	require.Len(t, wFlux.Jobs(), 4)
}

// TestEndpointOwnsItsJobs: a job id belongs to its endpoint, as at
// RunPod: /v2/sdxl/… of a job submitted to /v2/flux is 404 on every
// route that names a job, and changes nothing; its own endpoint and the
// bare routes (the whole fleet's view) find it.
func TestEndpointOwnsItsJobs(t *testing.T) {
	t.Parallel()
	s := startPools(t)
	id := s.runOn(t, "flux", runpodtest.Mock{Error: "boom"})
	s.fleet.WaitStatus(t, id, proto.StatusInQueue)
	for _, r := range []struct{ method, path string }{
		{"GET", "/v2/sdxl/status/" + id}, {"POST", "/v2/sdxl/status/" + id},
		{"GET", "/v2/sdxl/status-sync/" + id + "?wait=1000"},
		{"GET", "/v2/sdxl/stream/" + id + "?wait=10"},
		{"POST", "/v2/sdxl/cancel/" + id}, {"POST", "/v2/sdxl/retry/" + id},
		{"GET", "/v2/sdxl/files/" + id + "/x.png"},
	} {
		code, out := s.call(t, 0, r.method, r.path, "")
		require.Equal(t, http.StatusNotFound, code, "%s %s: %v", r.method, r.path, out)
		require.Equal(t, "job "+id+" not found (unknown, or its result expired)", out["error"])
	}
	for _, path := range []string{"/v2/flux/status/" + id, "/status/" + id} {
		code, out := s.call(t, 0, "GET", path, "")
		require.Equal(t, http.StatusOK, code, "%s: %v", path, out)
		require.Equal(t, "IN_QUEUE", out["status"], "the cancel through sdxl changed nothing")
	}
	// Its own endpoint runs it, retries it and cancels it.
	s.fleet.StartPoolWorker(t, "w-flux", "pool-flux")
	s.fleet.WaitStatus(t, id, proto.StatusFailed)
	code, out := s.call(t, 0, "POST", "/v2/flux/retry/"+id, "")
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "IN_QUEUE", out["status"])
	s.fleet.WaitStatus(t, id, proto.StatusFailed)
	// The pool's counters have the failures and the retry; the other's none.
	require.Equal(t, runpod.HealthJobs{Failed: 2, Retried: 1}, s.health(t, "flux").Jobs)
	require.Equal(t, runpod.HealthJobs{}, s.health(t, "sdxl").Jobs)
}

// TestUnknownEndpointIs404: with ENDPOINTS, an id it does not map is 404
// on every route, as RunPod answers a bad endpoint, and queues nothing.
func TestUnknownEndpointIs404(t *testing.T) {
	t.Parallel()
	s := startPools(t)
	input := `{"input":` + string(runpodtest.Input(runpodtest.Mock{})) + `}`
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/v2/nope/run", input}, {"POST", "/v2/nope/runsync", input},
		{"GET", "/v2/nope/status/j1", ""}, {"POST", "/v2/nope/status-sync/j1", ""},
		{"GET", "/v2/nope/stream/j1", ""}, {"POST", "/v2/nope/cancel/j1", ""},
		{"POST", "/v2/nope/retry/j1", ""}, {"POST", "/v2/nope/purge-queue", ""},
		{"GET", "/v2/nope/health", ""}, {"GET", "/v2/nope/files/j1/a.png", ""},
		{"GET", "/v2/pool-sdxl/health", ""}, // a pool is not an endpoint id
	} {
		code, out := s.call(t, 0, r.method, r.path, r.body)
		require.Equal(t, http.StatusNotFound, code, "%s %s: %v", r.method, r.path, out)
		require.Regexp(t, `^no such endpoint: (nope|pool-sdxl)$`, out["error"], r.path)
	}
	require.Empty(t, s.queuedIDs(t), "nothing was queued")
}

// healthOf reads /v2/{endpoint}/health (or the bare /health for "").
func (s *stack) healthOf(endpoint string) (runpod.HealthView, error) {
	path := "/health"
	if endpoint != "" {
		path = "/v2/" + endpoint + "/health"
	}
	var v runpod.HealthView
	resp, err := http.Get(s.urls[0] + path)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET %s answered %s", path, resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

func (s *stack) health(t *testing.T, endpoint string) runpod.HealthView {
	t.Helper()
	v, err := s.healthOf(endpoint)
	require.NoError(t, err)
	return v
}

// TestHealthCountsTheEndpointsPool: /v2/{id}/health counts the jobs and
// workers of id's pool alone (a worker serves a pool as its first one or
// one of its more pools); the bare /health counts the fleet.
func TestHealthCountsTheEndpointsPool(t *testing.T) {
	t.Parallel()
	s := startPools(t)
	s.fleet.StartPoolWorker(t, "w-sdxl", "pool-sdxl")
	for _, m := range []runpodtest.Mock{{}, {}, {Error: "boom"}} {
		code, out := s.call(t, 0, "POST", "/v2/sdxl/runsync?wait=20000", `{"input":`+string(runpodtest.Input(m))+`}`)
		require.Equal(t, http.StatusOK, code, "%v", out)
		require.True(t, proto.Status(out["status"].(string)).Terminal(), "%v", out)
	}
	// pool-flux has no worker that takes jobs: its jobs wait.
	for range 2 {
		s.fleet.WaitStatus(t, s.runOn(t, "flux", runpodtest.Mock{}), proto.StatusInQueue)
	}
	ctx := context.Background()
	require.NoError(t, s.fleet.DB.Beat(ctx, proto.Heartbeat{ID: "w-flux", Pool: "pool-flux", State: proto.WorkerRunning}))
	require.NoError(t, s.fleet.DB.Beat(ctx, proto.Heartbeat{ID: "w-both", Pool: "other", MorePools: []string{"pool-flux"}, State: proto.WorkerIdle}))
	require.NoError(t, s.fleet.DB.Beat(ctx, proto.Heartbeat{ID: "w-other", Pool: "other", State: proto.WorkerUnhealthy}))

	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		flux, err := s.healthOf("flux")
		assert.NoError(c, err)
		assert.Equal(c, runpod.HealthJobs{InQueue: 2}, flux.Jobs, "admitted to pool-flux's lanes")
	}, 10*time.Second, 20*time.Millisecond)
	flux := s.health(t, "flux")
	require.Equal(t, map[string]int{"idle": 1, "initializing": 0, "ready": 2, "running": 1, "throttled": 0, "unhealthy": 0}, flux.Workers)

	sdxl := s.health(t, "sdxl")
	require.Equal(t, runpod.HealthJobs{Completed: 2, Failed: 1}, sdxl.Jobs)
	require.Equal(t, map[string]int{"idle": 1, "initializing": 0, "ready": 1, "running": 0, "throttled": 0, "unhealthy": 0}, sdxl.Workers)

	all := s.health(t, "")
	require.Equal(t, runpod.HealthJobs{Completed: 2, Failed: 1, InQueue: 2}, all.Jobs)
	require.Equal(t, 4, all.Workers["idle"]+all.Workers["running"]+all.Workers["unhealthy"], "%v", all.Workers)
}

// TestPurgeQueuePurgesTheEndpointsPool: /v2/sdxl/purge-queue cancels the
// queued jobs of pool-sdxl alone; pool-flux's queued jobs survive, in
// their records and in the stream; the bare route purges every pool.
func TestPurgeQueuePurgesTheEndpointsPool(t *testing.T) {
	t.Parallel()
	s := startPools(t)
	var sdxl, flux []string
	for range 2 {
		sdxl = append(sdxl, s.runOn(t, "sdxl", runpodtest.Mock{}))
		flux = append(flux, s.runOn(t, "flux", runpodtest.Mock{}))
	}
	for _, id := range append(sdxl, flux...) {
		s.fleet.WaitStatus(t, id, proto.StatusInQueue)
	}
	// Admitted, every one: a purge races an admission in flight (the job
	// is cancelled, but its message may reach the lane after the purge).
	msgs := func(name string) uint64 {
		st, err := s.fleet.NATS.JS.Stream(context.Background(), name)
		if err != nil {
			return 0
		}
		info, err := st.Info(context.Background())
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}
	require.Eventually(t, func() bool { return msgs(proto.SubmitStream) == 0 && msgs(proto.JobsStream) == 4 },
		10*time.Second, 10*time.Millisecond, "the jobs reach their pools' lanes")
	code, out := s.call(t, 0, "POST", "/v2/sdxl/purge-queue", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, map[string]any{"removed": float64(2), "status": "completed"}, out)
	for _, id := range sdxl {
		s.fleet.WaitStatus(t, id, proto.StatusCancelled)
	}
	left := s.queuedIDs(t)
	for _, id := range flux {
		s.fleet.WaitStatus(t, id, proto.StatusInQueue)
		require.Contains(t, left, id, "pool-flux's job is still queued")
	}
	for _, id := range sdxl {
		require.NotContains(t, left, id)
	}
	code, out = s.call(t, 0, "POST", "/v2/sdxl/purge-queue", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, float64(0), out["removed"])

	code, out = s.call(t, 0, "POST", "/purge-queue", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, float64(2), out["removed"], "the bare route covers every pool")
	for _, id := range flux {
		s.fleet.WaitStatus(t, id, proto.StatusCancelled)
	}
}

// TestWithoutEndpointsEveryIDIsThePool: without ENDPOINTS every endpoint
// id is Pool and scopes nothing, as before the setting.
func TestWithoutEndpointsEveryIDIsThePool(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 1)
	code, out := s.call(t, 0, "POST", "/v2/any-id/runsync?wait=20000", `{"input":`+string(runpodtest.Input(runpodtest.Mock{}))+`}`)
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
	id := out["id"].(string)
	rec, err := s.fleet.DB.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, proto.DefaultPool, rec.Pool)
	code, out = s.call(t, 0, "GET", "/v2/another-id/status/"+id, "")
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "COMPLETED", out["status"])
	require.Equal(t, s.health(t, ""), s.health(t, "whatever"), "every id's health is the fleet's")
	queued := s.runOnBare(t)
	s.fleet.WaitStatus(t, queued, proto.StatusCompleted)
}

// runOnBare submits through the bare /run.
func (s *stack) runOnBare(t *testing.T) string {
	t.Helper()
	code, out := s.call(t, 0, "POST", "/run", `{"input":`+string(runpodtest.Input(runpodtest.Mock{}))+`}`)
	require.Equal(t, http.StatusOK, code, "%v", out)
	return out["id"].(string)
}

// TestBareRoutesUseThePool: with ENDPOINTS, the bare /run queues into
// Pool, and an endpoint whose pool is another does not see the job.
func TestBareRoutesUseThePool(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{Endpoints: endpoints, Pool: "pool-flux"}, 1, 0)
	id := s.runOnBare(t)
	rec := s.fleet.WaitStatus(t, id, proto.StatusInQueue)
	require.Equal(t, "pool-flux", rec.Pool)
	code, _ := s.call(t, 0, "GET", "/v2/flux/status/"+id, "")
	require.Equal(t, http.StatusOK, code)
	code, _ = s.call(t, 0, "GET", "/v2/sdxl/status/"+id, "")
	require.Equal(t, http.StatusNotFound, code)
}
