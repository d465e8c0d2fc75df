package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/bench"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/logging"
)

// benchSettings binds the settings of `comfyfleet bench`. The URLs are
// flags only: a NATS_URL exported for the other commands must not turn
// the bench against a deployment unasked.
func benchSettings(c *bench.Config, logLevel *string) *flagenv.Set {
	fs := flagenv.New("comfyfleet bench", benchSummary())
	fs.String(&c.JSONPath, "json", "", "", "file for every figure as JSON, with the commit, Go version and CPUs; empty: ./bench-<date>-<time>.json")
	fs.String(&c.Dir, "dir", "", "", "folder for the stacks' data, a folder per scenario; empty: a temporary folder, removed at the end")
	fs.String(&c.CPUProfile, "cpuprofile", "", "", "write a CPU profile of the whole run to this file (go tool pprof -top FILE)")
	fs.String(&c.APIURL, "api-url", "", "", "RunPod-compatible API of a running stack: start none (overhead, throughput, interactive)")
	fs.String(&c.NATSURL, "nats-url", "", "", "NATS of a running stack: start none (throughput, idle-gap, interactive)")
	fs.String(&c.NATSAuth.CredsFile, "nats-creds", "", "", "--nats-url's credentials file (.creds)")
	fs.String(&c.NATSAuth.NKeySeedFile, "nats-nkey-seed-file", "", "", "--nats-url's NKEY seed file")
	fs.String(&c.NATSAuth.User, "nats-user", "", "", "--nats-url's user (with --nats-password-file)")
	fs.String(&c.NATSAuth.PasswordFile, "nats-password-file", "", "", "file holding the password of --nats-user")
	fs.String(&c.NATSAuth.TLS.CA, "nats-tls-ca", "", "", "PEM CA of --nats-url's server certificate (TLS)")
	fs.String(&c.NATSAuth.TLS.Cert, "nats-tls-cert", "", "", "PEM client certificate for --nats-url (with --nats-tls-key)")
	fs.String(&c.NATSAuth.TLS.Key, "nats-tls-key", "", "", "PEM private key of --nats-tls-cert")
	fs.String(&c.ComfyUIURL, "comfyui-url", "", "", "ComfyUI of a running stack's only worker: start none (overhead's floor, idle-gap)")
	fs.String(&c.RedisURL, "redis-url", "", "", "Redis for the stacks the bench starts, under a key prefix of the run's own; empty: embedded")
	fs.Int(&c.Pairs, "pairs", "", 200, "overhead: measured pairs of sequential jobs (floor, then stack)")
	fs.Int(&c.Size, "size", "", 64, "every job's image: width and height, a multiple of 8")
	fs.Bool(&c.S3, "s3", "", false, "overhead: run it again with the workers' outputs on S3 (a versitygw the bench starts: $VERSITYGW, PATH or GOPATH/bin)")
	fs.Int(&c.Workers, "workers", "", 32, "throughput: workers, each on a zero-time emulator")
	fs.Int(&c.Jobs, "jobs", "", 10000, "throughput: jobs through each path")
	fs.Int(&c.Clients, "clients", "", 64, "throughput: concurrent HTTP clients posting to /run")
	fs.Int(&c.GapJobs, "gap-jobs", "", 50, "idle-gap: jobs queued on the one worker")
	fs.Int(&c.Prefetch, "prefetch", "", -1, "idle-gap, interactive: the workers' PREFETCH (jobs taken and queued in ComfyUI beyond the running one); negative: the worker's default (1); 0: none")
	fs.Duration(&c.StepDelay, "step-delay", "", bench.DefaultStepDelay, "idle-gap, interactive, tenants, mixed-models: emulator time per sampler step, 20 steps a job (0: 5ms; negative: none)")
	fs.Int(&c.Backlog, "backlog", "", 10000, "interactive: batch jobs queued first")
	fs.Int(&c.Interactive, "interactive", "", 100, "interactive: /run jobs sent while the backlog runs")
	fs.Int(&c.Rate, "rate", "", 5, "interactive: /run jobs per second")
	fs.Int(&c.InteractiveWorkers, "interactive-workers", "", 8, "interactive: workers, each on an emulator")
	fs.Int(&c.TenantWorkers, "tenant-workers", "", 4, "tenants: workers, each on an emulator")
	fs.Int(&c.TenantBacklog, "tenant-backlog", "", 2000, "tenants: tenant A's batch jobs, queued first")
	fs.Int(&c.TenantJobs, "tenant-jobs", "", 20, "tenants: tenant B's jobs, sent one at a time once the backlog is admitted")
	fs.Int(&c.TenantRate, "tenant-rate", "", 4, "tenants: tenant B's jobs per second")
	fs.Int(&c.MixedWorkers, "mixed-workers", "", 4, "mixed-models: workers, each on an emulator that holds one checkpoint in VRAM")
	fs.Int(&c.MixedJobs, "mixed-jobs", "", 60, "mixed-models: jobs of each run (model-aware, model-blind)")
	fs.Int(&c.Models, "models", "", 3, "mixed-models: checkpoints the jobs are spread over")
	fs.Duration(&c.LoadDelay, "load-delay", "", bench.DefaultLoadDelay, "mixed-models: emulator time to load a checkpoint not in VRAM (0: 2s; negative: none)")
	fs.Int64(&c.MixedSeed, "mixed-seed", "", 1, "mixed-models: seed of the jobs' order of checkpoints")
	fs.Bool(&c.ByURL, "by-url", "", false, "mixed-models: run it again with the jobs naming their checkpoints by URL (a loopback file server), each worker fetching into its own model cache: the downloads and loads saved")
	fs.Int(&c.OutputMB, "output-mb", "", 1024, "memory: MiB of the output the worker streams to S3")
	fs.Int(&c.Queued, "queued", "", 100000, "memory: jobs queued in the dispatcher")
	fs.Int(&c.FleetWorkers, "fleet-workers", "", 100, "memory: simulated workers heartbeating while the jobs queue")
	fs.Int(&c.Waiters, "waiters", "", 1000, "memory: concurrent /runsync requests the adapter holds")
	fs.Duration(&c.Timeout, "timeout", "", bench.DefaultTimeout, "longest run of one scenario")
	fs.String(logLevel, "log-level", "LOG_LEVEL", "error", "log level of the stacks (logs go to stderr)")
	return fs
}

// benchSummary is the help's first paragraph, with the scenarios.
func benchSummary() string {
	var b strings.Builder
	b.WriteString("comfyfleet bench [SCENARIO…] [settings] measures the fleet and prints a table per scenario;\n" +
		"it writes every figure to --json for comparing commits, and never passes or fails.\n" +
		"By default it starts its own stack in this process (embedded NATS and Redis, emulators),\n" +
		"one per scenario; --api-url, --nats-url and --comfyui-url point it at a running stack\n" +
		"instead, where a scenario can use one. Scenarios (default: all):\n\n")
	for _, s := range bench.Scenarios {
		fmt.Fprintf(&b, "  %-12s %s\n  %-12s (a running stack: %s)\n", s.Name, s.About, "", s.Needs)
	}
	return strings.TrimRight(b.String(), "\n")
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const name = "comfyfleet bench"
	var c bench.Config
	var logLevel string
	fs := benchSettings(&c, &logLevel)
	pos, code, ok := parse(name, fs, args, -1, stdout, stderr)
	if !ok {
		return code
	}
	c.Scenarios = pos
	if err := c.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return exitUsage
	}
	if setting, err := c.NATSAuth.Check(); err != nil {
		fmt.Fprintf(stderr, "%s: %s: %v\n", name, strings.ToLower(strings.ReplaceAll("--"+setting, "_", "-")), err)
		return exitUsage
	}
	log, err := logging.New(logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "%s: LOG_LEVEL: %v\n", name, err)
		return exitUsage
	}
	defer log.Sync()
	c.Logger, c.Out = log, stdout
	if _, err := bench.Run(ctx, c); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		if ctx.Err() != nil {
			return exitInterrupted
		}
		return exitNotAllDone
	}
	return exitOK
}
