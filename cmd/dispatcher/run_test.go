package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/metrics/metricstest"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// The binary's wiring: with LISTEN_ADDR set, run serves the fleet view
// and the Prometheus series, and stops when its context ends.
func TestRunServesFleetAndMetrics(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, prefix := testenv.Redis(t)
	var cfg config
	require.NoError(t, settings(&cfg).Parse(nil, func(string) string { return "" }))
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

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + cfg.role.Listen + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	require.Eventually(t, func() bool { code, _ := get("/healthz"); return code == http.StatusOK }, 20*time.Second, 20*time.Millisecond)
	fams := metricstest.Scrape(t, "http://"+cfg.role.Listen+"/metrics")
	for _, status := range []string{"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"} {
		require.Zero(t, fams.Value(t, "comfyfleet_jobs_total", "status", status), "a fresh fleet has ended no job")
	}
	require.Equal(t, dto.MetricType_COUNTER, fams.Type(t, "comfyfleet_jobs_total"))
	// (Queue depth and age have series once a pool has a queue: see
	// internal/dispatch's TestFleetAndMetricsRoutes.)
	require.Zero(t, fams.Value(t, "comfyfleet_dlq_size"))
	require.Zero(t, fams.Value(t, "comfyfleet_intake_depth"))
	require.Zero(t, fams.Value(t, "comfyfleet_submissions_duplicate_total"))
	require.Positive(t, fams.Value(t, "go_goroutines"), "the Go collector")
	require.Positive(t, fams.Value(t, "process_resident_memory_bytes"), "the process collector")
	code, body := get("/fleet")
	require.Equal(t, http.StatusOK, code, body)
	var v fleet.View
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	require.Equal(t, uint64(0), v.Intake)
	require.NotNil(t, v.Totals)
}
