package role_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/role"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.LeakOptions()...)
}

// configs are the three roles' settings as their binaries parse them
// from an empty environment, on a test's own NATS and Redis.
type configs struct {
	common     role.Common
	dispatcher role.DispatcherConfig
	worker     role.WorkerConfig
	adapter    role.AdapterConfig
}

func parse(t *testing.T, env map[string]string) *configs {
	t.Helper()
	var c configs
	fs := flagenv.New("test", "")
	c.common.Bind(fs)
	c.dispatcher.Bind(fs)
	c.worker.Bind(fs)
	c.adapter.Bind(fs)
	require.NoError(t, fs.Parse(nil, func(k string) string { return env[k] }))
	return &c
}

func (c *configs) finish(t *testing.T) {
	t.Helper()
	for _, f := range []func() (string, error){c.common.Finish, c.dispatcher.Finish, c.worker.Finish, c.adapter.Finish} {
		setting, err := f()
		require.NoError(t, err, setting)
	}
}

// TestRolesRunAJob builds each role's process the way its binary does,
// runs one job through RunPod's /runsync, and stops them, several times
// over the same servers (a start/stop stress of the wiring).
func TestRolesRunAJob(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, prefix := testenv.Redis(t)
	sim := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
	log := zaptest.NewLogger(t)
	for round := range 3 {
		c := parse(t, map[string]string{"NATS_URL": n.URL, "REDIS_URL": testenv.RedisURL(), "COMFYUI_URL": sim.URL,
			"WORKER_ID": "w1", "LISTEN_ADDR": "127.0.0.1:0", "SHUTDOWN_GRACE": "5s"})
		c.common.KeyPrefix = prefix
		c.dispatcher.Listen, c.worker.Listen = "", ""
		c.finish(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		db, err := c.common.Open(ctx, "dispatcher", log)
		require.NoError(t, err)
		wb, err := c.common.Open(ctx, "gpuworker", log)
		require.NoError(t, err)
		ab, err := c.common.Open(ctx, "adapter", log)
		require.NoError(t, err)
		reg := metrics.NewRegistry()
		d, err := role.NewDispatcher(c.dispatcher, db, reg, log)
		require.NoError(t, err)
		w, err := role.NewWorker(c.worker, wb, worker.NewMetrics(reg), reg, log)
		require.NoError(t, err)
		a, err := role.NewAdapter(c.adapter, ab, reg, role.AdapterOptions{Routes: d.Routes()}, log)
		require.NoError(t, err)
		require.NoError(t, d.Start(ctx))
		require.NoError(t, w.Start(ctx))
		require.NoError(t, a.Start(ctx))

		body, err := os.ReadFile("../../examples/txt2img.json")
		require.NoError(t, err)
		resp, err := http.Post("http://"+a.Addr()+"/runsync", "application/json", strings.NewReader(string(body)))
		require.NoError(t, err)
		var view struct {
			Status string `json:"status"`
			Output struct {
				Images []struct {
					Type string `json:"type"`
					Data string `json:"data"`
				} `json:"images"`
			} `json:"output"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&view))
		resp.Body.Close()
		require.Equal(t, "COMPLETED", view.Status, "round %d", round)
		require.NotEmpty(t, view.Output.Images)
		require.Equal(t, "base64", view.Output.Images[0].Type)

		// The dispatcher's routes ride on the API's listener.
		resp, err = http.Get("http://" + a.Addr() + "/metrics")
		require.NoError(t, err)
		text, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Contains(t, string(text), "comfyfleet_jobs_admitted_total")
		require.Contains(t, string(text), "comfyfleet_worker_jobs_total")

		a.Stop()
		w.Stop()
		d.Stop()
		for _, b := range []interface{ Close() }{ab, wb, db} {
			b.Close()
		}
		cancel()
	}
}

// TestFinishNamesTheSetting: a bad value is reported under its variable's
// name.
func TestFinishNamesTheSetting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env     map[string]string
		setting string
	}{
		{map[string]string{"POOL": "a b"}, "POOL"},
		{map[string]string{"BUCKET_ACCESS_KEY_ID": "k"}, "BUCKET_ENDPOINT_URL"},
		{map[string]string{"MAX_INPUT_MB": "-1"}, "MAX_INPUT_MB"},
		{map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{map[string]string{"WEBHOOK_ALLOW": "not a cidr/99"}, "WEBHOOK"},
		{map[string]string{"RUNPOD_PING_INTERVAL": "-5"}, "RUNPOD_PING_INTERVAL"},
		{map[string]string{"LISTEN_ADDR": ":8080"}, "ADMIN_KEYS"},
		{map[string]string{"JOB_TAKE": "true"}, "WORKER_KEYS"},
		{map[string]string{"JOB_TAKE": "true", "API_KEYS": "acme:k1", "WORKER_KEYS": "k1"}, "API_KEYS/ADMIN_KEYS/WORKER_KEYS"},
		{map[string]string{"API_KEYS": "acme:"}, "API_KEYS"},
		{map[string]string{"ADMIN_KEYS_FILE": "/nonexistent/keys"}, "ADMIN_KEYS_FILE"},
		{map[string]string{"ALLOWED_ORIGINS": "https://a.example/path"}, "ALLOWED_ORIGINS"},
		{map[string]string{"ENDPOINTS": "sdxl=pool-sdxl,sdxl=other"}, "ENDPOINTS"},
		{map[string]string{"ENDPOINTS": "sdxl"}, "ENDPOINTS"},
		{serverlessEnv(map[string]string{"ENDPOINTS": "sdxl=pool-sdxl"}), "RUNPOD_ENDPOINT_ID"},
		{serverlessEnv(map[string]string{"ENDPOINTS": "sdxl=pool-sdxl", "RUNPOD_ENDPOINT_ID": "flux"}), "RUNPOD_ENDPOINT_ID"},
		{map[string]string{"REDIS_SENTINELS": "sentinel-1"}, "REDIS_SENTINELS"},
		{map[string]string{"REDIS_SENTINELS": "s:26379", "REDIS_MASTER_NAME": "my master"}, "REDIS_MASTER_NAME"},
		{map[string]string{"REDIS_SENTINEL_PASSWORD": "pw"}, "REDIS_SENTINEL_PASSWORD"},
		{map[string]string{"REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_USER": "u"}, "REDIS_SENTINEL_PASSWORD"},
		{map[string]string{"REDIS_WAIT_REPLICAS": "-2"}, "REDIS_WAIT_REPLICAS"},
		{map[string]string{"REDIS_WAIT_TIMEOUT": "5s"}, "REDIS_WAIT_TIMEOUT"},
		{map[string]string{"REDIS_WAIT_TIMEOUT": "0s"}, "REDIS_WAIT_TIMEOUT"},
	}
	for _, tt := range tests {
		c := parse(t, tt.env)
		var got string
		for _, f := range []func() (string, error){c.common.Finish, c.dispatcher.Finish, c.worker.Finish, c.adapter.Finish} {
			if s, err := f(); err != nil {
				got = s
				break
			}
		}
		require.Contains(t, got, tt.setting, "%v", tt.env)
	}
}

// TestRedisWaitReplicasDefault: behind Sentinel each transition waits
// for one replica unless told otherwise; on one Redis for none.
func TestRedisWaitReplicasDefault(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want int
	}{
		{"one Redis", nil, 0},
		{"Sentinel", map[string]string{"REDIS_SENTINELS": "s1:26379,s2:26379"}, 1},
		{"Sentinel, told none", map[string]string{"REDIS_SENTINELS": "s1:26379", "REDIS_WAIT_REPLICAS": "0"}, 0},
		{"Sentinel, told two", map[string]string{"REDIS_SENTINELS": "s1:26379", "REDIS_WAIT_REPLICAS": "2"}, 2},
		{"one Redis, told one", map[string]string{"REDIS_WAIT_REPLICAS": "1"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := parse(t, tt.env)
			_, err := c.common.Finish()
			require.NoError(t, err)
			require.Equal(t, tt.want, c.common.WaitReplicas())
		})
	}
}

// TestOperatorRoutesWantAnAdminKey replays the finding "the dispatcher's
// HTTP API has no authentication and no setting for one; a text/plain
// cross-origin POST replays a dead letter": with ADMIN_KEYS, every route
// but /healthz wants an admin key, and a cross-site request is refused even
// with one. A dispatcher that would listen for other hosts without admin
// keys does not start (TestFinishNamesTheSetting).
func TestOperatorRoutesWantAnAdminKey(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, prefix := testenv.Redis(t)
	log := zaptest.NewLogger(t)
	c := parse(t, map[string]string{"NATS_URL": n.URL, "REDIS_URL": testenv.RedisURL(), "LISTEN_ADDR": "127.0.0.1:0",
		"ADMIN_KEYS": "ops:admin-key", "API_KEYS": "acme:api-key"})
	c.common.KeyPrefix = prefix
	c.finish(t)
	ctx := testenv.Context(t, time.Minute)
	b, err := c.common.Open(ctx, "dispatcher", log)
	require.NoError(t, err)
	defer b.Close()
	d, err := role.NewDispatcher(c.dispatcher, b, metrics.NewRegistry(), log)
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop()

	call := func(method, path string, hdr ...string) int {
		req, err := http.NewRequest(method, "http://"+d.Addr()+path, nil)
		require.NoError(t, err)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, r := range []struct{ method, path string }{{"GET", "/fleet"}, {"GET", "/dlq"}, {"GET", "/metrics"}, {"POST", "/dlq/1/replay"},
		{"GET", "/console/api/jobs"}, {"GET", "/console/api/events"}, {"POST", "/console/api/pause"}, {"POST", "/console/api/workers/w1/drain"}} {
		require.Equal(t, http.StatusUnauthorized, call(r.method, r.path), "%s %s without a key", r.method, r.path)
		require.Equal(t, http.StatusUnauthorized, call(r.method, r.path, "Authorization", "Bearer api-key"), "%s %s: an API key is no key here", r.method, r.path)
		require.Equal(t, http.StatusForbidden, call(r.method, r.path, "Authorization", "Bearer admin-key", "Origin", "https://evil.example", "Content-Type", "text/plain"),
			"%s %s from another site", r.method, r.path)
	}
	require.Equal(t, http.StatusOK, call("GET", "/fleet", "Authorization", "Bearer admin-key"))
	require.Equal(t, http.StatusOK, call("GET", "/metrics", "Authorization", "admin-key"))
	require.Equal(t, http.StatusNotFound, call("POST", "/dlq/1/replay", "Authorization", "Bearer admin-key"), "no such dead letter")
	require.Equal(t, http.StatusOK, call("GET", "/healthz"), "liveness probes need no key")
	// The console's page holds no data: it is served to anyone; its API
	// is behind the admin keys.
	require.Equal(t, http.StatusOK, call("GET", "/console/"), "the console's page")
	require.Equal(t, http.StatusOK, call("GET", "/console/assets/app.js"))
	require.Equal(t, http.StatusOK, call("GET", "/console/api/session", "Authorization", "Bearer admin-key"))
}

// TestAPIKeysNeverTakeJobs replays the finding "any API key is a worker
// key": on the job-take routes only worker keys pass.
func TestAPIKeysNeverTakeJobs(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, prefix := testenv.Redis(t)
	log := zaptest.NewLogger(t)
	c := parse(t, map[string]string{"NATS_URL": n.URL, "REDIS_URL": testenv.RedisURL(), "LISTEN_ADDR": "127.0.0.1:0",
		"API_KEYS": "acme:api-key", "ADMIN_KEYS": "ops:admin-key", "JOB_TAKE": "true", "WORKER_KEYS": "rp:worker-key", "JOB_TAKE_HOLD": "50ms"})
	c.common.KeyPrefix = prefix
	c.dispatcher.Listen, c.worker.Listen = "", ""
	c.finish(t)
	ctx := testenv.Context(t, time.Minute)
	b, err := c.common.Open(ctx, "adapter", log)
	require.NoError(t, err)
	defer b.Close()
	a, err := role.NewAdapter(c.adapter, b, metrics.NewRegistry(), role.AdapterOptions{}, log)
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop()
	take := func(key string) int {
		req, err := http.NewRequest("GET", "http://"+a.Addr()+"/v2/ep/job-take/pod-1", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", key)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	// The host holds the worker keys alone: another key is no key there.
	require.Equal(t, http.StatusUnauthorized, take("api-key"))
	require.Equal(t, http.StatusUnauthorized, take("admin-key"))
	require.Equal(t, http.StatusUnauthorized, take(""))
	require.Equal(t, http.StatusNoContent, take("worker-key"), "no job waiting")
}

// serverlessEnv adds the variables RunPod sets in a worker container
// (serverless mode) to env.
func serverlessEnv(env map[string]string) map[string]string {
	env["RUNPOD_WEBHOOK_GET_JOB"] = "https://api.runpod.ai/v2/sdxl/job-take/$RUNPOD_POD_ID"
	env["RUNPOD_WEBHOOK_POST_OUTPUT"] = "https://api.runpod.ai/v2/sdxl/job-done/$RUNPOD_POD_ID/$ID"
	return env
}

// TestEndpointsSetEveryFace: ENDPOINTS reaches the API and the job-take
// host, and serverless mode submits into the pool of its
// RUNPOD_ENDPOINT_ID; without ENDPOINTS, POOL is every face's pool.
func TestEndpointsSetEveryFace(t *testing.T) {
	t.Parallel()
	c := parse(t, serverlessEnv(map[string]string{"ENDPOINTS": "sdxl=pool-sdxl,flux=pool-flux", "RUNPOD_ENDPOINT_ID": "flux", "POOL": "gpu"}))
	c.finish(t)
	want := runpod.Endpoints{"sdxl": "pool-sdxl", "flux": "pool-flux"}
	require.Equal(t, want, c.adapter.API.Endpoints)
	require.Equal(t, want, c.adapter.Take.Endpoints)
	require.Equal(t, "pool-flux", c.adapter.Serverless.Pool)
	require.Equal(t, "gpu", c.adapter.API.Pool, "the bare routes' pool")

	c = parse(t, serverlessEnv(map[string]string{"RUNPOD_ENDPOINT_ID": "flux", "POOL": "gpu"}))
	c.finish(t)
	require.Nil(t, c.adapter.API.Endpoints)
	require.Equal(t, "gpu", c.adapter.Serverless.Pool)
	require.Equal(t, "gpu", c.adapter.Take.Pool)

	// In api mode RUNPOD_ENDPOINT_ID is not needed.
	c = parse(t, map[string]string{"ENDPOINTS": "sdxl=pool-sdxl"})
	c.finish(t)
	require.Equal(t, runpod.Endpoints{"sdxl": "pool-sdxl"}, c.adapter.API.Endpoints)
}

// TestEndpointJobRunsOnItsPoolsWorker: the roles as their binaries build
// them, with two gpuworkers of different pools on their own ComfyUI
// emulators, both idle: every job through /v2/sdxl/runsync runs on the
// worker of pool-sdxl, every job through /v2/flux/runsync on pool-flux's,
// and an endpoint id ENDPOINTS lacks is 404.
func TestEndpointJobRunsOnItsPoolsWorker(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, prefix := testenv.Redis(t)
	log := zaptest.NewLogger(t)
	base := map[string]string{"NATS_URL": n.URL, "REDIS_URL": testenv.RedisURL(), "LISTEN_ADDR": "127.0.0.1:0", "SHUTDOWN_GRACE": "5s",
		"ENDPOINTS": "sdxl=pool-sdxl,flux=pool-flux"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := metrics.NewRegistry()

	c := parse(t, base)
	c.common.KeyPrefix = prefix
	c.dispatcher.Listen, c.worker.Listen = "", ""
	c.finish(t)
	db, err := c.common.Open(ctx, "dispatcher", log)
	require.NoError(t, err)
	defer db.Close()
	d, err := role.NewDispatcher(c.dispatcher, db, reg, log)
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop()
	ab, err := c.common.Open(ctx, "adapter", log)
	require.NoError(t, err)
	defer ab.Close()
	a, err := role.NewAdapter(c.adapter, ab, reg, role.AdapterOptions{}, log)
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop()
	// Before any worker: the endpoints' pools have their lane consumers,
	// which an autoscaler reads to start the first worker.
	for _, pool := range []string{"pool-sdxl", "pool-flux"} {
		for _, lane := range []proto.Lane{proto.LaneInteractive, proto.LaneBatch} {
			_, err := n.JS.Consumer(ctx, proto.JobsStream, proto.LaneConsumer(pool, lane))
			require.NoError(t, err, "consumer of %s/%s", pool, lane)
		}
	}

	for _, pool := range []string{"pool-sdxl", "pool-flux"} {
		sim := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
		env := map[string]string{"COMFYUI_URL": sim.URL, "WORKER_ID": "w-" + pool, "POOL": pool}
		for k, v := range base {
			env[k] = v
		}
		wc := parse(t, env)
		wc.common.KeyPrefix = prefix
		wc.worker.Listen = ""
		wc.finish(t)
		wb, err := wc.common.Open(ctx, "gpuworker", log)
		require.NoError(t, err)
		defer wb.Close()
		w, err := role.NewWorker(wc.worker, wb, worker.NewMetrics(metrics.NewRegistry()), metrics.NewRegistry(), log)
		require.NoError(t, err)
		require.NoError(t, w.Start(ctx))
		defer w.Stop()
	}

	body, err := os.ReadFile("../../examples/txt2img.json")
	require.NoError(t, err)
	for range 3 {
		for endpoint, want := range map[string]string{"sdxl": "w-pool-sdxl", "flux": "w-pool-flux"} {
			resp, err := http.Post("http://"+a.Addr()+"/v2/"+endpoint+"/runsync", "application/json", strings.NewReader(string(body)))
			require.NoError(t, err)
			var view struct {
				Status   string `json:"status"`
				WorkerID string `json:"workerId"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&view))
			resp.Body.Close()
			require.Equal(t, "COMPLETED", view.Status, endpoint)
			require.Equal(t, want, view.WorkerID, "a job of /v2/%s", endpoint)
		}
	}
	resp, err := http.Post("http://"+a.Addr()+"/v2/other/runsync", "application/json", strings.NewReader(string(body)))
	require.NoError(t, err)
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.JSONEq(t, `{"error":"no such endpoint: other"}`, string(text))
}
