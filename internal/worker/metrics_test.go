package worker_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestWorkerMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Checkpoints: []string{"a.safetensors"}})
	reg := metrics.NewRegistry()
	m := worker.NewMetrics(reg)
	b.startWorker("w1", worker.Config{}, workerOpts{deps: func(d *worker.Deps) { d.Metrics = m }})
	b.enqueueJob(ckptJob("ok", "a.safetensors"))
	b.wait("ok", proto.StatusCompleted)
	b.enqueueJob(ckptJob("bad", "missing.safetensors"))
	b.wait("bad", proto.StatusFailed)

	var buf bytes.Buffer
	require.NoError(t, reg.Write(context.Background(), &buf))
	out := buf.String()
	for _, want := range []string{
		`comfyfleet_worker_jobs_total{status="COMPLETED"} 1`,
		`comfyfleet_worker_jobs_total{status="FAILED"} 1`,
		`comfyfleet_worker_comfyui_errors_total{class="validation"} 1`,
		`comfyfleet_worker_queue_wait_seconds_count{lane="interactive"} 2`,
		`comfyfleet_worker_execution_seconds_count{status="COMPLETED"} 1`,
		"# TYPE comfyfleet_worker_retries_total counter",
	} {
		require.Contains(t, out, want)
	}
}
