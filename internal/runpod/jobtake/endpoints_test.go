package jobtake_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/jobtake"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/proto"
)

// onEndpoint points a mock worker's templates at another endpoint id
// than ep1.
func onEndpoint(endpoint string) func(*runpodtest.MockWorkerConfig) {
	return func(c *runpodtest.MockWorkerConfig) {
		for _, s := range []*string{&c.GetJob, &c.PostOutput, &c.PostStream, &c.Ping} {
			*s = strings.Replace(*s, "/v2/ep1/", "/v2/"+endpoint+"/", 1)
		}
	}
}

// TestJobTakeServesTheEndpointsPool: with ENDPOINTS, a RunPod worker that
// takes from /v2/{id}/job-take gets the jobs of id's pool alone (a worker
// of each endpoint, both idle), and is announced in that pool, so
// /v2/{id}/health counts it there; an id not mapped is 404 on every
// job-take route.
func TestJobTakeServesTheEndpointsPool(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, func(c *jobtake.Config) {
		c.Endpoints = runpod.Endpoints{"ep1": "pool-a", "ep2": "pool-b"}
	})
	b.worker(t, "worker-a", nil)
	b.worker(t, "worker-b", onEndpoint("ep2"))
	jobs := map[string]string{} // job id -> the worker that must run it
	for i := range 3 {
		for endpoint, worker := range map[string]string{"ep1": "worker-a", "ep2": "worker-b"} {
			code, out := b.call(t, "POST", "/v2/"+endpoint+"/run", fmt.Sprintf(`{"input":{"workflow":{"9":{"class_type":"SaveImage","inputs":{}}},"mock_return":%d}}`, i))
			require.Equal(t, http.StatusOK, code, "%v", out)
			jobs[out["id"].(string)] = worker
		}
	}
	for id, worker := range jobs {
		rec := b.fleet.WaitStatus(t, id, proto.StatusCompleted)
		require.Equal(t, worker, rec.WorkerID, "job %s of pool %s", id, rec.Pool)
	}
	for endpoint, worker := range map[string]string{"ep1": "worker-a", "ep2": "worker-b"} {
		_, health := b.call(t, "GET", "/v2/"+endpoint+"/health", "")
		workers := health["workers"].(map[string]any)
		require.Equal(t, float64(1), workers["ready"], "%s: %v", worker, workers)
		require.Equal(t, float64(3), health["jobs"].(map[string]any)["completed"], endpoint)
	}
	ws, err := b.fleet.DB.Workers(context.Background())
	require.NoError(t, err)
	for _, w := range ws {
		require.Equal(t, map[string]string{"worker-a": "pool-a", "worker-b": "pool-b"}[w.ID], w.Pool, w.ID)
	}

	for _, r := range []struct{ method, path string }{
		{"GET", "/v2/nope/job-take/w1?gpu=TEST"}, {"GET", "/v2/nope/job-take-batch/w1?batch_size=2"},
		{"GET", "/v2/nope/job-stop/w1"}, {"POST", "/v2/nope/job-done/w1/j1"},
		{"POST", "/v2/nope/job-stream/w1/j1"}, {"GET", "/v2/nope/ping/w1"},
	} {
		req, err := http.NewRequest(r.method, b.url+r.path, strings.NewReader("{}"))
		require.NoError(t, err)
		req.Header.Set("Authorization", workerKey)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusNotFound, resp.StatusCode, r.path)
	}
}

// TestJobTakeWithoutEndpointsTakesThePool: unset, every endpoint id takes
// from Pool, as before.
func TestJobTakeWithoutEndpointsTakesThePool(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	b.worker(t, "worker-x", onEndpoint("some-other-id"))
	id := b.run(t, `"mock_return":"ok"`)
	out := b.final(t, id)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
	require.Equal(t, "worker-x", out["workerId"])
	rec, err := b.fleet.DB.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, proto.DefaultPool, rec.Pool)
}
