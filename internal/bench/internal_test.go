package bench

import (
	"testing"
	"time"

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

func TestMixedOracle(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	tests := []struct {
		name      string
		perModel  []int
		workers   int
		job, load time.Duration
		want      MixedOracle
	}{
		{name: "even, a spare worker that would not help", perModel: []int{20, 20, 20}, workers: 4, job: 100 * ms, load: 2 * time.Second,
			want: MixedOracle{MinLoads: 3, Loads: 3, WorkersPerModel: []int{1, 1, 1}, MakespanSeconds: 4, MakespanBoundSeconds: 3}},
		{name: "the big model split", perModel: []int{30, 10, 10}, workers: 4, job: 500 * ms, load: 2 * time.Second,
			want: MixedOracle{MinLoads: 3, Loads: 4, WorkersPerModel: []int{2, 1, 1}, MakespanSeconds: 9.5, MakespanBoundSeconds: 7.75}},
		{name: "one model, split as far as it shortens", perModel: []int{0, 3}, workers: 4, job: time.Second, load: time.Second,
			want: MixedOracle{MinLoads: 1, Loads: 3, WorkersPerModel: []int{0, 3}, MakespanSeconds: 2, MakespanBoundSeconds: 2}},
		{name: "fewer workers than models", perModel: []int{5, 5, 5, 5}, workers: 2, job: time.Second, load: time.Second,
			want: MixedOracle{MinLoads: 4, Loads: 4, WorkersPerModel: []int{1, 1, 1, 1}, MakespanSeconds: 12, MakespanBoundSeconds: 12}},
		{name: "no jobs", perModel: []int{0, 0}, workers: 2, job: time.Second, load: time.Second,
			want: MixedOracle{WorkersPerModel: []int{0, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, mixedOracle(tt.perModel, tt.workers, tt.job, tt.load))
		})
	}
}

func TestReplayLoads(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Millisecond) }
	jobs := map[string]jobTrack{
		"a1": {WorkerID: "w1", Started: at(1)}, "b1": {WorkerID: "w1", Started: at(2)}, "a2": {WorkerID: "w1", Started: at(3)},
		"a3": {WorkerID: "w2", Started: at(1)}, "a4": {WorkerID: "w2", Started: at(2)},
		"b2": {}, // never started
	}
	model := map[string]int{"a1": 0, "a2": 0, "a3": 0, "a4": 0, "b1": 1, "b2": 1}
	loads, perWorker := replayLoads(jobs, model)
	require.Equal(t, 4, loads) // w1: a, b, a; w2: a
	require.Equal(t, []int{3, 2}, perWorker)
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
