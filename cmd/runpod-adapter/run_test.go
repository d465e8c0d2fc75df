package main

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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
