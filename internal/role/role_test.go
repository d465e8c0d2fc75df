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
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/internal/worker"
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
