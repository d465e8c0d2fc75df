// Command runpod-adapter serves RunPod's endpoint API (/run, /runsync,
// /status, /health, under /v2/{endpoint_id}/ and bare) in front of a
// comfyfleet fleet, so RunPod clients work against it unchanged.
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/logging"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
)

type config struct {
	backend     backend.Config
	api         runpod.Config
	listen      string
	apiKeysFile string
	logLevel    string
}

func main() {
	var cfg config
	fs := settings(&cfg)
	fs.ParseOrExit(os.Args[1:])
	if cfg.apiKeysFile != "" {
		keys, err := readKeys(cfg.apiKeysFile)
		if err != nil {
			fs.Exit("API_KEYS_FILE", err)
		}
		cfg.api.APIKeys = append(cfg.api.APIKeys, keys...)
	}
	log, err := logging.New(cfg.logLevel)
	if err != nil {
		fs.Exit("LOG_LEVEL", err)
	}
	defer log.Sync()
	cfg.backend.Name, cfg.backend.Logger = "runpod-adapter", log

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("runpod-adapter failed", zap.Error(err))
		os.Exit(1)
	}
}

// run serves the API until ctx ends, then drains in-flight requests.
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, err := backend.Open(startCtx, cfg.backend)
	if err != nil {
		return err
	}
	defer b.Close()
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("LISTEN_ADDR: %w", err)
	}
	srv := &http.Server{
		Handler:           runpod.NewAPI(cfg.api, b.Queue, b.Status, b.Blobs, b.Fleet, log),
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("runpod-adapter listening", zap.String("addr", ln.Addr().String()), zap.Int("api_keys", len(cfg.api.APIKeys)))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// /runsync may hold a request up to its wait; give them a while.
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

func readKeys(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var keys []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k := strings.TrimSpace(sc.Text()); k != "" && !strings.HasPrefix(k, "#") {
			keys = append(keys, k)
		}
	}
	return keys, sc.Err()
}

// settings binds every setting of the binary to a flag and a variable.
func settings(cfg *config) *flagenv.Set {
	fs := flagenv.New("runpod-adapter", "runpod-adapter serves RunPod's endpoint API in front of a comfyfleet fleet (api mode).")
	fs.String(&cfg.backend.NATSURL, "nats-url", "NATS_URL", backend.DefaultNATSURL, "NATS server")
	fs.String(&cfg.backend.RedisURL, "redis-url", "REDIS_URL", backend.DefaultRedisURL, "Redis server")
	fs.String(&cfg.listen, "listen", "LISTEN_ADDR", ":8000", "address of the endpoint API")
	fs.List(&cfg.api.APIKeys, "api-keys", "API_KEYS", nil, "accepted API keys, comma-separated; none = no authentication")
	fs.String(&cfg.apiKeysFile, "api-keys-file", "API_KEYS_FILE", "", "file with one accepted API key per line")
	fs.Duration(&cfg.api.RunRetention, "run-retention", "RUN_RETENTION", 30*time.Minute, "how long /run results are kept")
	fs.Duration(&cfg.api.SyncRetention, "sync-retention", "SYNC_RETENTION", time.Minute, "how long /runsync results are kept")
	fs.String(&cfg.logLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	return fs
}
