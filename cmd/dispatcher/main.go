// Command dispatcher is comfyfleet's control plane: it admits submissions
// from the intake stream, records them, and routes them to their pool and
// lane. Run two or more; they share the intake consumer.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/logging"
)

type config struct {
	backend  backend.Config
	dispatch dispatch.Config
	logLevel string
}

func main() {
	var cfg config
	fs := settings(&cfg)
	fs.ParseOrExit(os.Args[1:])
	if err := cfg.dispatch.Validate(); err != nil {
		fs.Exit("POOL", err)
	}
	log, err := logging.New(cfg.logLevel)
	if err != nil {
		fs.Exit("LOG_LEVEL", err)
	}
	defer log.Sync()
	cfg.backend.Name, cfg.backend.Logger = "dispatcher", log

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("dispatcher failed", zap.Error(err))
		os.Exit(1)
	}
}

// run starts the dispatcher and stops it when ctx ends.
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, err := backend.Open(startCtx, cfg.backend)
	if err != nil {
		return err
	}
	defer b.Close()
	d, err := dispatch.New(cfg.dispatch, b.Queue, b.Status, log)
	if err != nil {
		return err
	}
	if err := d.Start(startCtx); err != nil {
		return err
	}
	log.Info("dispatcher running")
	<-ctx.Done()
	d.Stop()
	return nil
}

// settings binds every setting of the binary to a flag and a variable.
func settings(cfg *config) *flagenv.Set {
	fs := flagenv.New("dispatcher", "dispatcher admits comfyfleet jobs from NATS (CF_SUBMIT), records them in Redis and routes\nthem to their pool and lane (CF_JOBS). Run two or more replicas.")
	fs.String(&cfg.backend.NATSURL, "nats-url", "NATS_URL", backend.DefaultNATSURL, "NATS server")
	fs.String(&cfg.backend.RedisURL, "redis-url", "REDIS_URL", backend.DefaultRedisURL, "Redis server")
	fs.String(&cfg.dispatch.DefaultPool, "pool", "POOL", "default", "pool of jobs that name none")
	fs.String(&cfg.logLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	return fs
}
