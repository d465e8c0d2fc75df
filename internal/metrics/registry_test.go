package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/metrics"
)

func TestExposition(t *testing.T) {
	t.Parallel()
	r := metrics.NewRegistry()
	c := r.Counter("jobs_total", "Jobs by status.", "status")
	c.Inc("COMPLETED")
	c.Add(2, "FAILED")
	c.Inc("COMPLETED")
	g := r.Gauge("temp", "A \"gauge\"\nwith two lines.", "where")
	g.Set(1.5, `a"b\c`)
	h := r.Histogram("wait_seconds", "Waits.", []float64{1, 0.1}, "lane")
	h.Observe(0.05, "batch")
	h.ObserveDuration(500*time.Millisecond, "batch")
	h.Observe(7, "batch")
	r.GaugeFunc("depth", "Depth.", []string{"lane"}, func(context.Context) ([]metrics.Sample, error) {
		return []metrics.Sample{{Labels: []string{"interactive"}, Value: 3}, {Labels: []string{"wrong", "arity"}}}, nil
	})
	r.CounterFunc("broken_total", "Fails.", nil, func(context.Context) ([]metrics.Sample, error) {
		return nil, errors.New("redis down\nnow")
	})
	var buf bytes.Buffer
	require.NoError(t, r.Write(context.Background(), &buf))
	require.Equal(t, `# HELP jobs_total Jobs by status.
# TYPE jobs_total counter
jobs_total{status="COMPLETED"} 2
jobs_total{status="FAILED"} 2
# HELP temp A "gauge"\nwith two lines.
# TYPE temp gauge
temp{where="a\"b\\c"} 1.5
# HELP wait_seconds Waits.
# TYPE wait_seconds histogram
wait_seconds_bucket{lane="batch",le="0.1"} 1
wait_seconds_bucket{lane="batch",le="1"} 2
wait_seconds_bucket{lane="batch",le="+Inf"} 3
wait_seconds_sum{lane="batch"} 7.55
wait_seconds_count{lane="batch"} 3
# HELP depth Depth.
# TYPE depth gauge
depth{lane="interactive"} 3
# broken_total not read: redis down now
`, buf.String())
}

func TestHandlerAndDuplicate(t *testing.T) {
	t.Parallel()
	r := metrics.NewRegistry()
	r.Counter("x_total", "X.").Inc()
	require.Panics(t, func() { r.Gauge("x_total", "again") })
	require.Panics(t, func() { r.Counter("y_total", "Y.", "a").Inc() })
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, "text/plain; version=0.0.4; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Contains(t, string(body), "x_total 1\n")
}

func TestInstrumentAndServer(t *testing.T) {
	t.Parallel()
	r := metrics.NewRegistry()
	h := metrics.Instrument(r, "api", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/full" {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	app := httptest.NewServer(h)
	defer app.Close()
	for _, p := range []string{"/", "/full", "/full"} {
		resp, err := http.Post(app.URL+p, "text/plain", nil)
		require.NoError(t, err)
		resp.Body.Close()
	}
	s := metrics.NewServer("127.0.0.1:0", r.Handler())
	s.Stop() // safe before Start
	require.NoError(t, s.Start())
	defer s.Stop()
	resp, err := http.Get("http://" + s.Addr() + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), `api_requests_total{method="POST",code="200"} 1`)
	require.Contains(t, string(body), `api_requests_total{method="POST",code="429"} 2`)
	require.Contains(t, string(body), `api_request_seconds_count{method="POST"} 3`)
	s.Stop()
	s.Stop()
}
