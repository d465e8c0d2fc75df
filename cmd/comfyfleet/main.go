// Command comfyfleet is the operator's tool: `comfyfleet dev` runs the
// whole fleet on this machine in one process, and `comfyfleet standalone`
// runs it inside one worker image container (see internal/standalone);
// submit, watch, status, cancel and fleet work a fleet's batches and jobs
// (see internal/batch); `comfyfleet bench` measures a fleet (see
// internal/bench).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/bench"
	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

const usage = `comfyfleet runs ComfyUI workflows on a fleet of GPUs.

Usage:
  comfyfleet dev [settings]             run the whole fleet on this machine (NATS,
                                        Redis, dispatcher, RunPod-compatible API,
                                        GPU workers)
  comfyfleet standalone [settings]      the worker image's standalone mode: the
                                        fleet in one RunPod serverless worker,
                                        on the container's ComfyUI
  comfyfleet submit INPUT [settings]    submit a batch and follow it: INPUT is a
                                        folder of workflows, a .jsonl file of
                                        RunPod inputs, or one workflow with --set
                                        sweeps; run it again to resume
  comfyfleet watch BATCH [settings]     follow a batch again and download results
  comfyfleet status ID|BATCH            show a job or a batch
  comfyfleet cancel ID|BATCH            cancel a job or every unfinished job of a batch
  comfyfleet get JOB [--out DIR]        download one finished job's files
  comfyfleet fleet                      show the workers, lanes and queue depths
  comfyfleet dlq list|replay SEQ…       list the dead letters, or queue them again
  comfyfleet bench [SCENARIO…]          measure the fleet (overhead, throughput,
                                        idle-gap, interactive): tables, and JSON
                                        for comparing commits

Every command but dev, standalone and bench finds a running "comfyfleet dev" by itself (its
.comfyfleet/stack.json); for a deployment set NATS_URL and REDIS_URL.

Run "comfyfleet <command> --help" for a command's settings.
`

func main() {
	// A role's process of the bench's memory scenario.
	if ok, code := bench.Child(); ok {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "dev":
		return dev(ctx, args[1:], stdout, stderr)
	case "standalone":
		return standaloneMode(ctx, args[1:], stdout, stderr)
	case "submit":
		return submit(ctx, args[1:], stdout, stderr)
	case "watch":
		return watch(ctx, args[1:], stdout, stderr)
	case "status":
		return showStatus(ctx, args[1:], stdout, stderr)
	case "cancel":
		return cancel(ctx, args[1:], stdout, stderr)
	case "get":
		return get(ctx, args[1:], stdout, stderr)
	case "fleet":
		return showFleet(ctx, args[1:], stdout, stderr)
	case "dlq":
		return deadLetters(ctx, args[1:], stdout, stderr)
	case "bench":
		return runBench(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "comfyfleet: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func dev(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg devstack.Config
	fs := devSettings(&cfg)
	fs.SetOutput(stdout, stderr)
	if err := fs.Parse(args, nil); err != nil {
		if errors.Is(err, flagenv.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "comfyfleet dev: %v\n", err)
		return 2
	}
	if setting, err := cfg.Finish(); err != nil {
		fmt.Fprintf(stderr, "comfyfleet dev: %s: %v\n", setting, err)
		return 2
	}
	log, _ := cfg.Common.Logger()
	defer log.Sync()
	cfg.Logger = log

	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	stack, err := devstack.Start(startCtx, cfg)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "comfyfleet dev: %s\n", flagenv.Explain(err))
		return 1
	}
	if stack.Info.NATSFallback {
		fmt.Fprintf(stdout, "NATS port %d is taken; the embedded NATS server listens on %s instead.\n", cfg.NATSPort, stack.Info.NATSURL)
	}
	fmt.Fprintf(stdout, "comfyfleet dev is up: API %s, NATS %s, Redis %s (%s), %d worker(s). Try:\n\n"+
		"  curl -s -X POST %s/runsync -H 'Content-Type: application/json' -d @examples/txt2img.json\n\n"+
		"Fleet view: %s/fleet, dead letters: %s/dlq, metrics: %s/metrics. Ctrl-C stops it.\n",
		stack.Info.APIURL, stack.Info.NATSURL, stack.Info.RedisURL, stack.Info.Redis, len(stack.Info.ComfyUIURLs),
		stack.Info.APIURL, stack.Info.APIURL, stack.Info.APIURL, stack.Info.APIURL)
	if stack.Info.ConsoleURL != "" {
		fmt.Fprintf(stdout, "Web console: %s\n", stack.Info.ConsoleURL)
	}
	select {
	case <-ctx.Done():
	case <-stack.Done():
		fmt.Fprintln(stderr, "comfyfleet dev: the API stopped serving")
	}
	fmt.Fprintln(stdout, "stopping…")
	stack.Stop()
	return 0
}

// devSettings binds the settings of `comfyfleet dev`: its own, then every
// setting of the dispatcher, the gpuworker and the runpod-adapter under
// their binaries' names.
func devSettings(cfg *devstack.Config) *flagenv.Set {
	fs := flagenv.New("comfyfleet dev", "comfyfleet dev runs the whole fleet on this machine: an embedded NATS server\n"+
		"(unless NATS_URL is set), a Redis kept under --dir (unless REDIS_URL is set), one dispatcher,\n"+
		"the RunPod-compatible API and N GPU workers, each on its own ComfyUI emulator unless\n"+
		"--comfyui-url is given. Every setting of the dispatcher, gpuworker and runpod-adapter binaries\n"+
		"applies too, under the same flag and variable (docs/configuration.md); one listener serves\n"+
		"the API and the dispatcher's /fleet, /dlq and /metrics. Ctrl-C stops it cleanly.")
	cfg.Bind(fs)
	return fs
}
