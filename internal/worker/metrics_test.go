package worker_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/metrics/metricstest"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestWorkerMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Checkpoints: []string{"a.safetensors"}})
	reg := metrics.NewRegistry()
	began := time.Now()
	m := worker.NewMetrics(reg)
	b.startWorker("w1", worker.Config{}, workerOpts{deps: func(d *worker.Deps) { d.Metrics = m }})
	b.enqueueJob(ckptJob("ok", "a.safetensors"))
	b.wait("ok", proto.StatusCompleted)
	b.enqueueJob(ckptJob("bad", "missing.safetensors"))
	b.wait("bad", proto.StatusFailed)

	scrape := func() metricstest.Families {
		var buf bytes.Buffer
		require.NoError(t, reg.Write(context.Background(), &buf))
		return metricstest.Parse(t, &buf)
	}
	fams := scrape()
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_worker_jobs_total", "status", "COMPLETED"))
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_worker_jobs_total", "status", "FAILED"))
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_worker_comfyui_errors_total", "class", "validation"))
	require.Equal(t, 2.0, fams.Value(t, "comfyfleet_worker_queue_wait_seconds", "lane", "interactive"))
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_worker_execution_seconds", "status", "COMPLETED"))
	require.Zero(t, fams.Value(t, "comfyfleet_worker_retries_total"), "served from 0")

	// GPU idle time: the wall time the worker ran no job, so idle and
	// execution add up to at most the time since the worker started.
	wall := time.Since(began).Seconds()
	idle := fams.Value(t, "comfyfleet_worker_gpu_idle_seconds_total")
	var busy float64
	for _, s := range fams["comfyfleet_worker_execution_seconds"].GetMetric() {
		busy += s.GetHistogram().GetSampleSum()
	}
	require.Positive(t, idle)
	require.Positive(t, busy)
	require.LessOrEqual(t, idle+busy, wall, "idle time is not counted while a job runs")
	later := scrape().Value(t, "comfyfleet_worker_gpu_idle_seconds_total")
	require.Greater(t, later, idle, "an idle worker's idle time grows")
}
