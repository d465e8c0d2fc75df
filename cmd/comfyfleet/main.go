// Command comfyfleet is the operator's tool: `comfyfleet dev` runs the
// whole fleet on this machine in one process; submit, watch, status,
// cancel and fleet work a fleet's batches and jobs (see internal/batch);
// `comfyfleet bench` measures a fleet (see internal/bench).
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

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/logging"
)

const usage = `comfyfleet runs ComfyUI workflows on a fleet of GPUs.

Usage:
  comfyfleet dev [settings]             run the whole fleet on this machine (NATS,
                                        Redis, dispatcher, RunPod-compatible API,
                                        GPU workers)
  comfyfleet submit INPUT [settings]    submit a batch and follow it: INPUT is a
                                        folder of workflows, a .jsonl file of
                                        RunPod inputs, or one workflow with --set
                                        sweeps; run it again to resume
  comfyfleet watch BATCH [settings]     follow a batch again and download results
  comfyfleet status ID|BATCH            show a job or a batch
  comfyfleet cancel ID|BATCH            cancel a job or every unfinished job of a batch
  comfyfleet fleet                      show the workers, lanes and queue depths
  comfyfleet dlq list|replay SEQ…       list the dead letters, or queue them again
  comfyfleet bench [SCENARIO…]          measure the fleet (overhead, throughput,
                                        idle-gap, interactive): tables, and JSON
                                        for comparing commits

Every command but dev and bench finds a running "comfyfleet dev" by itself (its
.comfyfleet/stack.json); for a deployment set NATS_URL and REDIS_URL.

Run "comfyfleet <command> --help" for a command's settings.
`

func main() {
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
	case "submit":
		return submit(ctx, args[1:], stdout, stderr)
	case "watch":
		return watch(ctx, args[1:], stdout, stderr)
	case "status":
		return showStatus(ctx, args[1:], stdout, stderr)
	case "cancel":
		return cancel(ctx, args[1:], stdout, stderr)
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
	var logLevel string
	fs := devSettings(&cfg, &logLevel)
	fs.SetOutput(stderr)
	if err := fs.Parse(args, nil); err != nil {
		if errors.Is(err, flagenv.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "comfyfleet dev: %v\n", err)
		return 2
	}
	log, err := logging.New(logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "comfyfleet dev: LOG_LEVEL: %v\n", err)
		return 2
	}
	defer log.Sync()
	cfg.Logger = log

	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	stack, err := devstack.Start(startCtx, cfg)
	cancel()
	if err != nil {
		log.Error("start", zap.Error(err))
		return 1
	}
	fmt.Fprintf(stdout, "comfyfleet dev is up: API %s, NATS %s, %d worker(s). Try:\n\n"+
		"  curl -s -X POST %s/runsync -H 'Content-Type: application/json' -d @examples/txt2img.json\n\n"+
		"Ctrl-C stops it.\n", stack.Info.APIURL, stack.Info.NATSURL, len(stack.Info.ComfyUIURLs), stack.Info.APIURL)
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping…")
	stack.Stop()
	return 0
}

// devSettings binds the settings of `comfyfleet dev`.
func devSettings(cfg *devstack.Config, logLevel *string) *flagenv.Set {
	fs := flagenv.New("comfyfleet dev", "comfyfleet dev runs the whole fleet on this machine: an embedded NATS server\n"+
		"(unless NATS_URL is set), an embedded Redis-protocol server (unless REDIS_URL is set), one\n"+
		"dispatcher, the RunPod-compatible API and N GPU workers, each on its own ComfyUI emulator\n"+
		"unless --comfyui-url is given. Ctrl-C stops it cleanly.")
	fs.String(&cfg.Listen, "listen", "LISTEN_ADDR", "127.0.0.1:8000", "address of the RunPod-compatible API")
	fs.Int(&cfg.Workers, "workers", "COMFYFLEET_WORKERS", 2, "number of GPU workers (each with its own emulator)")
	fs.List(&cfg.ComfyUIURLs, "comfyui-url", "COMFYUI_URL", nil, "ComfyUI to run jobs on, one worker each (repeatable or comma-separated); none = emulators")
	fs.String(&cfg.NATSURL, "nats-url", "NATS_URL", "", "use this NATS server instead of embedding one")
	fs.String(&cfg.RedisURL, "redis-url", "REDIS_URL", "", "use this Redis server instead of embedding one")
	fs.String(&cfg.Dir, "dir", "COMFYFLEET_DIR", ".comfyfleet", "folder for the embedded NATS data, emulator files and stack.json")
	fs.Duration(&cfg.StepDelay, "step-delay", "COMFYSIM_STEP_DELAY", 0, "emulator time per sampler step (0 = its default, 5ms)")
	fs.String(logLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	return fs
}
