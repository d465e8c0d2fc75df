// Command gpuworker runs comfyfleet jobs on the one ComfyUI (one GPU) next
// to it: it pulls jobs from its pool, runs them over ComfyUI's HTTP and
// WebSocket API, stores outputs and writes status. SIGTERM drains it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/logging"
	"github.com/comfyfleet/comfyfleet/internal/worker"
)

type config struct {
	backend  backend.Config
	worker   worker.Config
	comfy    comfy.Config
	logLevel string
}

func main() {
	var cfg config
	fs := settings(&cfg)
	fs.ParseOrExit(os.Args[1:])
	if err := cfg.worker.Validate(); err != nil {
		fs.Exit("WORKER_ID/POOL", err)
	}
	if cfg.comfy.ReconnectAttempts == 0 {
		cfg.comfy.ReconnectAttempts = -1 // worker-comfyui: 0 fails at the first drop
	}
	if err := cfg.comfy.Validate(); err != nil {
		fs.Exit("COMFYUI_URL", err)
	}
	log, err := logging.New(cfg.logLevel)
	if err != nil {
		fs.Exit("LOG_LEVEL", err)
	}
	defer log.Sync()
	cfg.backend.Name, cfg.backend.Logger, cfg.comfy.Logger = "gpuworker-"+cfg.worker.ID, log, log

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("gpuworker failed", zap.Error(err))
		os.Exit(1)
	}
}

// run works until ctx ends, then drains: the job in hand finishes within
// the grace period or goes back on the queue. A second signal exits at once.
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, err := backend.Open(startCtx, cfg.backend)
	if err != nil {
		return err
	}
	defer b.Close()
	cc, err := comfy.New(cfg.comfy)
	if err != nil {
		return err
	}
	defer cc.Close()
	w, err := worker.New(cfg.worker, worker.Deps{Queue: b.Queue, Store: b.Status, Blobs: b.Blobs, ComfyUI: cc, Fleet: b.Fleet, Logger: log})
	if err != nil {
		return err
	}
	if err := w.Start(startCtx); err != nil {
		return err
	}
	log.Info("gpuworker running", zap.String("worker_id", cfg.worker.ID), zap.String("comfyui_url", cfg.comfy.BaseURL))
	<-ctx.Done()
	log.Info("draining")
	forced := make(chan os.Signal, 1)
	signal.Notify(forced, os.Interrupt, syscall.SIGTERM)
	go func() { <-forced; log.Warn("second signal, exiting now"); os.Exit(1) }()
	w.Stop()
	return nil
}

// sanitizeID turns a host name into a valid worker id.
func sanitizeID(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "gpuworker"
	}
	return string(b)
}

// settings binds every setting of the binary to a flag and a variable.
func settings(cfg *config) *flagenv.Set {
	host, _ := os.Hostname()
	fs := flagenv.New("gpuworker", "gpuworker runs comfyfleet jobs on the ComfyUI next to it.")
	fs.String(&cfg.backend.NATSURL, "nats-url", "NATS_URL", backend.DefaultNATSURL, "NATS server")
	fs.String(&cfg.backend.RedisURL, "redis-url", "REDIS_URL", backend.DefaultRedisURL, "Redis server")
	fs.String(&cfg.comfy.BaseURL, "comfyui-url", "COMFYUI_URL", "http://127.0.0.1:8188", "the ComfyUI this worker drives")
	fs.String(&cfg.worker.ID, "worker-id", "WORKER_ID", sanitizeID(host), "this worker's id in status records and the fleet registry")
	fs.String(&cfg.worker.Pool, "pool", "POOL", "default", "the pool whose jobs this worker takes")
	fs.String(&cfg.worker.ComfyOrgAPIKey, "comfy-org-api-key", "COMFY_ORG_API_KEY", "", "key for Comfy.org API nodes when the job gives none")
	fs.Int(&cfg.comfy.ReconnectAttempts, "websocket-reconnect-attempts", "WEBSOCKET_RECONNECT_ATTEMPTS", 5, "redials of a dropped ComfyUI WebSocket before the job is given back")
	fs.Seconds(&cfg.comfy.ReconnectDelay, "websocket-reconnect-delay", "WEBSOCKET_RECONNECT_DELAY_S", 3*time.Second, "first delay in seconds between redials (doubles)")
	fs.Duration(&cfg.worker.Grace, "grace", "SHUTDOWN_GRACE", 30*time.Second, "on SIGTERM, how long the job in hand may finish before it is given back")
	fs.String(&cfg.logLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	return fs
}
