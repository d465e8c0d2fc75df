package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/metrics/metricstest"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// With METRICS_ADDR set, the adapter counts the API's requests on a port
// of its own.
func TestRunServesMetrics(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, prefix := testenv.Redis(t)
	var cfg config
	require.NoError(t, settings(&cfg).Parse(nil, func(string) string { return "" }))
	_, err := cfg.finish()
	require.NoError(t, err)
	cfg.common.NATSURL, cfg.common.RedisURL, cfg.common.KeyPrefix = n.URL, testenv.RedisURL(), prefix
	cfg.role.Listen, cfg.role.MetricsAddr = testenv.FreeAddr(t), testenv.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, zaptest.NewLogger(t)) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	get := func(addr, path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	require.Eventually(t, func() bool { code, _ := get(cfg.role.Listen, "/health"); return code == http.StatusOK }, 20*time.Second, 20*time.Millisecond)
	fams := metricstest.Scrape(t, "http://"+cfg.role.MetricsAddr+"/metrics")
	require.Positive(t, fams.Value(t, "comfyfleet_api_requests_total", "method", "GET", "code", "200"), "the health checks above")
	require.Positive(t, fams.Value(t, "comfyfleet_api_request_seconds", "method", "GET"))
	require.Positive(t, fams.Value(t, "go_goroutines"))
	require.Positive(t, fams.Value(t, "process_resident_memory_bytes"))
	code, _ := get(cfg.role.Listen, "/metrics")
	require.Equal(t, http.StatusNotFound, code, "not on the public port")
}

// In serverless mode (a RunPod worker) the adapter waits for a fleet it
// cannot reach, saying why on every try, a TLS verification failure
// included, until it is stopped; in api mode it fails at once.
func TestRunServerlessWaitsForTheFleet(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: pki.ServerCert, KeyFile: pki.ServerKey})
	require.NoError(t, err)
	srv := testenv.StartNATSOptions(t, &server.Options{TLS: true, TLSConfig: tc, TLSTimeout: 2})
	natsURL := "tls://" + srv.Addr().String()
	env := map[string]string{
		"NATS_URL": natsURL, "NATS_TLS_CA": pki.OtherCA,
		"RUNPOD_WEBHOOK_GET_JOB":     "http://127.0.0.1:1/v2/ep/job-take/$RUNPOD_POD_ID",
		"RUNPOD_WEBHOOK_POST_OUTPUT": "http://127.0.0.1:1/v2/ep/job-done/$RUNPOD_POD_ID/$ID",
	}
	var cfg config
	require.NoError(t, settings(&cfg).Parse(nil, func(k string) string { return env[k] }))
	setting, err := cfg.finish()
	require.NoError(t, err, setting)
	require.True(t, cfg.role.ServerlessMode())
	log, entries := testenv.Logger(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, log) }()
	for range 2 {
		e := testenv.WaitLog(t, entries, func(e zapcore.Entry) bool { return strings.Contains(e.Message, "retrying in") }, "retrying")
		require.Equal(t, zapcore.WarnLevel, e.Level)
		require.Contains(t, e.Message, "NATS at "+natsURL+" unreachable")
		require.Contains(t, e.Message, "certificate signed by unknown authority")
	}
	cancel()
	require.NoError(t, <-done, "a signal while waiting is a clean stop")

	// api mode: the same settings without RunPod's fail at once.
	delete(env, "RUNPOD_WEBHOOK_GET_JOB")
	delete(env, "RUNPOD_WEBHOOK_POST_OUTPUT")
	var api config
	require.NoError(t, settings(&api).Parse(nil, func(k string) string { return env[k] }))
	_, err = api.finish()
	require.NoError(t, err)
	err = run(testenv.Context(t, time.Minute), api, zaptest.NewLogger(t))
	require.ErrorContains(t, err, "NATS at "+natsURL+" unreachable")
}

// A setting that names a missing file fails at once, naming it.
func TestFinishRefusesAMissingCredsFile(t *testing.T) {
	t.Parallel()
	var cfg config
	require.NoError(t, settings(&cfg).Parse(nil, func(k string) string {
		return map[string]string{"NATS_CREDS": "/nonexistent/worker.creds"}[k]
	}))
	setting, err := cfg.finish()
	require.Equal(t, "NATS_CREDS", setting)
	require.ErrorContains(t, err, "/nonexistent/worker.creds")
}
