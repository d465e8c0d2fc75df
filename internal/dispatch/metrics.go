package dispatch

import (
	"context"
	"sync"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Metrics are the dispatcher's Prometheus series. The fleet-wide ones
// (jobs by status, queue depth, oldest age and jobs per minute per lane,
// dead letters, workers by state) are read from the fleet view at scrape time, so every
// replica reports the same values; the counters are this replica's.
type Metrics struct {
	Registry *metrics.Registry
	// Admitted counts jobs admitted, by pool and lane.
	Admitted *metrics.Counter
	// Duplicates counts submissions for an id that already had a record,
	// dropped without changing it.
	Duplicates *metrics.Counter
	// AdmissionFailures counts submissions the optional admission checks
	// recorded FAILED, by reason ("no_models").
	AdmissionFailures *metrics.Counter
	// WebhookDeliveries counts webhook deliveries by result: delivered,
	// retried, failed (out of retries), refused (SSRF guard, bad URL).
	WebhookDeliveries *metrics.Counter
}

// ViewReader reads the fleet view.
type ViewReader func(ctx context.Context) (*fleet.View, error)

// NewMetrics registers the dispatcher's series on reg; view may be nil
// (no fleet-wide series).
func NewMetrics(reg *metrics.Registry, view ViewReader) *Metrics {
	m := &Metrics{
		Registry:          reg,
		Admitted:          reg.Counter("comfyfleet_jobs_admitted_total", "Jobs admitted by this dispatcher, by pool and lane.", "pool", "lane"),
		Duplicates:        reg.Counter("comfyfleet_submissions_duplicate_total", "Submissions for a job id that already had a record, dropped by this dispatcher."),
		AdmissionFailures: reg.Counter("comfyfleet_admission_failures_total", "Submissions failed by the admission checks, by reason (no_models).", "reason"),
		WebhookDeliveries: reg.Counter("comfyfleet_webhook_deliveries_total", "Webhook delivery attempts by result (delivered, retried, failed, refused).", "result"),
	}
	if view == nil {
		return m
	}
	// One scrape reads the view once for all the families below.
	c := &viewCache{read: view, ttl: time.Second}
	each := func(fn func(v *fleet.View) []metrics.Sample) func(ctx context.Context) ([]metrics.Sample, error) {
		return func(ctx context.Context) ([]metrics.Sample, error) {
			v, err := c.get(ctx)
			if err != nil {
				return nil, err
			}
			return fn(v), nil
		}
	}
	reg.CounterFunc("comfyfleet_jobs_total", "Jobs that reached each terminal status, and RETRIED, fleet-wide.", []string{"status"},
		each(func(v *fleet.View) (out []metrics.Sample) {
			// Every terminal status from 0, so that rates and dashboards
			// see a series before its first job.
			for _, s := range []proto.Status{proto.StatusCompleted, proto.StatusFailed, proto.StatusCancelled, proto.StatusTimedOut} {
				if _, ok := v.Totals[s]; !ok {
					out = append(out, metrics.Sample{Labels: []string{string(s)}})
				}
			}
			for s, n := range v.Totals {
				out = append(out, metrics.Sample{Labels: []string{string(s)}, Value: float64(n)})
			}
			return out
		}))
	lanes := func(value func(l queue.LaneDepth, now time.Time) float64) func(v *fleet.View) []metrics.Sample {
		return func(v *fleet.View) (out []metrics.Sample) {
			now := time.Now()
			for _, l := range v.Lanes {
				out = append(out, metrics.Sample{Labels: []string{l.Pool, string(l.Lane)}, Value: value(l, now)})
			}
			return out
		}
	}
	reg.GaugeFunc("comfyfleet_queue_depth", "Jobs waiting for a worker, by pool and lane.", []string{"pool", "lane"},
		each(lanes(func(l queue.LaneDepth, _ time.Time) float64 { return float64(l.Queued) })))
	reg.GaugeFunc("comfyfleet_queue_held", "Of the jobs waiting, those fair share holds for their tenant's turn, by pool and lane.", []string{"pool", "lane"},
		each(lanes(func(l queue.LaneDepth, _ time.Time) float64 { return float64(l.Held) })))
	reg.GaugeFunc("comfyfleet_queue_running", "Jobs held by a worker, by pool and lane.", []string{"pool", "lane"},
		each(lanes(func(l queue.LaneDepth, _ time.Time) float64 { return float64(l.Running) })))
	reg.GaugeFunc("comfyfleet_queue_oldest_age_seconds", "Age of the oldest job waiting, by pool and lane (0 when none waits).", []string{"pool", "lane"},
		each(lanes(func(l queue.LaneDepth, now time.Time) float64 { return l.OldestAge(now).Seconds() })))
	reg.GaugeFunc("comfyfleet_lane_jobs_per_minute", "Jobs that ended per minute over about the last minute, by pool and lane.", []string{"pool", "lane"},
		each(func(v *fleet.View) (out []metrics.Sample) {
			for _, l := range v.Lanes {
				out = append(out, metrics.Sample{Labels: []string{l.Pool, string(l.Lane)}, Value: v.JobsPerMin[l.Pool+"/"+string(l.Lane)]})
			}
			return out
		}))
	reg.GaugeFunc("comfyfleet_intake_depth", "Submissions no dispatcher has read yet.", nil,
		each(func(v *fleet.View) []metrics.Sample { return []metrics.Sample{{Value: float64(v.Intake)}} }))
	reg.GaugeFunc("comfyfleet_dlq_size", "Dead letters kept in CF_DLQ.", nil,
		each(func(v *fleet.View) []metrics.Sample { return []metrics.Sample{{Value: float64(v.DLQ)}} }))
	reg.GaugeFunc("comfyfleet_workers", "Live workers by pool and state.", []string{"pool", "state"},
		each(func(v *fleet.View) (out []metrics.Sample) {
			n := map[[2]string]int{}
			for _, w := range v.Workers {
				n[[2]string{w.Pool, w.State}]++
			}
			for k, c := range n {
				out = append(out, metrics.Sample{Labels: k[:], Value: float64(c)})
			}
			return out
		}))
	return m
}

type viewCache struct {
	read ViewReader
	ttl  time.Duration

	mu  sync.Mutex
	at  time.Time
	v   *fleet.View
	err error
}

func (c *viewCache) get(ctx context.Context) (*fleet.View, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < c.ttl {
		return c.v, c.err
	}
	c.v, c.err = c.read(ctx)
	c.at = time.Now()
	return c.v, c.err
}
