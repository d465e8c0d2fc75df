// Command dispatcher is comfyfleet's control plane: it admits submissions
// from the intake stream, records them, and routes them to their pool and
// lane; it times out, hands back and dead-letters jobs, delivers webhooks
// and serves the fleet view. Run two or more; they share the work.
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
	role   role.DispatcherConfig
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

// run starts the dispatcher and stops it when ctx ends.
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	b, err := cfg.common.Open(ctx, "dispatcher", log)
	if err != nil {
		return err
	}
	defer b.Close()
	d, err := role.NewDispatcher(cfg.role, b, metrics.NewRegistry(), log)
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	d.Stop()
	return nil
}

// settings binds every setting of the binary to a flag and a variable.
func settings(cfg *config) *flagenv.Set {
	fs := flagenv.New("dispatcher", "dispatcher admits comfyfleet jobs from NATS (CF_SUBMIT), records them in Redis and routes\nthem to their pool and lane (CF_JOBS). Run two or more replicas.")
	cfg.common.Bind(fs)
	cfg.role.Bind(fs)
	return fs
}
