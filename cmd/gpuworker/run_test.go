package main

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/metrics/metricstest"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// With LISTEN_ADDR set, the worker serves its series, the Go runtime's and
// the process's on GET /metrics, in a format Prometheus parses.
func TestRunServesMetrics(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, prefix := testenv.Redis(t)
	sim := simtest.Start(t, comfysim.Config{})
	var cfg config
	require.NoError(t, settings(&cfg).Parse(nil, func(k string) string {
		return map[string]string{"WORKER_ID": "metrics-1", "COMFYUI_URL": sim.URL}[k]
	}))
	_, err := cfg.finish()
	require.NoError(t, err)
	cfg.common.NATSURL, cfg.common.RedisURL, cfg.common.KeyPrefix = n.URL, testenv.RedisURL(), prefix
	cfg.role.Listen = testenv.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, zaptest.NewLogger(t)) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	url := "http://" + cfg.role.Listen + "/metrics"
	require.Eventually(t, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 20*time.Second, 20*time.Millisecond)

	fams := metricstest.Scrape(t, url)
	require.Zero(t, fams.Value(t, "comfyfleet_worker_retries_total"))
	require.Positive(t, fams.Value(t, "comfyfleet_worker_gpu_idle_seconds_total"), "a worker with no job is idle")
	require.Positive(t, fams.Value(t, "go_goroutines"))
	require.Positive(t, fams.Value(t, "process_resident_memory_bytes"))
}

// A worker started before its fleet's NATS is up says why it waits, once
// per try, and starts once the server comes; a worker whose Redis stays
// down says so too, and stops cleanly on its signal.
func TestRunWaitsForTheFleet(t *testing.T) {
	t.Parallel()
	_, prefix := testenv.Redis(t)
	sim := simtest.Start(t, comfysim.Config{})
	natsAddr := testenv.FreeAddr(t)
	var cfg config
	require.NoError(t, settings(&cfg).Parse(nil, func(k string) string {
		return map[string]string{"WORKER_ID": "waits-1", "COMFYUI_URL": sim.URL, "NATS_URL": "nats://worker:pw@" + natsAddr}[k]
	}))
	_, err := cfg.finish()
	require.NoError(t, err)
	cfg.common.RedisURL, cfg.common.KeyPrefix = testenv.RedisURL(), prefix
	log, entries := testenv.Logger(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, log) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	want := "NATS at nats://worker:xxxxx@" + natsAddr + " unreachable"
	for range 2 {
		e := testenv.WaitLog(t, entries, func(e zapcore.Entry) bool { return strings.Contains(e.Message, "retrying in") }, "retrying")
		require.Equal(t, zapcore.WarnLevel, e.Level)
		require.Contains(t, e.Message, want)
		require.NotContains(t, e.Message, ":pw@")
		require.Contains(t, e.Message, "connection refused")
	}
	_, port, _ := net.SplitHostPort(natsAddr)
	p, _ := strconv.Atoi(port)
	testenv.StartNATSOptions(t, &server.Options{Port: p, Users: []*server.User{{Username: "worker", Password: "pw"}}})
	testenv.WaitLog(t, entries, func(e zapcore.Entry) bool { return e.Message == "gpuworker running" }, `"gpuworker running"`)
}

func TestRunSaysWhyRedisIsUnreachable(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	sim := simtest.Start(t, comfysim.Config{})
	redisAddr := testenv.FreeAddr(t)
	var cfg config
	require.NoError(t, settings(&cfg).Parse(nil, func(k string) string {
		return map[string]string{"WORKER_ID": "waits-2", "COMFYUI_URL": sim.URL, "NATS_URL": n.URL,
			"REDIS_URL": "redis://fleet:pw@" + redisAddr + "/0"}[k]
	}))
	_, err := cfg.finish()
	require.NoError(t, err)
	log, entries := testenv.Logger(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, log) }()
	for range 2 {
		e := testenv.WaitLog(t, entries, func(e zapcore.Entry) bool { return strings.Contains(e.Message, "retrying in") }, "retrying")
		require.Contains(t, e.Message, "Redis at redis://fleet:xxxxx@"+redisAddr+"/0 unreachable")
		require.Contains(t, e.Message, "connection refused")
	}
	cancel()
	require.NoError(t, <-done, "a signal while waiting is a clean stop")
}
