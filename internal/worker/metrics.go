package worker

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Metrics are a worker's Prometheus series. A nil *Metrics records
// nothing.
type Metrics struct {
	jobs        *metrics.Counter
	queueWait   *metrics.Histogram
	execution   *metrics.Histogram
	retries     *metrics.Counter
	comfyErrors *metrics.Counter
	routedJobs  *metrics.Counter
	handbacks   *metrics.Counter
	modelFetch  *metrics.Counter
	idle        idleClock
}

// idleClock adds up the time the worker runs no job: its GPU's idle time.
type idleClock struct {
	mu      sync.Mutex
	running int
	since   time.Time     // when running last became 0
	total   time.Duration // idle time before since
}

func (c *idleClock) start(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running == 0 {
		c.total += now.Sub(c.since)
	}
	c.running++
}

func (c *idleClock) stop(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running--; c.running == 0 {
		c.since = now
	}
}

func (c *idleClock) seconds(now time.Time) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.total
	if c.running == 0 {
		d += now.Sub(c.since)
	}
	return d.Seconds()
}

// NewMetrics registers the worker's series on reg.
func NewMetrics(reg *metrics.Registry) *Metrics {
	m := &Metrics{
		jobs:        reg.Counter("comfyfleet_worker_jobs_total", "Jobs this worker ended, by terminal status.", "status"),
		queueWait:   reg.Histogram("comfyfleet_worker_queue_wait_seconds", "Time from submission to pickup of the jobs this worker claimed (RunPod's delayTime), by lane.", metrics.DurationBuckets, "lane"),
		execution:   reg.Histogram("comfyfleet_worker_execution_seconds", "Execution time of the attempts this worker ran, by outcome (a terminal status, or RETRIED).", metrics.DurationBuckets, "status"),
		retries:     reg.Counter("comfyfleet_worker_retries_total", "Attempts this worker put back on the queue to be retried."),
		comfyErrors: reg.Counter("comfyfleet_worker_comfyui_errors_total", "Failed attempts by ComfyUI error class.", "class"),
		routedJobs: reg.Counter("comfyfleet_worker_routed_jobs_total", "Jobs naming models this worker claimed, by how ready it was for them: "+
			"warm (all in its warm set), cached (every model by URL in its model cache), cold.", "tier"),
		handbacks: reg.Counter("comfyfleet_worker_handbacks_total", "Jobs this worker handed back because another idle worker of the pool was readier for their models, by that worker's tier.", "to"),
		modelFetch: reg.Counter("comfyfleet_worker_model_fetches_total", "Models by URL the attempts of this worker fetched from its model cache, by result: "+
			"downloaded (this attempt downloaded it, or waited on the download another one started), cached (on disk already).", "result"),
	}
	m.idle.since = time.Now()
	reg.CounterFunc("comfyfleet_worker_gpu_idle_seconds_total", "Seconds this worker ran no job since it started: its GPU's idle time.", nil,
		func(context.Context) ([]metrics.Sample, error) {
			return []metrics.Sample{{Value: m.idle.seconds(time.Now())}}, nil
		})
	return m
}

// claimed records the start of an attempt, which ran ends.
func (m *Metrics) claimed(rec *proto.Record) {
	if m == nil {
		return
	}
	m.idle.start(time.Now())
	if rec == nil || rec.SubmittedAt.IsZero() || rec.StartedAt.IsZero() {
		return
	}
	m.queueWait.ObserveDuration(rec.DelayTime(), string(rec.Lane))
}

// ran records an attempt's end: status is terminal, or "" for a retry.
func (m *Metrics) ran(status proto.Status, took time.Duration) {
	if m == nil {
		return
	}
	m.idle.stop(time.Now())
	label := string(status)
	if status == "" {
		label = "RETRIED"
		m.retries.Inc()
	} else {
		m.jobs.Inc(label)
	}
	m.execution.ObserveDuration(took, label)
}

// routed counts a claimed job that names models by the worker's tier.
func (m *Metrics) routed(t fleet.Tier) {
	if m == nil {
		return
	}
	m.routedJobs.Inc(t.String())
}

// modelFetched counts a model by URL an attempt fetched from the cache.
func (m *Metrics) modelFetched(downloaded bool) {
	if m == nil {
		return
	}
	if downloaded {
		m.modelFetch.Inc("downloaded")
	} else {
		m.modelFetch.Inc("cached")
	}
}

// handedBack counts a job handed back to a worker of tier t.
func (m *Metrics) handedBack(t fleet.Tier) {
	if m == nil {
		return
	}
	m.handbacks.Inc(t.String())
}

// failedWith counts an execution error by its class.
func (m *Metrics) failedWith(err, cause error) {
	if m == nil || (err == nil && cause == nil) {
		return
	}
	m.comfyErrors.Inc(errorClass(err, cause))
}

// errorClass names the kind of a failed attempt, following classify.
func errorClass(err, cause error) string {
	var (
		verr *comfy.ValidationError
		xerr *comfy.ExecutionError
		ierr *comfy.InterruptedError
		serr *comfy.StatusError
	)
	switch {
	case errors.Is(cause, errCancelled):
		return "cancelled"
	case errors.Is(cause, errTimedOut):
		return "timeout"
	case errors.Is(cause, errStalled):
		return "stall"
	case errors.Is(cause, errComfyDown), errors.Is(err, comfy.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, comfy.ErrPromptLost), errors.Is(err, comfy.ErrNoHistoryEntry):
		return "prompt_lost"
	case errors.As(err, &verr):
		return "validation"
	case errors.As(err, &xerr) && xerr.IsOOM():
		return "oom"
	case errors.As(err, &xerr):
		return "execution"
	case errors.As(err, &ierr):
		return "interrupted"
	case errors.As(err, &serr):
		return "http"
	case cause != nil:
		return "stopped"
	}
	var ferr *failure
	if errors.As(err, &ferr) {
		return "input"
	}
	return "other"
}
