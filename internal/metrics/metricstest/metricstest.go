// Package metricstest scrapes a /metrics endpoint in tests and parses it
// with Prometheus's own text parser (prometheus/common/expfmt), so a test
// asserts what Prometheus would read, not a string it happens to contain.
package metricstest

import (
	"io"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

// Families maps a family's name to what Prometheus parsed of it.
type Families map[string]*dto.MetricFamily

// Parse parses the text exposition format, failing the test on any error.
func Parse(t testing.TB, r io.Reader) Families {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(r)
	require.NoError(t, err, "the exposition parses as Prometheus parses it")
	return fams
}

// Scrape GETs url (with the headers given as name, value pairs), requires
// 200 and the text format, and parses the answer.
func Scrape(t testing.TB, url string, header ...string) Families {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		require.Failf(t, "scrape", "GET %s: %d %s", url, resp.StatusCode, body)
	}
	require.Equal(t, expfmt.TypeTextPlain, expfmt.ResponseFormat(resp.Header).FormatType(), resp.Header.Get("Content-Type"))
	return Parse(t, resp.Body)
}

// Series is the series of the family whose labels are exactly labels (name,
// value pairs), or nil.
func (f Families) Series(name string, labels ...string) *dto.Metric {
	fam := f[name]
	if fam == nil {
		return nil
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, m := range fam.GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		match := true
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; !ok || v != l.GetValue() {
				match = false
			}
		}
		if match {
			return m
		}
	}
	return nil
}

// Value is the value of a counter's, gauge's or untyped series, or a
// histogram's sample count; the test fails when the series is missing.
func (f Families) Value(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	m := f.Series(name, labels...)
	require.NotNil(t, m, "%s%v is served (families: %d)", name, labels, len(f))
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	require.Fail(t, "unknown metric type", name)
	return 0
}

// Type is the family's type, failing the test when it is not served.
func (f Families) Type(t testing.TB, name string) dto.MetricType {
	t.Helper()
	require.Contains(t, f, name, "%s is served", name)
	return f[name].GetType()
}
