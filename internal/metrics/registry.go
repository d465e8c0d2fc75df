package metrics

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Registry holds metric families in the order they were registered.
type Registry struct {
	mu       sync.Mutex
	families []*family
	names    map[string]bool
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{names: map[string]bool{}} }

type kind string

const (
	kindCounter   kind = "counter"
	kindGauge     kind = "gauge"
	kindHistogram kind = "histogram"
)

type family struct {
	name, help string
	kind       kind
	labels     []string
	buckets    []float64 // histograms

	mu     sync.Mutex
	series map[string]*series // by joined label values
	read   func(ctx context.Context) ([]Sample, error)
}

type series struct {
	values []string
	mu     sync.Mutex
	value  float64
	counts []uint64 // histograms: per bucket, not cumulative
	sum    float64
	count  uint64
}

// Sample is one value of a gauge read at scrape time; Labels are the
// label values in the family's label order.
type Sample struct {
	Labels []string
	Value  float64
}

func (r *Registry) add(f *family) *family {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names[f.name] {
		panic("metrics: " + f.name + " registered twice")
	}
	r.names[f.name] = true
	f.series = map[string]*series{}
	r.families = append(r.families, f)
	return f
}

func (f *family) with(values []string) *series {
	if len(values) != len(f.labels) {
		panic(fmt.Sprintf("metrics: %s takes %d label values, got %d", f.name, len(f.labels), len(values)))
	}
	key := strings.Join(values, "\xff")
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.series[key]
	if s == nil {
		s = &series{values: slices.Clone(values)}
		if f.kind == kindHistogram {
			s.counts = make([]uint64, len(f.buckets))
		}
		f.series[key] = s
	}
	return s
}

// Counter is a family of counters.
type Counter struct{ f *family }

// Counter registers a counter family.
func (r *Registry) Counter(name, help string, labels ...string) *Counter {
	return &Counter{r.add(&family{name: name, help: help, kind: kindCounter, labels: labels})}
}

// Add adds v (≥ 0) to the series of the label values.
func (c *Counter) Add(v float64, labelValues ...string) {
	s := c.f.with(labelValues)
	s.mu.Lock()
	s.value += v
	s.mu.Unlock()
}

// Inc adds 1 to the series of the label values.
func (c *Counter) Inc(labelValues ...string) { c.Add(1, labelValues...) }

// Gauge is a family of gauges set by the program.
type Gauge struct{ f *family }

// Gauge registers a gauge family.
func (r *Registry) Gauge(name, help string, labels ...string) *Gauge {
	return &Gauge{r.add(&family{name: name, help: help, kind: kindGauge, labels: labels})}
}

// Set sets the series of the label values.
func (g *Gauge) Set(v float64, labelValues ...string) {
	s := g.f.with(labelValues)
	s.mu.Lock()
	s.value = v
	s.mu.Unlock()
}

// GaugeFunc registers a gauge family whose samples read returns at every
// scrape; a scrape whose read fails leaves the family out and says so in a
// comment.
func (r *Registry) GaugeFunc(name, help string, labels []string, read func(ctx context.Context) ([]Sample, error)) {
	r.add(&family{name: name, help: help, kind: kindGauge, labels: labels, read: read})
}

// Histogram is a family of histograms.
type Histogram struct{ f *family }

// DurationBuckets suit job times in seconds, from 10 ms to 1 hour.
var DurationBuckets = []float64{0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// Histogram registers a histogram family with the given upper bounds
// (sorted; +Inf is implied).
func (r *Registry) Histogram(name, help string, buckets []float64, labels ...string) *Histogram {
	b := slices.Clone(buckets)
	sort.Float64s(b)
	return &Histogram{r.add(&family{name: name, help: help, kind: kindHistogram, labels: labels, buckets: b})}
}

// Observe records v in the series of the label values.
func (h *Histogram) Observe(v float64, labelValues ...string) {
	s := h.f.with(labelValues)
	i := sort.SearchFloat64s(h.f.buckets, v) // first bound ≥ v
	s.mu.Lock()
	if i < len(s.counts) {
		s.counts[i]++
	}
	s.sum += v
	s.count++
	s.mu.Unlock()
}

// ObserveDuration records d in seconds.
func (h *Histogram) ObserveDuration(d time.Duration, labelValues ...string) {
	h.Observe(d.Seconds(), labelValues...)
}

// Write writes every family in the text exposition format.
func (r *Registry) Write(ctx context.Context, w io.Writer) error {
	r.mu.Lock()
	fams := slices.Clone(r.families)
	r.mu.Unlock()
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		f.write(ctx, bw)
	}
	return bw.Flush()
}

func (f *family) write(ctx context.Context, w *bufio.Writer) {
	var list []*series
	if f.read != nil {
		samples, err := f.read(ctx)
		if err != nil {
			fmt.Fprintf(w, "# %s not read: %s\n", f.name, strings.ReplaceAll(err.Error(), "\n", " "))
			return
		}
		for _, s := range samples {
			if len(s.Labels) == len(f.labels) {
				list = append(list, &series{values: s.Labels, value: s.Value})
			}
		}
	} else {
		f.mu.Lock()
		for _, s := range f.series {
			list = append(list, s)
		}
		f.mu.Unlock()
	}
	sort.Slice(list, func(i, j int) bool { return slices.Compare(list[i].values, list[j].values) < 0 })
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", f.name, escapeHelp(f.help), f.name, f.kind)
	for _, s := range list {
		s.mu.Lock()
		if f.kind != kindHistogram {
			fmt.Fprintf(w, "%s%s %s\n", f.name, labelText(f.labels, s.values, "", ""), formatFloat(s.value))
			s.mu.Unlock()
			continue
		}
		var cum uint64
		for i, b := range f.buckets {
			cum += s.counts[i]
			fmt.Fprintf(w, "%s_bucket%s %d\n", f.name, labelText(f.labels, s.values, "le", formatFloat(b)), cum)
		}
		fmt.Fprintf(w, "%s_bucket%s %d\n", f.name, labelText(f.labels, s.values, "le", "+Inf"), s.count)
		fmt.Fprintf(w, "%s_sum%s %s\n", f.name, labelText(f.labels, s.values, "", ""), formatFloat(s.sum))
		fmt.Fprintf(w, "%s_count%s %d\n", f.name, labelText(f.labels, s.values, "", ""), s.count)
		s.mu.Unlock()
	}
}

func labelText(names, values []string, extraName, extraValue string) string {
	if len(names) == 0 && extraName == "" {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n)
		b.WriteString(`="`)
		b.WriteString(escapeValue(values[i]))
		b.WriteByte('"')
	}
	if extraName != "" {
		if len(names) > 0 {
			b.WriteByte(',')
		}
		b.WriteString(extraName + `="` + extraValue + `"`)
	}
	b.WriteByte('}')
	return b.String()
}

var (
	valueEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeValue(s string) string { return valueEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// Handler serves the registry on GET; scrape-time reads are bounded by
// 10 s.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_ = r.Write(ctx, w)
	})
}

// CounterFunc registers a counter family whose samples read returns at
// every scrape (a total kept elsewhere, e.g. in Redis).
func (r *Registry) CounterFunc(name, help string, labels []string, read func(ctx context.Context) ([]Sample, error)) {
	r.add(&family{name: name, help: help, kind: kindCounter, labels: labels, read: read})
}
