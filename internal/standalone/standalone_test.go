package standalone_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/internal/standalone"
)

// parse binds the settings as `comfyfleet standalone` does and reads them
// from env alone.
func parse(t *testing.T, env map[string]string) standalone.Config {
	t.Helper()
	var cfg standalone.Config
	fs := flagenv.New("comfyfleet standalone", "")
	cfg.Bind(fs)
	require.NoError(t, fs.Parse(nil, func(k string) string { return env[k] }))
	return cfg
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg := parse(t, map[string]string{"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/ep/job-take/$RUNPOD_POD_ID",
		"RUNPOD_WEBHOOK_POST_OUTPUT": "https://api.runpod.ai/v2/ep/job-done/$RUNPOD_POD_ID/$ID", "WORKER_ID": "runpod-pod1",
		"POOL": "sdxl", "REFRESH_WORKER": "true", "SHUTDOWN_GRACE": "45s"})
	setting, err := cfg.Finish()
	require.NoError(t, err, setting)
	s := cfg.Stack
	require.Equal(t, standalone.DefaultDir, s.Dir)
	require.Equal(t, "127.0.0.1:8000", s.Listen, "the API on loopback only")
	require.Equal(t, "127.0.0.1:8000", s.Adapter.Listen)
	require.Equal(t, []string{"http://127.0.0.1:8188"}, s.ComfyUIURLs, "one worker, on the container's ComfyUI")
	require.Equal(t, 1, s.Workers)
	require.Equal(t, -1, s.NATSPort, "a random NATS port")
	require.Empty(t, s.NATSURL, "NATS embedded")
	require.Empty(t, s.RedisURL, "Redis embedded")
	require.Equal(t, "-", s.RedisServer, "the embedded Redis-protocol server: the image has no redis-server")
	require.True(t, s.ExactWorkerID)
	require.Equal(t, "runpod-pod1", s.Worker.Worker.ID)
	require.True(t, s.Adapter.ServerlessMode())
	require.Equal(t, "sdxl", s.Adapter.Serverless.Pool, "RunPod's jobs go to the worker's pool")
	require.True(t, s.Adapter.Serverless.RefreshWorker, "REFRESH_WORKER: a fresh RunPod worker after each job")
	require.True(t, s.Worker.Worker.RefreshWorker, "REFRESH_WORKER also frees ComfyUI's memory after each job, as in the gpuworker")
	require.Equal(t, 45*time.Second, s.Adapter.Serverless.Grace, "the RunPod job in hand drains as long as the worker's")
	require.Equal(t, 45*time.Second, s.Worker.Worker.Grace)
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		env         map[string]string
		wantSetting string
		wantErr     string
	}{
		{name: "a fleet", env: map[string]string{"NATS_URL": "nats://fleet:4222"}, wantSetting: "NATS_URL", wantErr: "standalone mode runs its own NATS"},
		{name: "bad ComfyUI", env: map[string]string{"COMFYUI_URL": "ftp://x"}, wantSetting: "COMFYUI_URL"},
		{name: "RunPod half set", env: map[string]string{"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/ep/job-take/x"}, wantSetting: "RUNPOD_WEBHOOK_*", wantErr: "RUNPOD_WEBHOOK_POST_OUTPUT"},
		{name: "bad pool", env: map[string]string{"POOL": "a b"}, wantSetting: "POOL/MAX_QUEUED/RUNSYNC_WAIT/STREAM_WAIT", wantErr: `"a b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := parse(t, tt.env)
			setting, err := cfg.Finish()
			require.Error(t, err)
			require.Equal(t, tt.wantSetting, setting, err.Error())
			require.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

// setup runs the emulator as the container's ComfyUI and a fake RunPod
// platform, and returns a finished configuration for them.
func setup(t *testing.T, env map[string]string) (standalone.Config, *runpodtest.Platform) {
	t.Helper()
	sim, err := comfysim.New(comfysim.Config{Dir: t.TempDir(), StepDelay: time.Millisecond})
	require.NoError(t, err)
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(func() {
		srv.Close()
		sim.Close()
	})
	plat := runpodtest.StartPlatform(t)
	getJob, postOutput, postStream, ping := plat.Templates()
	vars := map[string]string{"COMFYUI_URL": srv.URL, "COMFYFLEET_DIR": filepath.Join(t.TempDir(), "cf"), "LISTEN_ADDR": "127.0.0.1:0",
		"RUNPOD_WEBHOOK_GET_JOB": getJob, "RUNPOD_WEBHOOK_POST_OUTPUT": postOutput, "RUNPOD_WEBHOOK_POST_STREAM": postStream,
		"RUNPOD_WEBHOOK_PING": ping, "RUNPOD_AI_API_KEY": "k", "RUNPOD_POD_ID": "pod1", "SHUTDOWN_GRACE": "5s"}
	for k, v := range env {
		vars[k] = v
	}
	cfg := parse(t, vars)
	setting, err := cfg.Finish()
	require.NoError(t, err, setting)
	return cfg, plat
}

func txt2img(t *testing.T, id string) map[string]any {
	t.Helper()
	data, err := os.ReadFile("../../examples/txt2img.json")
	require.NoError(t, err)
	var req struct {
		Input json.RawMessage `json:"input"`
	}
	require.NoError(t, json.Unmarshal(data, &req))
	return map[string]any{"id": id, "input": req.Input}
}

// done waits for job id's result post and decodes it.
func done(t *testing.T, plat *runpodtest.Platform, id string) map[string]any {
	t.Helper()
	var body map[string]any
	plat.WaitFor(t, "the result of "+id, func(reqs []runpodtest.Request) bool {
		for _, r := range runpodtest.Of(reqs, "job-done") {
			var b map[string]any
			if strings.Contains(r.URI, "/"+id+"?") && json.Unmarshal(r.Body, &b) == nil && b["status"] != "IN_PROGRESS" {
				body = b
				return true
			}
		}
		return false
	})
	return body
}

func requireImage(t *testing.T, body map[string]any) {
	t.Helper()
	out, ok := body["output"].(map[string]any)
	require.True(t, ok, "%v", body)
	images, _ := out["images"].([]any)
	require.Len(t, images, 1, "%v", body)
	img := images[0].(map[string]any)
	require.Equal(t, "base64", img["type"])
	data, err := base64.StdEncoding.DecodeString(img["data"].(string))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(data), "\x89PNG"))
}

// TestRunTakesJobsUntilStopped: the stack takes RunPod's jobs, answers as
// worker-comfyui does, and Run returns nil once its context ends.
func TestRunTakesJobsUntilStopped(t *testing.T) {
	t.Parallel()
	cfg, plat := setup(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- standalone.Run(ctx, cfg, zaptest.NewLogger(t)) }()
	plat.AddJob(txt2img(t, "j1"))
	requireImage(t, done(t, plat, "j1"))
	_, err := os.Stat(filepath.Join(cfg.Stack.Dir, "stack.json"))
	require.NoError(t, err, "the stack says where it is, for the comfyfleet commands in the container")
	cancel()
	require.NoError(t, <-ran)
	_, err = os.Stat(filepath.Join(cfg.Stack.Dir, "stack.json"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestRunEndsAfterRefreshWorker: with REFRESH_WORKER, Run returns nil by
// itself once the job is reported with stopPod.
func TestRunEndsAfterRefreshWorker(t *testing.T) {
	t.Parallel()
	cfg, plat := setup(t, map[string]string{"REFRESH_WORKER": "true"})
	plat.AddJob(txt2img(t, "j1"))
	ctx := t.Context()
	ran := make(chan error, 1)
	go func() { ran <- standalone.Run(ctx, cfg, zaptest.NewLogger(t)) }()
	body := done(t, plat, "j1")
	requireImage(t, body)
	require.Equal(t, true, body["stopPod"])
	select {
	case err := <-ran:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not end after the refresh_worker job")
	}
}
