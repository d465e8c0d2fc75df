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
	"bufio"
	"context"
	"errors"
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
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/jobtake"
	"github.com/comfyfleet/comfyfleet/internal/runpod/serverless"
)

type config struct {
	backend     backend.Config
	api         runpod.Config
	listen      string
	metricsAddr string
	apiKeysFile string
	logLevel    string

	jobTake     bool
	take        jobtake.Config
	serverless  serverless.Config
	pingMillis  int
	shutdownMax time.Duration
}

// serverlessMode reports whether the adapter runs inside a RunPod worker.
func (c *config) serverlessMode() bool { return c.serverless.GetJobURL != "" }

func main() {
	var cfg config
	fs := settings(&cfg)
	fs.ParseOrExit(os.Args[1:])
	if setting, err := cfg.finish(); err != nil {
		fs.Exit(setting, err)
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

// finish completes and checks the parsed settings; on failure it names
// the setting.
func (c *config) finish() (setting string, err error) {
	if c.apiKeysFile != "" {
		keys, err := readKeys(c.apiKeysFile)
		if err != nil {
			return "API_KEYS_FILE", err
		}
		c.api.APIKeys = append(c.api.APIKeys, keys...)
	}
	c.take.Pool, c.serverless.Pool = c.api.Pool, c.api.Pool
	if len(c.take.WorkerKeys) == 0 {
		c.take.WorkerKeys = c.api.APIKeys
	}
	if c.pingMillis < 0 {
		return "RUNPOD_PING_INTERVAL", fmt.Errorf("%d ms is negative", c.pingMillis)
	}
	c.serverless.PingInterval = time.Duration(c.pingMillis) * time.Millisecond
	if err := c.api.Validate(); err != nil {
		return "POOL/MAX_QUEUED/RUNSYNC_WAIT/STREAM_WAIT", err
	}
	if err := c.take.Validate(); err != nil {
		return "JOB_TAKE_*", err
	}
	if c.serverlessMode() {
		if err := c.serverless.Validate(); err != nil {
			return "RUNPOD_WEBHOOK_*", err
		}
	}
	return "", nil
}

// run serves until ctx ends (or, in serverless mode, until the worker
// ends by itself after refresh_worker).
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, err := backend.Open(startCtx, cfg.backend)
	if err != nil {
		return err
	}
	defer b.Close()
	if cfg.serverlessMode() {
		return runServerless(ctx, cfg, b, log)
	}

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("LISTEN_ADDR: %w", err)
	}
	reg := metrics.NewRegistry()
	mux := http.NewServeMux()
	mux.Handle("/", metrics.Instrument(reg, "comfyfleet_api", runpod.NewAPI(cfg.api, b.Queue, b.Status, b.Blobs, b.Fleet, log)))
	// /metrics has its own port: the API's port is public and behind API keys.
	if cfg.metricsAddr != "" {
		ms := metrics.NewServer(cfg.metricsAddr, reg)
		if err := ms.Start(); err != nil {
			ln.Close()
			return fmt.Errorf("METRICS_ADDR: %w", err)
		}
		defer ms.Stop()
	}
	if cfg.jobTake {
		host, err := jobtake.New(cfg.take, jobtake.Deps{Queue: b.Queue, Records: b.Status, Blobs: b.Blobs,
			Redis: b.Redis, KeyPrefix: cfg.backend.KeyPrefix, Fleet: b.Fleet, Logger: log})
		if err != nil {
			ln.Close()
			return err
		}
		if err := host.Start(startCtx); err != nil {
			ln.Close()
			return err
		}
		defer host.Stop()
		host.Register(mux)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("runpod-adapter listening", zap.String("addr", ln.Addr().String()),
		zap.Int("api_keys", len(cfg.api.APIKeys)), zap.Bool("job_take", cfg.jobTake), zap.String("pool", cfg.api.Pool))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Shutdown order: stop accepting, let held requests (runsync, long
	// polls) end within shutdownMax, then the job-take host (deferred),
	// then the backends (deferred).
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownMax)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

func runServerless(ctx context.Context, cfg config, b *backend.Backend, log *zap.Logger) error {
	w, err := serverless.New(cfg.serverless, serverless.Deps{Queue: b.Queue, Records: b.Status, Blobs: b.Blobs,
		Events: runpod.NewEventLog(b.Queue.JetStream()), Logger: log})
	if err != nil {
		return err
	}
	if err := w.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		w.Stop()
	case <-w.Done():
		// refresh_worker: the process exits so RunPod starts a fresh one.
	}
	return nil
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
	fs := flagenv.New("runpod-adapter", "runpod-adapter serves RunPod's endpoint API in front of a comfyfleet fleet (api mode),\n"+
		"optionally with the job-take routes RunPod's Python workers call (--job-take). When\n"+
		"RUNPOD_WEBHOOK_GET_JOB is set, as inside a RunPod serverless worker, it runs in serverless\n"+
		"mode instead: it takes the RunPod endpoint's jobs and runs them on the fleet.")
	fs.String(&cfg.backend.NATSURL, "nats-url", "NATS_URL", backend.DefaultNATSURL, "NATS server")
	fs.String(&cfg.backend.RedisURL, "redis-url", "REDIS_URL", backend.DefaultRedisURL, "Redis server")
	fs.String(&cfg.listen, "listen", "LISTEN_ADDR", ":8000", "address of the endpoint API")
	fs.List(&cfg.api.APIKeys, "api-keys", "API_KEYS", nil, "accepted API keys, comma-separated; none = no authentication")
	fs.String(&cfg.apiKeysFile, "api-keys-file", "API_KEYS_FILE", "", "file with one accepted API key per line")
	fs.Duration(&cfg.api.RunRetention, "run-retention", "RUN_RETENTION", 30*time.Minute, "how long /run results are kept")
	fs.Duration(&cfg.api.SyncRetention, "sync-retention", "SYNC_RETENTION", time.Minute, "how long /runsync results are kept")
	fs.String(&cfg.logLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")

	// api mode
	fs.String(&cfg.api.Pool, "pool", "POOL", "default", "pool that receives the API's jobs, that RunPod workers take from (--job-take), and that serverless mode submits to")
	fs.Int(&cfg.api.MaxQueued, "max-queued", "MAX_QUEUED", 0, "backpressure: /run and /runsync answer 429 while this many jobs wait; 0 = no limit")
	fs.Int(&cfg.api.MaxQueuedPerLane, "max-queued-per-lane", "MAX_QUEUED_PER_LANE", 0, "backpressure per lane: /run and /runsync answer 429 while this many jobs wait in the lane (interactive or batch) the job would join; 0 = no limit")
	fs.String(&cfg.metricsAddr, "metrics-addr", "METRICS_ADDR", "", "address of GET /metrics (Prometheus), e.g. :9101; empty: none")
	fs.Duration(&cfg.api.DefaultWait, "runsync-wait", "RUNSYNC_WAIT", 90*time.Second, "how long /runsync and /status-sync wait without ?wait= (RunPod: 90s)")
	fs.Duration(&cfg.api.StreamWait, "stream-wait", "STREAM_WAIT", 3*time.Second, "how long /stream holds a request without ?wait= while nothing new happens")
	fs.Duration(&cfg.shutdownMax, "shutdown-grace", "SHUTDOWN_GRACE", 30*time.Second, "on SIGTERM, how long held requests (runsync, long polls) may finish")

	// job-take host
	fs.Bool(&cfg.jobTake, "job-take", "JOB_TAKE", false, "also serve job-take, job-done, job-stream, job-stop and ping for RunPod's Python workers")
	fs.List(&cfg.take.WorkerKeys, "worker-keys", "WORKER_KEYS", nil, "keys RunPod workers send (their RUNPOD_AI_API_KEY), comma-separated; none = the API keys")
	fs.Duration(&cfg.take.TakeHold, "job-take-hold", "JOB_TAKE_HOLD", 20*time.Second, "how long an empty job-take is held before 204 (under 90s)")
	fs.Duration(&cfg.take.StopHold, "job-stop-hold", "JOB_STOP_HOLD", 20*time.Second, "how long an empty job-stop poll is held (under 90s)")
	fs.Duration(&cfg.take.LeaseTimeout, "job-take-lease", "JOB_TAKE_LEASE", 30*time.Second, "a job its RunPod worker has not named in a ping for this long goes back on the queue")

	// serverless mode: the variables RunPod sets in a worker container
	fs.String(&cfg.serverless.GetJobURL, "runpod-webhook-get-job", "RUNPOD_WEBHOOK_GET_JOB", "", "RunPod's job-take URL template; set = serverless mode")
	fs.String(&cfg.serverless.PostOutputURL, "runpod-webhook-post-output", "RUNPOD_WEBHOOK_POST_OUTPUT", "", "RunPod's job-done URL template")
	fs.String(&cfg.serverless.PostStreamURL, "runpod-webhook-post-stream", "RUNPOD_WEBHOOK_POST_STREAM", "", "RunPod's job-stream URL template (progress)")
	fs.String(&cfg.serverless.PingURL, "runpod-webhook-ping", "RUNPOD_WEBHOOK_PING", "", "RunPod's heartbeat URL template")
	fs.String(&cfg.serverless.APIKey, "runpod-ai-api-key", "RUNPOD_AI_API_KEY", "", "key sent to RunPod's worker routes")
	fs.String(&cfg.serverless.WorkerID, "runpod-pod-id", "RUNPOD_POD_ID", "", "this worker's id at RunPod; empty = random, and no pings")
	fs.Int(&cfg.pingMillis, "runpod-ping-interval", "RUNPOD_PING_INTERVAL", 10000, "milliseconds between heartbeats")
	fs.Int(&cfg.serverless.Concurrency, "serverless-concurrency", "SERVERLESS_CONCURRENCY", 1, "RunPod jobs held at once (more than one uses job-take-batch)")
	fs.Bool(&cfg.serverless.RefreshWorker, "refresh-worker", "REFRESH_WORKER", false, "serverless mode: ask RunPod for a fresh worker after each job (stopPod) and exit")
	return fs
}
