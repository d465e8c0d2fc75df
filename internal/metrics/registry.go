package metrics

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
)

// readTimeout bounds the scrape-time reads of GaugeFunc and CounterFunc.
const readTimeout = 10 * time.Second

// Registry is a Prometheus registry holding the Go and process collectors
// and the families the program registers.
type Registry struct {
	reg *prometheus.Registry

	mu    sync.Mutex
	names []string // the program's families, in registration order
}

// NewRegistry returns a registry with the Go runtime's and the process's
// collectors (go_*, process_*) registered.
func NewRegistry() *Registry {
	r := &Registry{reg: prometheus.NewRegistry()}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// register adds c, panicking on a name registered twice (a programming
// error, as client_golang's MustRegister treats it).
func (r *Registry) register(name string, c prometheus.Collector) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Contains(r.names, name) {
		panic("metrics: " + name + " registered twice")
	}
	r.reg.MustRegister(c)
	r.names = append(r.names, name)
}

// Names lists the families the program registered (not go_* and
// process_*), in registration order: what dashboards may name.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.names)
}

// Gatherer is the registry as client_golang gathers it.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Counter is a family of counters.
type Counter struct{ v *prometheus.CounterVec }

// Counter registers a counter family. Series with labels appear at their
// first Add, as client_golang serves them.
func (r *Registry) Counter(name, help string, labels ...string) *Counter {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	r.register(name, v)
	if len(labels) == 0 {
		v.WithLabelValues() // a family without labels is served from 0
	}
	return &Counter{v}
}

// Add adds v (≥ 0) to the series of the label values.
func (c *Counter) Add(v float64, labelValues ...string) { c.v.WithLabelValues(labelValues...).Add(v) }

// Inc adds 1 to the series of the label values.
func (c *Counter) Inc(labelValues ...string) { c.v.WithLabelValues(labelValues...).Inc() }

// Gauge is a family of gauges set by the program.
type Gauge struct{ v *prometheus.GaugeVec }

// Gauge registers a gauge family.
func (r *Registry) Gauge(name, help string, labels ...string) *Gauge {
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	r.register(name, v)
	if len(labels) == 0 {
		v.WithLabelValues()
	}
	return &Gauge{v}
}

// Set sets the series of the label values.
func (g *Gauge) Set(v float64, labelValues ...string) { g.v.WithLabelValues(labelValues...).Set(v) }

// Histogram is a family of histograms.
type Histogram struct{ v *prometheus.HistogramVec }

// DurationBuckets suit job times in seconds, from 10 ms to 1 hour.
var DurationBuckets = []float64{0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// Histogram registers a histogram family with the given upper bounds
// (+Inf is implied).
func (r *Registry) Histogram(name, help string, buckets []float64, labels ...string) *Histogram {
	b := slices.Clone(buckets)
	sort.Float64s(b)
	v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: b}, labels)
	r.register(name, v)
	return &Histogram{v}
}

// Observe records v in the series of the label values.
func (h *Histogram) Observe(v float64, labelValues ...string) {
	h.v.WithLabelValues(labelValues...).Observe(v)
}

// ObserveDuration records d in seconds.
func (h *Histogram) ObserveDuration(d time.Duration, labelValues ...string) {
	h.Observe(d.Seconds(), labelValues...)
}

// Sample is one value of a family read at scrape time; Labels are the
// label values in the family's label order.
type Sample struct {
	Labels []string
	Value  float64
}

// GaugeFunc registers a gauge family whose samples read returns at every
// scrape (bounded by 10 s). A scrape whose read fails serves the other
// families and reports the error (promhttp's ContinueOnError); a sample
// with the wrong number of label values is left out.
func (r *Registry) GaugeFunc(name, help string, labels []string, read func(ctx context.Context) ([]Sample, error)) {
	r.register(name, &funcCollector{desc: prometheus.NewDesc(name, help, labels, nil), typ: prometheus.GaugeValue, n: len(labels), read: read})
}

// CounterFunc registers a counter family whose samples read returns at
// every scrape (a total kept elsewhere, e.g. in Redis), as GaugeFunc.
func (r *Registry) CounterFunc(name, help string, labels []string, read func(ctx context.Context) ([]Sample, error)) {
	r.register(name, &funcCollector{desc: prometheus.NewDesc(name, help, labels, nil), typ: prometheus.CounterValue, n: len(labels), read: read})
}

// funcCollector is a family read at scrape time.
type funcCollector struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	n    int
	read func(ctx context.Context) ([]Sample, error)
}

func (f *funcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }

func (f *funcCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	samples, err := f.read(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(f.desc, fmt.Errorf("read: %w", err))
		return
	}
	for _, s := range samples {
		if len(s.Labels) != f.n {
			continue
		}
		ch <- prometheus.MustNewConstMetric(f.desc, f.typ, s.Value, s.Labels...)
	}
}

// Write writes every family in the Prometheus text format (0.0.4), as a
// scrape would get it; a family whose read fails is left out.
func (r *Registry) Write(_ context.Context, w io.Writer) error {
	fams, err := r.reg.Gather()
	if err != nil && len(fams) == 0 {
		return err
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range fams {
		if err := enc.Encode(mf); err != nil {
			return fmt.Errorf("encode %s: %w", mf.GetName(), err)
		}
	}
	return nil
}

// Handler serves the registry on GET through promhttp, which negotiates
// the text or the protobuf format and compresses when asked; families
// whose reads fail are left out and the others served.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, Timeout: readTimeout + 5*time.Second})
}
