// Command gpuworker runs comfyfleet jobs on the one ComfyUI (one GPU) next
// to it: it pulls jobs from its pool, runs them over ComfyUI's HTTP and
// WebSocket API, stores outputs and writes status. SIGTERM drains it.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/logging"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/worker"
)

type config struct {
	backend  backend.Config
	worker   worker.Config
	comfy    comfy.Config
	logLevel string
	// warmupFile is WARMUP_WORKFLOW, read into worker.WarmupWorkflow.
	warmupFile string
	// maxInputMB is MAX_INPUT_MB, worker.MaxInputBytes in megabytes.
	maxInputMB int
	// listen is LISTEN_ADDR, where /metrics is served; empty: nowhere.
	listen string
	// pools is POOL: worker.Pool then worker.MorePools.
	pools []string
}

func main() {
	var cfg config
	fs := settings(&cfg)
	fs.ParseOrExit(os.Args[1:])
	if setting, err := cfg.finish(); err != nil {
		fs.Exit(setting, err)
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
	reg := metrics.NewRegistry()
	w, err := worker.New(cfg.worker, worker.Deps{Queue: b.Queue, Store: b.Status, Blobs: b.Blobs, ComfyUI: cc, Fleet: b.Fleet, Logger: log,
		Metrics: worker.NewMetrics(reg)})
	if err != nil {
		return err
	}
	// Shutdown order: the worker (its jobs drain), then /metrics.
	if cfg.listen != "" {
		ms := metrics.NewServer(cfg.listen, reg)
		if err := ms.Start(); err != nil {
			return fmt.Errorf("LISTEN_ADDR: %w", err)
		}
		defer ms.Stop()
	}
	if err := w.Start(startCtx); err != nil {
		return err
	}
	outputs := "blob store (inline base64)"
	if cfg.worker.S3.Endpoint != "" {
		outputs = "S3 " + cfg.worker.S3.Endpoint
	}
	log.Info("gpuworker running", zap.String("worker_id", cfg.worker.ID), zap.String("comfyui_url", cfg.comfy.BaseURL),
		zap.String("outputs", outputs))
	<-ctx.Done()
	log.Info("draining")
	forced := make(chan os.Signal, 1)
	signal.Notify(forced, os.Interrupt, syscall.SIGTERM)
	go func() { <-forced; log.Warn("second signal, exiting now"); os.Exit(1) }()
	w.Stop()
	return nil
}

// finish derives what the flags do not set directly and validates the
// worker's settings; on error it names the setting at fault.
func (c *config) finish() (setting string, err error) {
	if len(c.pools) == 0 {
		return "POOL", errors.New("no pool given")
	}
	c.worker.Pool, c.worker.MorePools = c.pools[0], c.pools[1:]
	if c.worker.ID == "" {
		host, _ := os.Hostname()
		c.worker.ID = sanitizeID(host)
	}
	if c.maxInputMB < 0 {
		return "MAX_INPUT_MB", fmt.Errorf("%d is negative", c.maxInputMB)
	}
	c.worker.MaxInputBytes = int64(c.maxInputMB) << 20
	if c.warmupFile != "" {
		data, err := os.ReadFile(c.warmupFile)
		if err != nil {
			return "WARMUP_WORKFLOW", err
		}
		c.worker.WarmupWorkflow = data
	}
	// As in worker-comfyui, BUCKET_ENDPOINT_URL alone switches S3 on. A
	// bucket name without it is harmless (deployments set one by default),
	// but credentials without it are a mistake that would silently send
	// outputs inline.
	s3c := c.worker.S3
	if s3c.Endpoint == "" && (s3c.AccessKeyID != "" || s3c.SecretAccessKey != "") {
		return "BUCKET_ENDPOINT_URL", errors.New("empty while S3 credentials are set; set it to upload outputs to S3")
	}
	if s3c.Endpoint != "" {
		if err := s3c.Validate(); err != nil {
			return "BUCKET_*", err
		}
	}
	if err := c.worker.Validate(); err != nil {
		return "worker settings", err
	}
	return "", nil
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
	fs := flagenv.New("gpuworker", "gpuworker runs comfyfleet jobs on the ComfyUI next to it.")
	fs.String(&cfg.backend.NATSURL, "nats-url", "NATS_URL", backend.DefaultNATSURL, "NATS server")
	fs.String(&cfg.backend.RedisURL, "redis-url", "REDIS_URL", backend.DefaultRedisURL, "Redis server")
	fs.String(&cfg.comfy.BaseURL, "comfyui-url", "COMFYUI_URL", "http://127.0.0.1:8188", "the ComfyUI this worker drives")
	fs.String(&cfg.worker.ID, "worker-id", "WORKER_ID", "", "this worker's id in status records and the fleet registry (empty: the host name)")
	fs.List(&cfg.pools, "pool", "POOL", []string{"default"}, "the pools whose jobs this worker takes, comma-separated, first preferred")
	fs.Int(&cfg.worker.BatchEvery, "batch-every", "BATCH_EVERY", 10, "every n-th job taken looks at the batch lanes first, so batch work moves under sustained interactive load (negative: never)")
	fs.String(&cfg.worker.ComfyOrgAPIKey, "comfy-org-api-key", "COMFY_ORG_API_KEY", "", "key for Comfy.org API nodes when the job gives none")
	fs.Int(&cfg.comfy.ReconnectAttempts, "websocket-reconnect-attempts", "WEBSOCKET_RECONNECT_ATTEMPTS", 5, "redials of a dropped ComfyUI WebSocket before the job is given back")
	fs.Seconds(&cfg.comfy.ReconnectDelay, "websocket-reconnect-delay", "WEBSOCKET_RECONNECT_DELAY_S", 3*time.Second, "first delay in seconds between redials (doubles)")
	fs.Duration(&cfg.worker.Grace, "grace", "SHUTDOWN_GRACE", 30*time.Second, "on SIGTERM, how long the job in hand may finish before it is given back")
	fs.Duration(&cfg.worker.ExecutionTimeout, "execution-timeout", "EXECUTION_TIMEOUT", worker.DefaultExecutionTimeout, "how long a job may run when its policy.executionTimeout is unset; then it is interrupted in ComfyUI and ends TIMED_OUT")
	fs.Duration(&cfg.worker.StallTimeout, "stall-timeout", "STALL_TIMEOUT", worker.DefaultStallTimeout, "a prompt without any progress from ComfyUI for this long is interrupted and ends TIMED_OUT (negative: never)")
	fs.Int(&cfg.worker.MaxAttempts, "max-attempts", "MAX_ATTEMPTS", worker.DefaultMaxAttempts, "attempts of a job that hits out-of-memory or loses its ComfyUI before it fails (and goes to the dead-letter stream)")
	fs.Duration(&cfg.worker.RetryDelay, "retry-delay", "RETRY_DELAY", worker.DefaultRetryDelay, "base delay before a job that hit out-of-memory or a transient error is redelivered; it doubles with each failed attempt (at most 16×), with jitter")
	fs.Duration(&cfg.worker.LeaseTTL, "lease-ttl", "LEASE_TTL", 0, "lease on a running job, renewed every third of it; once a dead worker's lease lapses the dispatcher hands its job to another worker (0: 15s)")
	fs.Int(&cfg.worker.Prefetch, "prefetch", "PREFETCH", 0, "jobs taken and queued in ComfyUI beyond the running one, so the GPU never waits for the next prompt")
	fs.Bool(&cfg.worker.RefreshWorker, "refresh-worker", "REFRESH_WORKER", false, "free ComfyUI's models and caches (POST /free) after every job")
	fs.String(&cfg.warmupFile, "warmup-workflow", "WARMUP_WORKFLOW", "", "JSON file with a workflow (API format, or a job input) run before the first job and whenever ComfyUI comes back")
	fs.Duration(&cfg.worker.ReadyPoll, "comfyui-probe-interval", "COMFYUI_PROBE_INTERVAL", 250*time.Millisecond, "how often ComfyUI's liveness is probed; two failures in a row give the jobs in hand back")
	fs.Int(&cfg.maxInputMB, "max-input-mb", "MAX_INPUT_MB", 100, "size cap of each input file, in megabytes")
	fs.Duration(&cfg.worker.InputURLTimeout, "input-url-timeout", "INPUT_URL_TIMEOUT", worker.DefaultInputURLTimeout, "time limit to download an input given by URL")
	fs.List(&cfg.worker.InputURLAllow, "input-url-allow", "INPUT_URL_ALLOW", nil, "hosts, IPs and CIDR prefixes input URLs may reach although private, loopback or link-local (comma-separated)")
	fs.Bool(&cfg.worker.InputURLAllowHTTP, "input-url-allow-http", "INPUT_URL_ALLOW_HTTP", false, "also accept http:// input URLs (only https:// otherwise)")
	fs.Int(&cfg.worker.Concurrency, "transfer-concurrency", "TRANSFER_CONCURRENCY", worker.DefaultConcurrency, "input uploads and output transfers of one job that run at once")
	fs.String(&cfg.worker.S3.Endpoint, "bucket-endpoint-url", "BUCKET_ENDPOINT_URL", "", "S3-compatible endpoint for outputs; empty keeps outputs in NATS and returns them inline as base64")
	fs.String(&cfg.worker.S3.AccessKeyID, "bucket-access-key-id", "BUCKET_ACCESS_KEY_ID", "", "S3 access key id (required with BUCKET_ENDPOINT_URL)")
	fs.String(&cfg.worker.S3.SecretAccessKey, "bucket-secret-access-key", "BUCKET_SECRET_ACCESS_KEY", "", "S3 secret access key (required with BUCKET_ENDPOINT_URL)")
	fs.String(&cfg.worker.S3.Bucket, "bucket-name", "BUCKET_NAME", "", "S3 bucket; may be left out when the endpoint is https://<bucket>.s3.<region>.amazonaws.com")
	fs.String(&cfg.worker.S3.Region, "bucket-region", "BUCKET_REGION", "", "S3 region; default: the one in an AWS endpoint, else us-east-1")
	fs.String(&cfg.worker.S3.Prefix, "bucket-prefix", "BUCKET_PREFIX", "", "key prefix: outputs are stored at {prefix}/{job_id}/{filename}")
	fs.String(&cfg.worker.S3.Addressing, "bucket-addressing-style", "BUCKET_ADDRESSING_STYLE", "", "path or virtual; default: virtual on amazonaws.com, path elsewhere (MinIO, R2, …)")
	fs.String(&cfg.worker.S3.PublicBaseURL, "bucket-public-url", "BUCKET_PUBLIC_URL", "", "return {this URL}/{key} instead of presigned URLs (a public bucket or a CDN)")
	fs.Duration(&cfg.worker.S3.URLExpiry, "bucket-url-expiry", "BUCKET_URL_EXPIRY", s3.DefaultURLExpiry, "lifetime of presigned output URLs (at most 7 days)")
	fs.String(&cfg.listen, "listen", "LISTEN_ADDR", "", "address of GET /metrics (Prometheus), e.g. :9100; empty: none")
	fs.Duration(&cfg.worker.WarmDefer, "warm-defer", "WARM_DEFER", 25*time.Millisecond, "model-aware routing: a job another idle worker holds warm is handed back up to 3 times, at once and then after this step ×1, ×2; negative: never")
	fs.String(&cfg.logLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	return fs
}
