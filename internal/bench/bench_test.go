package bench_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/bench"
	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/internal/worker"
)

// tiny is a configuration of the smallest sizes that still measure
// something, on the stacks' shared test Redis under the test's prefix.
func tiny(t *testing.T, scenario string) bench.Config {
	t.Helper()
	_, prefix := testenv.Redis(t)
	return bench.Config{
		Scenarios: []string{scenario}, JSONPath: filepath.Join(t.TempDir(), "bench.json"), Dir: t.TempDir(),
		RedisURL: testenv.RedisURL(), KeyPrefix: prefix,
		Pairs: 3, Workers: 2, Jobs: 3, Clients: 2, GapJobs: 3, StepDelay: time.Millisecond,
		Backlog: 5, Interactive: 3, Rate: 50, InteractiveWorkers: 2,
		MixedWorkers: 2, MixedJobs: 8, Models: 2, LoadDelay: 20 * time.Millisecond, MixedSeed: 7,
		TenantWorkers: 2, TenantBacklog: 40, TenantJobs: 3, TenantRate: 20,
		Timeout: 2 * time.Minute, Logger: zaptest.NewLogger(t), Out: &bytes.Buffer{},
	}
}

// run runs cfg and returns the report as written to its JSON file.
func run(t *testing.T, cfg bench.Config) *bench.Report {
	t.Helper()
	_, err := bench.Run(testenv.Context(t, 3*time.Minute), cfg)
	require.NoError(t, err, "output:\n%s", cfg.Out)
	data, err := os.ReadFile(cfg.JSONPath)
	require.NoError(t, err)
	var rep bench.Report
	require.NoError(t, json.Unmarshal(data, &rep), "the JSON has the report's types")
	require.Empty(t, rep.Errors)
	require.Empty(t, rep.Skipped)
	require.NotEmpty(t, rep.GoVersion)
	require.Positive(t, rep.GOMAXPROCS)
	require.Positive(t, rep.NumCPU)
	require.Equal(t, cfg.Scenarios, rep.Settings.Scenarios)

	return &rep
}

// requireDist checks a distribution of n values is ordered.
func requireDist(t *testing.T, name string, d bench.Dist, n int) {
	t.Helper()
	require.Equal(t, n, d.N, name)
	require.True(t, d.Min <= d.P50 && d.P50 <= d.P90 && d.P90 <= d.P99 && d.P99 <= d.Max,
		"%s: min %v p50 %v p90 %v p99 %v max %v", name, d.Min, d.P50, d.P90, d.P99, d.Max)
	require.True(t, d.Min <= d.Mean && d.Mean <= d.Max, "%s: mean %v", name, d.Mean)
}

func TestOverhead(t *testing.T) {
	t.Parallel()
	cfg := tiny(t, "overhead")
	cfg.S3 = true
	rep := run(t, cfg)
	res := rep.Overhead
	require.NotNil(t, res)
	require.Equal(t, 3, res.Pairs)
	requireDist(t, "floor", res.Floor, 3)
	requireDist(t, "stack", res.Stack, 3)
	requireDist(t, "stack delay", res.StackDelay, 3)
	requireDist(t, "stack execution", res.StackExecution, 3)
	require.Equal(t, 3, res.Diff.N)
	require.Positive(t, res.Floor.Min)
	require.Positive(t, res.FloorBytes, "the floor read the image")
	require.Positive(t, res.StackBytes, "the stack returned the image")
	require.NotNil(t, res.Steps, "the in-process stack's events and history split the time by step")
	for name, d := range map[string]bench.Dist{"admit": res.Steps.Admit, "pickup": res.Steps.Pickup, "queue": res.Steps.Queue,
		"prompt": res.Steps.Prompt, "finish": res.Steps.Finish, "answer": res.Steps.Answer,
		"floor prompt": res.Steps.FloorPrompt, "floor client": res.Steps.FloorClient} {
		requireDist(t, name, d, 3)
	}
	require.Equal(t, "base64", res.ItemType, "without S3 the answer inlines the image")

	// --s3: the same pairs again, the workers' outputs on versitygw.
	require.NotNil(t, res.S3)
	require.True(t, res.S3.Run, res.S3.Note)
	require.Contains(t, res.S3.Note, "versitygw")
	s3res := res.S3.Result
	require.NotNil(t, s3res)
	requireDist(t, "s3 floor", s3res.Floor, 3)
	requireDist(t, "s3 stack", s3res.Stack, 3)
	require.Equal(t, "s3_url", s3res.ItemType, "with S3 the answer holds the object's URL")
	require.Positive(t, s3res.StackBytes, "the bench downloaded the image from S3")
	require.Nil(t, s3res.S3)
	out := cfg.Out.(*bytes.Buffer).String()
	require.Contains(t, out, "difference per pair")
	require.Contains(t, out, "with S3: the workers upload to a versitygw")
}

// TestOverheadWithoutVersitygw: --s3 without the binary says why in the
// table and the JSON, and runs the rest.
func TestOverheadWithoutVersitygw(t *testing.T) {
	t.Setenv("VERSITYGW", filepath.Join(t.TempDir(), "no-versitygw"))
	cfg := tiny(t, "overhead")
	cfg.S3, cfg.Pairs = true, 1
	res := run(t, cfg).Overhead
	require.NotNil(t, res)
	require.NotNil(t, res.S3)
	require.False(t, res.S3.Run)
	require.Nil(t, res.S3.Result)
	require.Contains(t, res.S3.Note, "versitygw not found")
	require.Contains(t, cfg.Out.(*bytes.Buffer).String(), "with S3: not run: versitygw not found")
}

// TestMemory runs the memory scenario tiny: each measured role runs in a
// process of its own (this test binary, re-executed) and its resident
// memory is read; the worker's output lands whole in S3.
func TestMemory(t *testing.T) {
	t.Parallel()
	cfg := tiny(t, "memory")
	cfg.OutputMB, cfg.Queued, cfg.FleetWorkers, cfg.Waiters = 20, 40, 3, 5
	res := run(t, cfg).Memory
	require.NotNil(t, res)
	require.Empty(t, res.NotRun)
	require.Contains(t, res.Method, "process of its own")
	requireRSS := func(name string, m bench.RSS) {
		t.Helper()
		require.Positive(t, m.Idle, name)
		require.GreaterOrEqual(t, m.Peak, m.Idle, name)
		require.GreaterOrEqual(t, m.HWM, m.Peak, name)
		require.Positive(t, m.End, name)
		require.Greater(t, m.Samples, 1, name)
	}

	w := res.Worker
	require.NotNil(t, w)
	require.Equal(t, "COMPLETED", w.Status)
	require.Equal(t, int64(20<<20), w.OutputBytes)
	require.Equal(t, w.OutputBytes, w.StoredBytes, "the whole output is in the bucket")
	require.Positive(t, w.Seconds)
	requireRSS("worker", w.RSS)

	d := res.Dispatcher
	require.NotNil(t, d)
	require.Equal(t, 40, d.Queued)
	require.Equal(t, 3, d.Workers)
	require.Equal(t, 40, d.Admitted)
	require.Len(t, d.AtQuarter, 4)
	requireRSS("dispatcher", d.RSS)

	a := res.Adapter
	require.NotNil(t, a)
	require.Equal(t, 5, a.Waiters)
	require.Equal(t, 5, a.Admitted)
	require.Zero(t, a.AnsweredEarly, "the waiters' jobs never end while measured")
	requireRSS("adapter", a.RSS)

	out := cfg.Out.(*bytes.Buffer).String()
	require.Contains(t, out, "gpuworker")
	require.Contains(t, out, "runpod-adapter")
}

func TestThroughput(t *testing.T) {
	t.Parallel()
	cfg := tiny(t, "throughput")
	cfg.CPUProfile = filepath.Join(t.TempDir(), "cpu.pprof")
	res := run(t, cfg).Throughput
	require.NotNil(t, res)
	require.Equal(t, 2, res.Workers)
	for name, p := range map[string]bench.PathResult{"batch": res.Batch, "run": res.Run} {
		require.Equal(t, 3, p.Sent, name)
		require.Equal(t, 3, p.Completed, name)
		require.Zero(t, p.Failed, name)
		require.Zero(t, p.Refused, name)
		require.Positive(t, p.Seconds, name)
		require.Positive(t, p.JobsPerSecond, name)
		require.Positive(t, p.CPUMillisPerJob, name)
		require.LessOrEqual(t, p.SubmitSeconds, p.Seconds, name)
		requireDist(t, name+" admitted", p.Admitted, 3)
		requireDist(t, name+" finished", p.Finished, 3)
		require.False(t, p.Incomplete, name)
	}
	require.Contains(t, res.CPUScope, "whole stack")
	st, err := os.Stat(cfg.CPUProfile)
	require.NoError(t, err)
	require.Positive(t, st.Size(), "a CPU profile was written")
}

func TestIdleGap(t *testing.T) {
	t.Parallel()
	res := run(t, tiny(t, "idle-gap")).IdleGap
	require.NotNil(t, res)
	require.Equal(t, 3, res.Jobs)
	require.Equal(t, 3, res.Prompts, "every queued job is in the history")
	requireDist(t, "job length", res.JobLength, 3)
	requireDist(t, "gap", res.Gap, 2)
	require.NotNil(t, res.Finish, "the jobs' events split the gaps")
	requireDist(t, "finish", *res.Finish, 2)
	requireDist(t, "take", *res.Take, 2)
	requireDist(t, "start", *res.Start, 2)
	require.GreaterOrEqual(t, res.Gap.Min, 0.0)
	require.Zero(t, res.Prefetch, "as --prefetch 0 asks")
	require.Contains(t, res.PrefetchNote, "set by --prefetch")
	require.True(t, res.BusyShare > 0 && res.BusyShare <= 1, "busy share %v", res.BusyShare)
}

func TestInteractive(t *testing.T) {
	t.Parallel()
	cfg := tiny(t, "interactive")
	cfg.Prefetch = -1 // the worker's default
	res := run(t, cfg).Interactive
	require.NotNil(t, res)
	require.Equal(t, worker.DefaultPrefetch, res.Prefetch)
	require.Contains(t, res.PrefetchNote, "default")
	require.Equal(t, 5, res.Backlog)
	require.Equal(t, 3, res.Completed)
	require.Zero(t, res.Failed+res.Refused)
	requireDist(t, "queue wait", res.QueueWait, 3)
	requireDist(t, "latency", res.Latency, 3)
	require.NotNil(t, res.SlotWait)
	requireDist(t, "slot wait", *res.SlotWait, 3)
	require.LessOrEqual(t, res.BacklogDoneAtStart, res.BacklogDoneAtEnd)
	require.LessOrEqual(t, res.BacklogDoneAtEnd, res.Backlog)
}

// TestTenants runs tenant B's jobs behind tenant A's backlog with fair
// share on and off: off, B's last job starts only once A's backlog has
// (nearly) run, every A job having gone to a worker first; on, B's jobs
// are served in their turn, with most of A's backlog still queued.
func TestTenants(t *testing.T) {
	t.Parallel()
	cfg := tiny(t, "tenants")
	res := run(t, cfg).Tenants
	require.NotNil(t, res)
	require.Equal(t, 40, res.Backlog)
	for name, r := range map[string]bench.TenantsRun{"fair share": res.On, "fifo": res.Off} {
		requireDist(t, name+" wait", r.Wait, 3)
		require.Positive(t, r.JobMS, name)
		require.NotEmpty(t, r.Setting, name)
	}
	// Off, every A job was taken before B's last: at most each worker's
	// running and prefetched ones (2 a worker) had not ended, and as many
	// again may have ended with their event still on its way.
	require.GreaterOrEqual(t, res.Off.BacklogDone, res.Backlog-2*2*res.Workers, "fifo: B waits behind A's whole backlog")
	require.Less(t, res.On.BacklogDone, res.Backlog/2, "fair share: B's jobs go ahead of most of A's backlog")
}

// TestMixedModels runs the jobs model-aware and model-blind: every job
// ends, the loads the emulators counted are the loads the jobs' placement
// implies, and no run loads fewer models than there are. By URL as well:
// the full downloads the file server counted are the files the workers'
// caches hold, at least one a model and at most one a job.
func TestMixedModels(t *testing.T) {
	t.Parallel()
	cfg := tiny(t, "mixed-models")
	cfg.ByURL = true
	res := run(t, cfg).Mixed
	require.NotNil(t, res)
	require.Equal(t, 8, res.Jobs)
	require.Len(t, res.JobsPerModel, 2)
	require.Equal(t, 8, res.JobsPerModel[0]+res.JobsPerModel[1])
	require.Equal(t, 2, res.Oracle.MinLoads, "seed 7 gives both checkpoints jobs")
	require.Equal(t, 2, res.Oracle.Loads)
	require.InDelta(t, 20.0, res.LoadDelayMS, 0)
	require.Positive(t, res.Oracle.MakespanBoundSeconds)
	require.LessOrEqual(t, res.Oracle.MakespanBoundSeconds, res.Oracle.MakespanSeconds)
	for name, r := range map[string]bench.MixedRun{"aware": res.Aware, "blind": res.Blind} {
		require.Equal(t, 8, r.Completed, name)
		require.Zero(t, r.Failed, name)
		require.Len(t, r.LoadsPerWorker, 2, name)
		require.Equal(t, r.Loads, r.LoadsPerWorker[0]+r.LoadsPerWorker[1], name)
		require.GreaterOrEqual(t, r.Loads, int64(res.Oracle.MinLoads), name)
		require.LessOrEqual(t, r.Loads, int64(8), name)
		require.EqualValues(t, r.Loads, r.ReplayedLoads, "%s: the emulators' count is the placement's", name)
		sum := 0
		for _, n := range r.JobsPerWorker {
			sum += n
		}
		require.Equal(t, 8, sum, name)
		require.Positive(t, r.MakespanSeconds, name)
	}
	require.Equal(t, "WARM_DEFER=-1ms", res.Blind.Setting)
	require.InDelta(t, float64(res.Aware.Loads)/2, res.AwareRatio, 0.001)

	u := res.ByURL
	require.NotNil(t, u, "--by-url reports the runs by URL")
	require.Equal(t, 2, u.MinDownloads)
	require.Equal(t, res.Oracle.Loads, u.OracleDownloads)
	require.Positive(t, u.FileBytes)
	for name, r := range map[string]bench.MixedURLRun{"aware by URL": u.Aware, "blind by URL": u.Blind} {
		require.Equal(t, 8, r.Completed, name)
		require.Zero(t, r.Failed, name)
		require.Len(t, r.CachedPerWorker, 2, name)
		require.Equal(t, r.CachedFiles, r.CachedPerWorker[0]+r.CachedPerWorker[1], name)
		require.Equal(t, r.CachedFiles, r.Downloads, "%s: the file server's full downloads are the files the caches hold", name)
		require.GreaterOrEqual(t, r.Downloads, u.MinDownloads, name)
		require.LessOrEqual(t, r.Downloads, 8, name)
		require.GreaterOrEqual(t, r.GETs, r.Downloads, name)
		for _, n := range r.CachedPerWorker {
			require.LessOrEqual(t, n, 2, "%s: a worker fetches a model once", name)
		}
		require.GreaterOrEqual(t, r.Loads, int64(u.MinDownloads), name)
		require.LessOrEqual(t, r.Loads, int64(8), name)
		require.Positive(t, r.MakespanSeconds, name)
	}
	require.Equal(t, "WARM_DEFER=-1ms", u.Blind.Setting)
	out := cfg.Out.(*bytes.Buffer).String()
	require.Contains(t, out, "by URL:")
	require.Contains(t, out, "downloads")
}

// TestRunningStack: pointed at a running stack, the bench starts none and
// runs what the URLs allow; the other scenarios say what they lack.
func TestRunningStack(t *testing.T) {
	t.Parallel()
	_, prefix := testenv.Redis(t)
	dc, err := devstack.ConfigFrom(nil)
	require.NoError(t, err)
	dc.Dir, dc.Listen, dc.NATSPort, dc.Workers, dc.StepDelay = t.TempDir(), "127.0.0.1:0", -1, 1, -1
	dc.RedisURL, dc.Common.KeyPrefix, dc.Worker.Worker.Grace = testenv.RedisURL(), prefix, 5*time.Second
	_, err = dc.Finish()
	require.NoError(t, err)
	dc.Logger = zaptest.NewLogger(t)
	stack, err := devstack.Start(testenv.Context(t, time.Minute), dc)
	require.NoError(t, err)
	t.Cleanup(stack.Stop)

	var out bytes.Buffer
	cfg := bench.Config{Scenarios: []string{"overhead", "idle-gap"}, JSONPath: filepath.Join(t.TempDir(), "bench.json"),
		APIURL: stack.Info.APIURL, ComfyUIURL: stack.Info.ComfyUIURLs[0], Pairs: 2, Out: &out}
	_, err = bench.Run(testenv.Context(t, 2*time.Minute), cfg)
	require.NoError(t, err, out.String())
	data, err := os.ReadFile(cfg.JSONPath)
	require.NoError(t, err)
	var rep bench.Report
	require.NoError(t, json.Unmarshal(data, &rep))
	require.Equal(t, "external", rep.Stack)
	require.NotNil(t, rep.Overhead)
	requireDist(t, "stack", rep.Overhead.Stack, 2)
	require.Nil(t, rep.Overhead.Steps, "without --nats-url there are no events to split the time by")
	require.Nil(t, rep.IdleGap)
	require.Contains(t, rep.Skipped["idle-gap"], "--nats-url")
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     bench.Config
		wantErr string
	}{
		{name: "defaults", cfg: bench.Config{}},
		{name: "some scenarios", cfg: bench.Config{Scenarios: []string{"idle-gap", "overhead"}}},
		{name: "unknown scenario", cfg: bench.Config{Scenarios: []string{"speed"}}, wantErr: `scenario "speed" is unknown`},
		{name: "negative waiters", cfg: bench.Config{Waiters: -1}, wantErr: "waiters: -1 is negative"},
		{name: "negative", cfg: bench.Config{Jobs: -1}, wantErr: "jobs: -1 is negative"},
		{name: "negative models", cfg: bench.Config{Models: -2}, wantErr: "models: -2 is negative"},
		{name: "odd size", cfg: bench.Config{Size: 60}, wantErr: "size: 60 is not a multiple of 8"},
		{name: "redis with a running stack", cfg: bench.Config{APIURL: "http://127.0.0.1:8000", RedisURL: "redis://x"}, wantErr: "redis url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.cfg.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}
