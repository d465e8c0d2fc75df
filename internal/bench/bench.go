package bench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
)

// Config configures a run. The zero value of every field is its default.
type Config struct {
	// Scenarios are the scenarios to run, by name, in this order; empty
	// means all of Scenarios.
	Scenarios []string `json:"scenarios"`
	// JSONPath is where the report is written; "" means
	// ./bench-<date>-<time>.json.
	JSONPath string `json:"-"`
	// Dir holds the stacks' data (NATS store, emulator files), one folder
	// per scenario; "" means a new temporary folder, removed at the end.
	Dir string `json:"-"`
	// CPUProfile, when set, is written with the CPU profile of the whole
	// run (go tool pprof -top FILE).
	CPUProfile string `json:"cpu_profile,omitempty"`

	// APIURL, NATSURL and ComfyUIURL name a running stack: when any is
	// set, the bench starts no stack, and each scenario runs with the
	// URLs it needs or is skipped, saying which are missing. ComfyUIURL
	// is the ComfyUI of the stack's (only) worker: the floor of overhead
	// and the executor idle-gap reads.
	APIURL  string `json:"api_url,omitempty"`
	NATSURL string `json:"nats_url,omitempty"`
	// NATSAuth are the credentials and TLS files of NATSURL's server.
	NATSAuth   backend.NATSAuth `json:"-"`
	ComfyUIURL string           `json:"comfyui_url,omitempty"`
	// RedisURL is the Redis of the stacks the bench starts; "" embeds one
	// (miniredis), as comfyfleet dev does. KeyPrefix goes before their
	// keys.
	RedisURL  string `json:"redis_url,omitempty"`
	KeyPrefix string `json:"-"`

	// Pairs is the number of measured job pairs of overhead; 0 means 200.
	Pairs int `json:"pairs"`
	// Size is the width and height of the image the jobs of overhead and
	// throughput make; 0 means 64.
	Size int `json:"size"`
	// S3 asks overhead for its S3 variant too.
	S3 bool `json:"s3"`

	// Workers is the number of workers of throughput; 0 means 32.
	Workers int `json:"workers"`
	// Jobs is the number of jobs of each path of throughput; 0 means
	// 10,000.
	Jobs int `json:"jobs"`
	// Clients is the number of concurrent HTTP clients of throughput's
	// /run path; 0 means 64.
	Clients int `json:"clients"`

	// GapJobs is the number of queued jobs of idle-gap; 0 means 50.
	GapJobs int `json:"gap_jobs"`
	// Prefetch is the workers' PREFETCH in idle-gap and interactive;
	// negative leaves it unset, at the worker's default
	// (worker.DefaultPrefetch, 1). Zero is none, the default before.
	Prefetch int `json:"prefetch"`
	// StepDelay is the emulator's time per sampler step in idle-gap,
	// interactive, tenants and mixed-models (the jobs have 20 steps); 0 means 5 ms (jobs of about
	// 100 ms), negative means none.
	StepDelay time.Duration `json:"step_delay_ns"`

	// Backlog is the number of batch jobs queued before interactive's
	// jobs arrive; 0 means 10,000.
	Backlog int `json:"backlog"`
	// Interactive is the number of interactive jobs; 0 means 100.
	Interactive int `json:"interactive"`
	// Rate is the arrivals per second of interactive jobs; 0 means 5.
	Rate int `json:"rate"`
	// InteractiveWorkers is the number of workers of interactive; 0
	// means 8.
	InteractiveWorkers int `json:"interactive_workers"`

	// MixedWorkers is the number of workers of mixed-models; 0 means 4.
	MixedWorkers int `json:"mixed_workers"`
	// MixedJobs is the number of jobs of each run of mixed-models; 0
	// means 60.
	MixedJobs int `json:"mixed_jobs"`
	// Models is the number of checkpoints the jobs of mixed-models are
	// spread over; 0 means 3.
	Models int `json:"models"`
	// LoadDelay is the emulators' model load time in mixed-models; 0
	// means 2 s, negative means none.
	LoadDelay time.Duration `json:"load_delay_ns"`
	// MixedSeed seeds the order of mixed-models' checkpoints; 0 means 1.
	MixedSeed int64 `json:"mixed_seed"`
	// ByURL runs mixed-models twice more with the jobs naming their
	// checkpoints by URL, on a loopback file server that counts the
	// downloads, each worker fetching into its own model cache.
	ByURL bool `json:"by_url,omitempty"`
	// OutputMB is the size of the output the worker streams to S3 in
	// memory, in MiB; 0 means 1,024.
	OutputMB int `json:"output_mb"`
	// Queued is the number of jobs the dispatcher holds in memory; 0
	// means 100,000. FleetWorkers is the number of simulated workers
	// heartbeating meanwhile; 0 means 100.
	Queued       int `json:"queued"`
	FleetWorkers int `json:"fleet_workers"`
	// Waiters is the number of concurrent /runsync requests the adapter
	// holds in memory; 0 means 1,000.
	Waiters int `json:"waiters"`

	// TenantWorkers is the number of workers of tenants; 0 means 4.
	// TenantBacklog is tenant A's batch jobs, queued first; 0 means
	// 2,000. TenantJobs is tenant B's jobs, sent TenantRate a second;
	// 0 means 20 and 4.
	TenantWorkers int `json:"tenant_workers"`
	TenantBacklog int `json:"tenant_backlog"`
	TenantJobs    int `json:"tenant_jobs"`
	TenantRate    int `json:"tenant_rate"`

	// Timeout bounds each scenario; 0 means 10 minutes.
	Timeout time.Duration `json:"timeout_ns"`

	// Logger receives the stacks' logs; nil means none.
	Logger *zap.Logger `json:"-"`
	// Out receives the tables; nil means os.Stdout.
	Out io.Writer `json:"-"`
}

// Defaults of the settings that are durations.
const (
	DefaultStepDelay = 5 * time.Millisecond
	DefaultLoadDelay = 2 * time.Second
	DefaultTimeout   = 10 * time.Minute
)

// External reports whether the configuration names a running stack.
func (c Config) External() bool {
	return c.APIURL != "" || c.NATSURL != "" || c.ComfyUIURL != ""
}

// Validate names the first setting that cannot be used.
func (c Config) Validate() error {
	for _, name := range c.Scenarios {
		if _, ok := lookup(name); ok {
			continue
		}
		return fmt.Errorf("scenario %q is unknown; the scenarios are %s", name, strings.Join(names(), ", "))
	}
	for name, v := range map[string]int{"pairs": c.Pairs, "size": c.Size, "workers": c.Workers, "jobs": c.Jobs,
		"clients": c.Clients, "gap jobs": c.GapJobs, "backlog": c.Backlog, "interactive": c.Interactive,
		"rate": c.Rate, "interactive workers": c.InteractiveWorkers,
		"mixed workers": c.MixedWorkers, "mixed jobs": c.MixedJobs, "models": c.Models,
		"output mb": c.OutputMB, "queued": c.Queued, "fleet workers": c.FleetWorkers, "waiters": c.Waiters,
		"tenant workers": c.TenantWorkers, "tenant backlog": c.TenantBacklog, "tenant jobs": c.TenantJobs, "tenant rate": c.TenantRate} {
		if v < 0 {
			return fmt.Errorf("%s: %d is negative", name, v)
		}
	}
	if c.Size%8 != 0 {
		return fmt.Errorf("size: %d is not a multiple of 8 (EmptyLatentImage's step)", c.Size)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("timeout: %v is negative", c.Timeout)
	}
	if c.External() && c.RedisURL != "" {
		return errors.New("redis url: names the Redis of a stack the bench starts; with a running stack (api, nats or comfyui url) the bench reads no Redis")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if len(c.Scenarios) == 0 {
		c.Scenarios = names()
	}
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.Pairs, 200)
	def(&c.Size, 64)
	def(&c.Workers, 32)
	def(&c.Jobs, 10000)
	def(&c.Clients, 64)
	def(&c.GapJobs, 50)
	def(&c.Backlog, 10000)
	def(&c.Interactive, 100)
	def(&c.Rate, 5)
	def(&c.InteractiveWorkers, 8)
	def(&c.MixedWorkers, 4)
	def(&c.MixedJobs, 60)
	def(&c.Models, 3)
	if c.LoadDelay == 0 {
		c.LoadDelay = DefaultLoadDelay
	}
	if c.MixedSeed == 0 {
		c.MixedSeed = 1
	}
	def(&c.OutputMB, 1024)
	def(&c.Queued, 100000)
	def(&c.FleetWorkers, 100)
	def(&c.Waiters, 1000)
	def(&c.TenantWorkers, 4)
	def(&c.TenantBacklog, 2000)
	def(&c.TenantJobs, 20)
	def(&c.TenantRate, 4)
	if c.StepDelay == 0 {
		c.StepDelay = DefaultStepDelay
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.JSONPath == "" {
		c.JSONPath = "bench-" + time.Now().Format("20060102-150405") + ".json"
	}
	return c
}

// Scenario describes one scenario for the command's help.
type Scenario struct {
	Name string
	// About says what it measures.
	About string
	// Needs names the URLs it needs against a running stack.
	Needs string
	run   func(ctx context.Context, r *runner) error
}

// Scenarios lists the scenarios in the order they run by default.
var Scenarios = []Scenario{
	{Name: "overhead", About: "sequential jobs straight to ComfyUI (the floor) and through /runsync, interleaved",
		Needs: "--api-url and --comfyui-url", run: runOverhead},
	{Name: "throughput", About: "jobs/s and CPU ms per job, batch path and /run, on zero-time emulators",
		Needs: "--nats-url and --api-url", run: runThroughput},
	{Name: "idle-gap", About: "one worker, a full queue of fixed-length jobs: ComfyUI's idle time between them",
		Needs: "--nats-url, and --comfyui-url of its one worker", run: runIdleGap},
	{Name: "interactive", About: "a batch backlog, then /run jobs at a steady rate: their queue wait",
		Needs: "--nats-url and --api-url", run: runInteractive},
	{Name: "tenants", About: "tenant A's batch backlog, then tenant B's jobs on the same lane: B's wait with fair share on and off",
		Needs: "a stack of its own (it turns fair share off for the second run)", run: runTenants},
	{Name: "mixed-models", About: "jobs over several checkpoints, VRAM for one: model loads and makespan, model-aware, model-blind and the oracle",
		Needs: "a stack of its own (the emulators count the loads)", run: runMixed},
	{Name: "memory", About: "resident memory of a worker streaming a big output to S3, a dispatcher, an adapter with /runsync waiters",
		Needs: "not run: it measures processes it starts", run: runMemory},
}

func lookup(name string) (Scenario, bool) {
	i := slices.IndexFunc(Scenarios, func(s Scenario) bool { return s.Name == name })
	if i < 0 {
		return Scenario{}, false
	}
	return Scenarios[i], true
}

func names() []string {
	out := make([]string, len(Scenarios))
	for i, s := range Scenarios {
		out[i] = s.Name
	}
	return out
}

// runner is one run's state, handed to every scenario.
type runner struct {
	cfg    Config
	dir    string // root of the stacks' folders
	out    io.Writer
	report *Report
	runID  string // in job ids, so runs against one stack never collide
}

// Run runs the configured scenarios, prints their tables and writes the
// report, also when a scenario could not run or ctx ended. The error
// joins what could not run; the report holds every figure measured.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	cfg = cfg.withDefaults()
	r := &runner{cfg: cfg, out: cfg.Out, runID: randomID()}
	if cfg.RedisURL != "" && cfg.KeyPrefix == "" {
		// A shared Redis: keep this run's records apart.
		r.cfg.KeyPrefix = "bench:" + r.runID + ":"
	}
	r.report = newReport(cfg)

	r.dir = cfg.Dir
	if r.dir == "" && !cfg.External() {
		d, err := os.MkdirTemp("", "comfyfleet-bench-")
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		defer os.RemoveAll(d)
		r.dir = d
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return nil, fmt.Errorf("bench: cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("bench: cpu profile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	r.report.printHeader(r.out)
	var errs []error
	for _, name := range cfg.Scenarios {
		if ctx.Err() != nil {
			break
		}
		sc, _ := lookup(name)
		fmt.Fprintf(r.out, "\n== %s: %s\n", sc.Name, sc.About)
		sctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		err := sc.run(sctx, r)
		cancel()
		var skip skipped
		switch {
		case errors.As(err, &skip):
			r.report.Skipped[name] = string(skip)
			fmt.Fprintf(r.out, "skipped: %s\n", skip)
		case err != nil:
			r.report.Errors[name] = err.Error()
			fmt.Fprintf(r.out, "could not run: %v\n", err)
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	r.report.Finished = time.Now().UTC()
	if err := r.report.write(cfg.JSONPath); err != nil {
		errs = append(errs, err)
	} else {
		fmt.Fprintf(r.out, "\nfigures written to %s\n", cfg.JSONPath)
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, fmt.Errorf("interrupted: %w", err))
	}
	return r.report, errors.Join(errs...)
}

// skipped is a scenario's reason for not running against a running stack.
type skipped string

func (s skipped) Error() string { return string(s) }

// needs returns a skipped error when the running stack the bench was
// pointed at lacks a URL the scenario needs.
func (r *runner) needs(api, nats, comfyUI bool) error {
	if !r.cfg.External() {
		return nil
	}
	var missing []string
	if api && r.cfg.APIURL == "" {
		missing = append(missing, "--api-url")
	}
	if nats && r.cfg.NATSURL == "" {
		missing = append(missing, "--nats-url")
	}
	if comfyUI && r.cfg.ComfyUIURL == "" {
		missing = append(missing, "--comfyui-url")
	}
	if len(missing) == 0 {
		return nil
	}
	return skipped("against a running stack this scenario needs " + strings.Join(missing, " and "))
}

// randomSeed is the first seed of a run's jobs: seeds of different runs
// differ, so an emulator that outlives a run never serves a job from its
// cache.
func randomSeed() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) >> 1
}

func randomID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
