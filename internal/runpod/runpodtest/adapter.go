package runpodtest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/jobtake"
	"github.com/comfyfleet/comfyfleet/proto"
)

// WorkerKey is the worker key of an Adapter whose Config names none.
const WorkerKey = "secret-key"

// Adapter is a fleet whose runpod-adapter replicas serve the endpoint API
// and the job-take host on one listener each, behind one front: a
// recorder, and a round-robin balancer when there are several replicas.
// A dispatcher's sweeper gives back the jobs of RunPod workers that went
// quiet, as it does a gpuworker's.
type Adapter struct {
	Fleet *Fleet
	// URL is the front's base URL; the endpoint is "ep1" by convention
	// (any name is served).
	URL string
	// Rec records every request through the front.
	Rec *Recorder
	// Hosts are the replicas' job-take hosts.
	Hosts []*jobtake.Host
}

// StartAdapter starts a fleet and replicas adapters on it with the
// job-take host configured by cfg (Keys defaults to WorkerKey alone); the
// endpoint API takes cfg's Pool and Endpoints.
func StartAdapter(t testing.TB, replicas int, cfg jobtake.Config) *Adapter {
	t.Helper()
	f := StartFleet(t)
	if cfg.Keys == nil {
		keys, err := auth.ParseKeyring(map[auth.Role][]string{auth.Worker: {WorkerKey}})
		if err != nil {
			t.Fatalf("keyring: %v", err)
		}
		cfg.Keys = keys
	}
	f.StartSweeper(t, lifecycle.SweeperConfig{Every: 100 * time.Millisecond})
	var backends []string
	var hosts []*jobtake.Host
	for range replicas {
		q, core := f.ReplicaCore(t)
		log := zaptest.NewLogger(t)
		api := runpod.NewAPI(runpod.Config{Pool: cfg.Pool, Endpoints: cfg.Endpoints}, runpod.Deps{Queue: q, Core: core, DB: f.DB, Blobs: q.Blobs(), Logger: log})
		host, err := jobtake.New(cfg, jobtake.Deps{Queue: q, Core: core, Blobs: q.Blobs(), Fleet: f.DB, Logger: log})
		if err != nil {
			t.Fatalf("job-take host: %v", err)
		}
		if err := host.Start(t.Context()); err != nil {
			t.Fatalf("start job-take host: %v", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/", api)
		host.Register(mux)
		srv := httptest.NewServer(mux)
		t.Cleanup(func() { srv.Close(); host.Stop() })
		backends, hosts = append(backends, srv.URL), append(hosts, host)
	}
	a := &Adapter{Fleet: f, Rec: NewRecorder(balancer(backends)), Hosts: hosts}
	srv := httptest.NewServer(a.Rec)
	t.Cleanup(srv.Close)
	a.URL = srv.URL
	return a
}

// balancer forwards each request to the next backend in turn, keeping
// its request target byte for byte.
func balancer(backends []string) http.Handler {
	var n atomic.Uint64
	client := &http.Client{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target := backends[int(n.Add(1))%len(backends)] + r.RequestURI
		req, err := http.NewRequestWithContext(r.Context(), r.Method, target, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		req.Header = r.Header.Clone()
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})
}

// Call sends an endpoint-API request (a JSON body, or none) to the front
// and decodes its JSON answer.
func (a *Adapter) Call(t testing.TB, method, path, body string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, a.URL+path, rd)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(data, &out), "%s", data)
	return resp.StatusCode, out
}

// Final waits up to d for a job's terminal view through /status-sync.
func (a *Adapter) Final(t testing.TB, id string, d time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		code, out := a.Call(t, "GET", "/v2/ep1/status-sync/"+id+"?wait=5000", "")
		require.Equal(t, http.StatusOK, code, "%v", out)
		if proto.Status(out["status"].(string)).Terminal() {
			return out
		}
	}
	t.Fatalf("job %s never finished", id)
	return nil
}
