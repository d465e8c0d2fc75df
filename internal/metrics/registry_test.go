package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/metrics"
)

// parse reads the text exposition as Prometheus does.
func parse(t *testing.T, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(r)
	require.NoError(t, err)
	return fams
}

// value is the value of the series of fam whose labels are labels.
func value(t *testing.T, fam *dto.MetricFamily, labels map[string]string) *dto.Metric {
	t.Helper()
	require.NotNil(t, fam)
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if len(got) == len(labels) {
			match := true
			for k, v := range labels {
				match = match && got[k] == v
			}
			if match {
				return m
			}
		}
	}
	require.Failf(t, "no series", "%s%v", fam.GetName(), labels)
	return nil
}

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
		return nil, errors.New("redis down")
	})
	require.Equal(t, []string{"jobs_total", "temp", "wait_seconds", "depth", "broken_total"}, r.Names())

	var buf bytes.Buffer
	require.NoError(t, r.Write(context.Background(), &buf))
	fams := parse(t, &buf)

	require.Equal(t, dto.MetricType_COUNTER, fams["jobs_total"].GetType())
	require.Equal(t, "Jobs by status.", fams["jobs_total"].GetHelp())
	require.Equal(t, 2.0, value(t, fams["jobs_total"], map[string]string{"status": "COMPLETED"}).GetCounter().GetValue())
	require.Equal(t, 2.0, value(t, fams["jobs_total"], map[string]string{"status": "FAILED"}).GetCounter().GetValue())
	require.Equal(t, "A \"gauge\"\nwith two lines.", fams["temp"].GetHelp(), "help survives escaping")
	require.Equal(t, 1.5, value(t, fams["temp"], map[string]string{"where": `a"b\c`}).GetGauge().GetValue(), "label values survive escaping")

	hist := value(t, fams["wait_seconds"], map[string]string{"lane": "batch"}).GetHistogram()
	require.Equal(t, uint64(3), hist.GetSampleCount())
	require.InDelta(t, 7.55, hist.GetSampleSum(), 1e-9)
	var bounds []float64
	var cum []uint64
	for _, b := range hist.GetBucket() {
		bounds, cum = append(bounds, b.GetUpperBound()), append(cum, b.GetCumulativeCount())
	}
	require.Equal(t, []float64{0.1, 1, math.Inf(1)}, bounds, "buckets sorted")
	require.Equal(t, []uint64{1, 2, 3}, cum, "cumulative")

	require.Equal(t, dto.MetricType_GAUGE, fams["depth"].GetType())
	require.Len(t, fams["depth"].GetMetric(), 1, "the sample of the wrong arity is left out")
	require.Equal(t, 3.0, value(t, fams["depth"], map[string]string{"lane": "interactive"}).GetGauge().GetValue())
	require.NotContains(t, fams, "broken_total", "a family whose read fails is left out")

	require.Contains(t, fams, "go_goroutines", "the Go collector")
	require.Contains(t, fams, "process_resident_memory_bytes", "the process collector")
}

func TestHandlerAndDuplicate(t *testing.T) {
	t.Parallel()
	r := metrics.NewRegistry()
	r.Counter("x_total", "X.").Inc()
	r.GaugeFunc("broken", "Fails.", nil, func(context.Context) ([]metrics.Sample, error) { return nil, errors.New("redis down") })
	require.Panics(t, func() { r.Gauge("x_total", "again") })
	require.Panics(t, func() { r.Counter("y_total", "Y.", "a").Inc() }, "label values of the wrong arity")
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "a failed read serves the rest")
	require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4"), resp.Header.Get("Content-Type"))
	fams := parse(t, resp.Body)
	require.Equal(t, 1.0, value(t, fams["x_total"], map[string]string{}).GetCounter().GetValue())
	require.NotContains(t, fams, "broken")
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
	fams := parse(t, resp.Body)
	resp.Body.Close()
	require.Equal(t, 1.0, value(t, fams["api_requests_total"], map[string]string{"method": "POST", "code": "200"}).GetCounter().GetValue())
	require.Equal(t, 2.0, value(t, fams["api_requests_total"], map[string]string{"method": "POST", "code": "429"}).GetCounter().GetValue())
	require.Equal(t, uint64(3), value(t, fams["api_request_seconds"], map[string]string{"method": "POST"}).GetHistogram().GetSampleCount())
	s.Stop()
	s.Stop()
}
