package main

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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
