// Command runpod-adapter is where the fleet meets RunPod. It runs in one of
// two modes:
//
//   - api mode (the default): RunPod's endpoint API (/run, /runsync,
//     /status, /status-sync, /stream, /cancel, /retry, /purge-queue,
//     /health, under /v2/{endpoint_id}/ and bare) in front of the fleet, so
//     RunPod clients work against it unchanged; with --job-take it also
//     serves the worker-side routes (job-take, job-done, ping, …) so that
//     RunPod's own Python workers can join the fleet.
//   - serverless mode, chosen as RunPod's SDK chooses it, by
//     RUNPOD_WEBHOOK_GET_JOB being set: inside a RunPod worker container it
//     takes the RunPod endpoint's jobs and runs them on the fleet.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/role"
)

type config struct {
	common role.Common
	role   role.AdapterConfig
}

func main() {
	var cfg config
	fs := settings(&cfg)
	fs.ParseOrExit(os.Args[1:])
	if setting, err := cfg.finish(); err != nil {
		fs.Exit(setting, err)
	}
	log, _ := cfg.common.Logger()
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		_ = log.Sync()
		fs.Fail(err) // one line on stderr, no log record with a stack
	}
}

func (c *config) finish() (string, error) {
	if s, err := c.common.Finish(); err != nil {
		return s, err
	}
	return c.role.Finish()
}

// run serves until ctx ends (or, in serverless mode, until the worker
// ends by itself after refresh_worker).
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	// In serverless mode the adapter is a RunPod worker: it waits for its
	// fleet, logging why it cannot reach it, instead of exiting into
	// RunPod's restart loop. In api mode it fails fast, as the dispatcher
	// does: it runs beside the fleet, under a supervisor that shows the
	// error and restarts it.
	open := cfg.common.Open
	if cfg.role.ServerlessMode() {
		open = cfg.common.OpenRetrying
	}
	b, err := open(ctx, "runpod-adapter", log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before the fleet was reachable", zap.Error(err))
			return nil
		}
		return err
	}
	defer b.Close()
	a, err := role.NewAdapter(cfg.role, b, metrics.NewRegistry(), role.AdapterOptions{}, log)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-a.Done():
		// refresh_worker: the process exits so RunPod starts a fresh one.
	}
	a.Stop()
	return nil
}

// settings binds every setting of the binary to a flag and a variable.
func settings(cfg *config) *flagenv.Set {
	fs := flagenv.New("runpod-adapter", "runpod-adapter serves RunPod's endpoint API in front of a comfyfleet fleet (api mode),\n"+
		"optionally with the job-take routes RunPod's Python workers call (--job-take). When\n"+
		"RUNPOD_WEBHOOK_GET_JOB is set, as inside a RunPod serverless worker, it runs in serverless\n"+
		"mode instead: it takes the RunPod endpoint's jobs and runs them on the fleet.")
	cfg.common.Bind(fs)
	cfg.role.Bind(fs)
	return fs
}
