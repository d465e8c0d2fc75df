package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

func parse(t *testing.T, args []string, env map[string]string) (config, string, error) {
	t.Helper()
	var cfg config
	fs := settings(&cfg)
	if err := fs.Parse(args, func(k string) string { return env[k] }); err != nil {
		return cfg, "", err
	}
	setting, err := cfg.finish()
	return cfg, setting, err
}

func TestSettings(t *testing.T) {
	t.Parallel()
	cfg, _, err := parse(t, nil, map[string]string{"API_KEYS": "a,b", "POOL": "gpu-a", "JOB_TAKE": "true"})
	require.NoError(t, err)
	require.False(t, cfg.serverlessMode())
	require.True(t, cfg.jobTake)
	require.Equal(t, []string{"a", "b"}, cfg.take.WorkerKeys, "RunPod workers use the API keys unless given their own")
	require.Equal(t, "gpu-a", cfg.take.Pool)

	cfg, _, err = parse(t, nil, map[string]string{
		"RUNPOD_WEBHOOK_GET_JOB": "http://h/v2/e/job-take/$ID?gpu=X", "RUNPOD_WEBHOOK_POST_OUTPUT": "http://h/v2/e/job-done/$RUNPOD_POD_ID/$ID?gpu=X",
		"RUNPOD_PING_INTERVAL": "5000", "RUNPOD_AI_API_KEY": "k", "RUNPOD_POD_ID": "pod", "SERVERLESS_CONCURRENCY": "3", "REFRESH_WORKER": "true",
	})
	require.NoError(t, err)
	require.True(t, cfg.serverlessMode(), "RUNPOD_WEBHOOK_GET_JOB selects serverless mode, as in RunPod's SDK")
	require.Equal(t, 5*time.Second, cfg.serverless.PingInterval)
	require.Equal(t, 3, cfg.serverless.Concurrency)
	require.True(t, cfg.serverless.RefreshWorker)

	_, setting, err := parse(t, nil, map[string]string{"RUNPOD_WEBHOOK_GET_JOB": "http://h/x"})
	require.ErrorContains(t, err, "RUNPOD_WEBHOOK_POST_OUTPUT")
	require.Equal(t, "RUNPOD_WEBHOOK_*", setting)
	_, setting, err = parse(t, []string{"--job-take-hold", "2m"}, nil)
	require.Error(t, err)
	require.Equal(t, "JOB_TAKE_*", setting)
	_, _, err = parse(t, nil, map[string]string{"RUNPOD_AI_API_KEY": "x", "RUNPOD_PING_INTERVAL": "soon"})
	require.ErrorContains(t, err, "RUNPOD_PING_INTERVAL")
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// TestRunAPIModeWithJobTake runs the binary's run: the endpoint API and
// the job-take host on one listener, until the signal context ends.
func TestRunAPIModeWithJobTake(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, prefix := testenv.Redis(t)
	cfg, _, err := parse(t, []string{"--job-take", "--job-take-hold", "100ms", "--worker-keys", "wk"}, nil)
	require.NoError(t, err)
	cfg.backend.NATSURL, cfg.backend.RedisURL, cfg.backend.KeyPrefix = n.URL, testenv.RedisURL(), prefix
	cfg.listen = freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, zaptest.NewLogger(t)) }()
	base := "http://" + cfg.listen
	require.Eventually(t, func() bool {
		resp, err := http.Get(base + "/v2/ep/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 20*time.Second, 20*time.Millisecond)
	req, _ := http.NewRequest("GET", base+"/v2/ep/job-take/w1?gpu=x&job_in_progress=0", nil)
	req.Header.Set("Authorization", "wk")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after the signal")
	}
}

// TestRunServerlessMode runs the binary's run in serverless mode against a
// fake RunPod platform with refresh_worker: one job goes through the fleet,
// its result is posted with stopPod, and run returns by itself.
func TestRunServerlessMode(t *testing.T) {
	t.Parallel()
	f := runpodtest.StartFleet(t)
	f.StartWorker(t, "gpu-a")
	p := runpodtest.StartPlatform(t)
	getJob, postOutput, postStream, ping := p.Templates()
	cfg, _, err := parse(t, nil, map[string]string{
		"RUNPOD_WEBHOOK_GET_JOB": getJob, "RUNPOD_WEBHOOK_POST_OUTPUT": postOutput, "RUNPOD_WEBHOOK_POST_STREAM": postStream,
		"RUNPOD_WEBHOOK_PING": ping, "RUNPOD_AI_API_KEY": "secret-key", "RUNPOD_POD_ID": "worker-1",
		"RUNPOD_PING_INTERVAL": "1000", "REFRESH_WORKER": "true",
	})
	require.NoError(t, err)
	cfg.backend.NATSURL, cfg.backend.RedisURL, cfg.backend.KeyPrefix = f.NATS.URL, testenv.RedisURL(), f.Prefix
	p.AddJob(map[string]any{"id": "job-ok", "input": json.RawMessage(runpodtest.Input(runpodtest.Mock{Return: json.RawMessage(`{"a":1}`)}))})
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), cfg, zaptest.NewLogger(t)) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("serverless mode did not end after its refresh_worker job")
	}
	posted := runpodtest.Of(p.Requests(), "job-done")
	require.Len(t, posted, 1)
	require.True(t, strings.HasPrefix(posted[0].URI, "/v2/ep1/job-done/worker-1/job-ok?gpu=TEST&isStream=false"))
	require.JSONEq(t, `{"output":{"a":1},"stopPod":true}`, string(posted[0].Body))
}
