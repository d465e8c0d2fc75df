package bench

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDistOf(t *testing.T) {
	t.Parallel()
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[99-i] = float64(i + 1) // unsorted on purpose
	}
	tests := []struct {
		name string
		in   []float64
		want Dist
	}{
		{name: "empty", in: nil, want: Dist{}},
		{name: "one", in: []float64{2.5}, want: Dist{N: 1, Mean: 2.5, Min: 2.5, P50: 2.5, P90: 2.5, P99: 2.5, Max: 2.5}},
		{name: "nearest rank", in: hundred, want: Dist{N: 100, Mean: 50.5, Min: 1, P50: 50, P90: 90, P99: 99, Max: 100}},
		{name: "negative differences", in: []float64{-1, 3, 1}, want: Dist{N: 3, Mean: 1, Min: -1, P50: 1, P90: 3, P99: 3, Max: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, distOf(tt.in))
		})
	}
}

// TestDecodeSpans reads ComfyUI's history shape: a finished prompt, one
// that failed, one still without an end, and one without a status.
func TestDecodeSpans(t *testing.T) {
	t.Parallel()
	body := []byte(`{
	  "b": {"prompt": [2, "b", {"3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615}}}, {}, ["9"]], "outputs": {}, "status": {"status_str": "success", "completed": true,
	        "messages": [["execution_start", {"prompt_id": "b", "timestamp": 1700000000210}],
	                     ["execution_cached", {"nodes": [], "prompt_id": "b", "timestamp": 1700000000210}],
	                     ["execution_success", {"prompt_id": "b", "timestamp": 1700000000305}]]}},
	  "a": {"prompt": [1, "a", {}, {}, ["9"]], "outputs": {}, "status": {"status_str": "error", "completed": false,
	        "messages": [["execution_start", {"prompt_id": "a", "timestamp": 1700000000100}],
	                     ["execution_error", {"prompt_id": "a", "timestamp": 1700000000207}]]}},
	  "c": {"prompt": [3, "c", {}, {}, ["9"]], "outputs": {}, "status": {"status_str": "success", "completed": false,
	        "messages": [["execution_start", {"prompt_id": "c", "timestamp": 1700000000306}]]}},
	  "d": {"prompt": [4, "d", {}, {}, ["9"]], "outputs": {}, "status": null}
	}`)
	spans, err := decodeSpans(body)
	require.NoError(t, err)
	require.Equal(t, []promptSpan{{ID: "a", Start: 1700000000100, End: 1700000000207}, {ID: "b", Start: 1700000000210, End: 1700000000305, Seed: "18446744073709551615"}}, spans)

	_, err = decodeSpans([]byte(`[]`))
	require.Error(t, err)
}

func TestParseStatus(t *testing.T) {
	t.Parallel()
	ok := "Name:\tgpuworker\nVmHWM:\t   57344 kB\nVmRSS:\t   40960 kB\nRssAnon:\t   30720 kB\nRssFile:\t   10240 kB\n"
	m, err := parseStatus(7, []byte(ok))
	require.NoError(t, err)
	require.Equal(t, status{rss: 40 << 20, hwm: 56 << 20, anon: 30 << 20}, m)

	for name, in := range map[string]string{
		"no RssAnon": "VmHWM:\t1 kB\nVmRSS:\t1 kB\n",
		"not kB":     "VmHWM:\t1 MB\nVmRSS:\t1 kB\nRssAnon:\t1 kB\n",
		"not a size": "VmHWM:\tx kB\nVmRSS:\t1 kB\nRssAnon:\t1 kB\n",
		"negative":   "VmHWM:\t-1 kB\nVmRSS:\t1 kB\nRssAnon:\t1 kB\n",
	} {
		_, err := parseStatus(7, []byte(in))
		require.ErrorContains(t, err, "/proc/7/status", name)
	}
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("VmHWM:\t57344 kB\nVmRSS:\t40960 kB\nRssAnon:\t30720 kB\n"))
	f.Add([]byte("VmRSS: 1 kB\n"))
	f.Add([]byte("VmRSS:\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseStatus(1, data)
		if err != nil {
			require.Contains(t, err.Error(), "/proc/1/status")
			return
		}
		require.True(t, m.rss >= 0 && m.hwm >= 0 && m.anon >= 0, "%+v", m)
	})
}
