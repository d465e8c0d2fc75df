// Command gpuworker runs comfyfleet jobs on the one ComfyUI (one GPU) next
// to it: it pulls jobs from its pool, runs them over ComfyUI's HTTP and
// WebSocket API, stores outputs and writes status. SIGTERM drains it.
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
	"github.com/comfyfleet/comfyfleet/internal/worker"
)

type config struct {
	common role.Common
	role   role.WorkerConfig
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

// run works until ctx ends, then drains: the job in hand finishes within
// the grace period or goes back on the queue. A second signal exits at once.
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	// A worker waits for its fleet (RunPod restarts a worker that exits,
	// in a loop and without saying why): it retries, logging the cause.
	b, err := cfg.common.OpenRetrying(ctx, "gpuworker-"+cfg.role.Worker.ID, log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before the fleet was reachable", zap.Error(err))
			return nil
		}
		return err
	}
	defer b.Close()
	reg := metrics.NewRegistry()
	w, err := role.NewWorker(cfg.role, b, worker.NewMetrics(reg), reg, log)
	if err != nil {
		return err
	}
	if err := w.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("draining")
	forced := make(chan os.Signal, 1)
	signal.Notify(forced, os.Interrupt, syscall.SIGTERM)
	drained := make(chan struct{})
	go func() {
		select {
		case <-forced:
			log.Warn("second signal, exiting now")
			os.Exit(1)
		case <-drained:
		}
	}()
	w.Stop()
	signal.Stop(forced)
	close(drained)
	return nil
}

// settings binds every setting of the binary to a flag and a variable.
func settings(cfg *config) *flagenv.Set {
	fs := flagenv.New("gpuworker", "gpuworker runs comfyfleet jobs on the ComfyUI next to it.")
	cfg.common.Bind(fs)
	cfg.role.Bind(fs)
	return fs
}
