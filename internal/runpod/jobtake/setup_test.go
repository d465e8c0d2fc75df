package jobtake_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod/jobtake"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
)

// bundle is a fleet whose adapter replicas serve the endpoint API and the
// job-take host on one listener each, behind one front (a recorder, and a
// round-robin balancer when there are several replicas).
type bundle struct {
	api   *runpodtest.Adapter
	fleet *runpodtest.Fleet
	url   string
	rec   *runpodtest.Recorder
	hosts []*jobtake.Host
}

const workerKey = runpodtest.WorkerKey

func setup(t *testing.T, replicas int, edit func(*jobtake.Config)) *bundle {
	t.Helper()
	cfg := jobtake.Config{TakeHold: 400 * time.Millisecond, StopHold: 400 * time.Millisecond, LeaseTimeout: 1500 * time.Millisecond,
		RefusalDelay: 300 * time.Millisecond}
	if edit != nil {
		edit(&cfg)
	}
	a := runpodtest.StartAdapter(t, replicas, cfg)
	return &bundle{api: a, fleet: a.Fleet, url: a.URL, rec: a.Rec, hosts: a.Hosts}
}

// worker starts a mock RunPod worker against the bundle, with the
// production templates (a "?gpu=TEST" query).
func (b *bundle) worker(t *testing.T, id string, edit func(*runpodtest.MockWorkerConfig)) *runpodtest.MockWorker {
	t.Helper()
	base := b.url + "/v2/ep1/"
	cfg := runpodtest.MockWorkerConfig{
		GetJob: base + "job-take/$ID?gpu=TEST", PostOutput: base + "job-done/$RUNPOD_POD_ID/$ID?gpu=TEST",
		PostStream: base + "job-stream/$RUNPOD_POD_ID/$ID?gpu=TEST", Ping: base + "ping/$RUNPOD_POD_ID?gpu=TEST",
		APIKey: workerKey, PodID: id, PingInterval: 200 * time.Millisecond,
		RetryWaits: []time.Duration{200 * time.Millisecond, 300 * time.Millisecond}, StopIdleWait: 50 * time.Millisecond,
	}
	if edit != nil {
		edit(&cfg)
	}
	return runpodtest.StartMockWorker(t, cfg)
}

// run submits a job through the endpoint API; input is the mock-worker's
// fields, next to the workflow the fleet requires.
func (b *bundle) run(t *testing.T, fields string) string {
	t.Helper()
	in := `{"workflow":{"9":{"class_type":"SaveImage","inputs":{}}}`
	if fields != "" {
		in += "," + fields
	}
	in += "}"
	code, out := b.call(t, "POST", "/v2/ep1/run", `{"input":`+in+`}`)
	require.Equal(t, http.StatusOK, code, "%v", out)
	return out["id"].(string)
}

func (b *bundle) call(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	return b.api.Call(t, method, path, body)
}

// final waits for a job's terminal view through /status-sync.
func (b *bundle) final(t *testing.T, id string) map[string]any {
	t.Helper()
	return b.api.Final(t, id, 30*time.Second)
}
