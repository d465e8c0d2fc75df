package role

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/modelcache"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// WorkerConfig are a gpuworker's settings.
type WorkerConfig struct {
	Worker worker.Config
	Comfy  comfy.Config
	// S3 configures output uploads (BUCKET_*); an empty Endpoint keeps
	// outputs in the blob store, returned inline as base64.
	S3 s3.Config
	// Pools is POOL: Worker.Pool then Worker.MorePools.
	Pools []string
	// WarmupFile is WARMUP_WORKFLOW, read into Worker.WarmupWorkflow.
	WarmupFile string
	// MaxInputMB is MAX_INPUT_MB, Worker.MaxInputBytes in megabytes.
	MaxInputMB int
	// IsolateFiles is ISOLATE_JOB_FILES, the opposite of
	// Worker.SharedFiles.
	IsolateFiles bool
	// Listen is where GET /metrics is served; "" nowhere (the dev stack
	// serves one /metrics for all its parts).
	Listen string
	// Keys are the admin keys and allowed origins of /metrics.
	Keys Keys
	// Models configures the model cache that fetches models by URL
	// (COMFYUI_MODELS_DIR, MODEL_*, HF_TOKEN, CIVITAI_TOKEN); without
	// Models.ModelsDir the worker has none.
	Models ModelSettings

	admins *auth.Keyring // of Keys, by Finish
}

// ModelSettings are the model cache's settings (docs/models.md).
type ModelSettings struct {
	// Cache is what Finish derives from the rest; ModelsDir is its
	// ModelsDir.
	Cache modelcache.Config
	// CacheGB, MaxGB are MODEL_CACHE_GB and MODEL_MAX_GB as given.
	CacheGB, MaxGB string
	// Allow and AllowHTTP are MODEL_URL_ALLOW and MODEL_URL_ALLOW_HTTP.
	Allow     []string
	AllowHTTP bool
}

func (m *ModelSettings) bind(fs *flagenv.Set) {
	fs.String(&m.Cache.ModelsDir, "comfyui-models-dir", "COMFYUI_MODELS_DIR", "", "ComfyUI's models folder, when this worker runs beside it (same container or pod, or a shared volume): models jobs name by URL are fetched into its subfolders (checkpoints/, loras/, …); empty: such jobs fail")
	fs.String(&m.Cache.Dir, "model-cache-dir", "MODEL_CACHE_DIR", "", "folder of the model cache's index and partial downloads, best on the models folder's file system (empty: COMFYUI_MODELS_DIR/.comfyfleet-cache)")
	fs.String(&m.CacheGB, "model-cache-gb", "MODEL_CACHE_GB", "0", "disk budget of the models fetched by URL, in GB (decimals allowed); least recently used files nobody uses are evicted past it (0: no limit)")
	fs.String(&m.MaxGB, "model-max-gb", "MODEL_MAX_GB", "64", "size cap of one model file fetched by URL, in GB")
	fs.Duration(&m.Cache.Timeout, "model-download-timeout", "MODEL_DOWNLOAD_TIMEOUT", modelcache.DefaultTimeout, "time limit of one model download; a download cut by it resumes at the job's next attempt")
	fs.List(&m.Allow, "model-url-allow", "MODEL_URL_ALLOW", nil, "hosts, IPs and CIDR prefixes with their ports, as INPUT_URL_ALLOW, that model URLs may reach although private, loopback or link-local")
	fs.Bool(&m.AllowHTTP, "model-url-allow-http", "MODEL_URL_ALLOW_HTTP", false, "also accept http:// model URLs (only https:// otherwise)")
	fs.String(&m.Cache.HFToken, "hf-token", "HF_TOKEN", "", "Hugging Face token, sent only to huggingface.co and hf.co (and their subdomains) for models by URL")
	fs.String(&m.Cache.CivitAIToken, "civitai-token", "CIVITAI_TOKEN", "", "CivitAI token, sent only to civitai.com (and its subdomains) for models by URL")
}

// finish checks the settings and derives the cache's configuration.
func (m *ModelSettings) finish() (setting string, err error) {
	gb := func(name, v string) (int64, error) {
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f > 1<<20 {
			return 0, fmt.Errorf("%q is not a number of gigabytes (0 or more)", v)
		}
		return int64(f * (1 << 30)), nil
	}
	if m.Cache.Budget, err = gb("MODEL_CACHE_GB", m.CacheGB); err != nil {
		return "MODEL_CACHE_GB", err
	}
	if m.Cache.MaxFileSize, err = gb("MODEL_MAX_GB", m.MaxGB); err != nil {
		return "MODEL_MAX_GB", err
	}
	if m.Cache.MaxFileSize == 0 {
		return "MODEL_MAX_GB", errors.New("must be more than 0")
	}
	if m.Cache.Timeout < 0 {
		return "MODEL_DOWNLOAD_TIMEOUT", fmt.Errorf("%s is negative", m.Cache.Timeout)
	}
	if _, err := ssrf.ParseAllowList(m.Allow); err != nil {
		return "MODEL_URL_ALLOW", err
	}
	return "", nil
}

// open opens the model cache, nil without COMFYUI_MODELS_DIR; close
// closes it and its guard.
func (m *ModelSettings) open(log *zap.Logger) (cache *modelcache.Cache, close func(), err error) {
	if m.Cache.ModelsDir == "" {
		return nil, func() {}, nil
	}
	g, err := ssrf.New(ssrf.Config{Use: "model URL", Allow: m.Allow, AllowHTTP: m.AllowHTTP,
		AllowSetting: "MODEL_URL_ALLOW", HTTPSetting: "MODEL_URL_ALLOW_HTTP"})
	if err != nil {
		return nil, nil, fmt.Errorf("MODEL_URL_ALLOW: %w", err)
	}
	cfg := m.Cache
	cfg.Guard, cfg.Logger = g, log
	c, err := modelcache.Open(cfg)
	if err != nil {
		g.Close()
		return nil, nil, fmt.Errorf("COMFYUI_MODELS_DIR: %w", err)
	}
	return c, func() { c.Close(); g.Close() }, nil
}

// Bind binds the gpuworker's settings.
func (c *WorkerConfig) Bind(fs *flagenv.Set) {
	fs.String(&c.Comfy.BaseURL, "comfyui-url", "COMFYUI_URL", "http://127.0.0.1:8188", "the ComfyUI this worker drives")
	fs.String(&c.Worker.ID, "worker-id", "WORKER_ID", "", "this worker's id in status records and the fleet registry (empty: the host name)")
	fs.List(&c.Pools, "pool", "POOL", []string{"default"}, "the pools whose jobs this worker takes, comma-separated, first preferred")
	fs.Int(&c.Worker.BatchEvery, "batch-every", "BATCH_EVERY", 10, "every n-th job taken looks at the batch lanes first, so batch work moves under sustained interactive load (negative: never)")
	fs.String(&c.Worker.ComfyOrgAPIKey, "comfy-org-api-key", "COMFY_ORG_API_KEY", "", "key for Comfy.org API nodes when the job gives none")
	fs.Int(&c.Comfy.ReconnectAttempts, "websocket-reconnect-attempts", "WEBSOCKET_RECONNECT_ATTEMPTS", 5, "redials of a dropped ComfyUI WebSocket before the job is given back")
	fs.Seconds(&c.Comfy.ReconnectDelay, "websocket-reconnect-delay", "WEBSOCKET_RECONNECT_DELAY_S", 3*time.Second, "first delay in seconds between redials (doubles)")
	fs.Duration(&c.Worker.Grace, "grace", "SHUTDOWN_GRACE", 30*time.Second, "on SIGTERM, how long the job in hand may finish before it is given back")
	fs.Duration(&c.Worker.ExecutionTimeout, "execution-timeout", "EXECUTION_TIMEOUT", worker.DefaultExecutionTimeout, "how long a job may run when its policy.executionTimeout is unset; then it is interrupted in ComfyUI and ends TIMED_OUT")
	fs.Duration(&c.Worker.StallTimeout, "stall-timeout", "STALL_TIMEOUT", worker.DefaultStallTimeout, "a prompt without any progress from ComfyUI for this long is interrupted and ends TIMED_OUT (negative: never)")
	fs.Int(&c.Worker.MaxAttempts, "max-attempts", "MAX_ATTEMPTS", worker.DefaultMaxAttempts, "attempts of a job that hits out-of-memory or loses its ComfyUI before it fails (and goes to the dead-letter stream)")
	fs.Duration(&c.Worker.RetryDelay, "retry-delay", "RETRY_DELAY", worker.DefaultRetryDelay, "base delay before a job that hit out-of-memory or a transient error is redelivered; it doubles with each failed attempt (at most 16×), with jitter")
	fs.Duration(&c.Worker.LeaseTTL, "lease-ttl", "LEASE_TTL", 0, "lease on a running job, renewed every third of it; once a dead worker's lease lapses the dispatcher hands its job to another worker, and a worker that lost its lease stops the prompt (0: 15s)")
	fs.Int(&c.Worker.Prefetch, "prefetch", "PREFETCH", worker.DefaultPrefetch, "jobs taken and queued in ComfyUI beyond the running one, so the GPU never waits for the next prompt; a queued batch job gives way to an interactive one (0: none)")
	fs.Bool(&c.Worker.RefreshWorker, "refresh-worker", "REFRESH_WORKER", false, "free ComfyUI's models and caches (POST /free) after every job")
	fs.String(&c.WarmupFile, "warmup-workflow", "WARMUP_WORKFLOW", "", "JSON file with a workflow (API format, or a job input) run before the first job and whenever ComfyUI comes back")
	fs.Duration(&c.Worker.ReadyPoll, "comfyui-probe-interval", "COMFYUI_PROBE_INTERVAL", 250*time.Millisecond, "how often ComfyUI's liveness is probed; two failures in a row give the jobs in hand back")
	fs.Int(&c.MaxInputMB, "max-input-mb", "MAX_INPUT_MB", 100, "size cap of each input file, in megabytes")
	fs.Duration(&c.Worker.InputURLTimeout, "input-url-timeout", "INPUT_URL_TIMEOUT", worker.DefaultInputURLTimeout, "time limit to download an input given by URL")
	fs.List(&c.Worker.InputURLAllow, "input-url-allow", "INPUT_URL_ALLOW", nil, "hosts, IPs and CIDR prefixes, each with its port (host:port, host:* for any; without a port only 80/443), input URLs may reach although private, loopback or link-local (comma-separated)")
	fs.Bool(&c.Worker.InputURLAllowHTTP, "input-url-allow-http", "INPUT_URL_ALLOW_HTTP", false, "also accept http:// input URLs (only https:// otherwise)")
	fs.Bool(&c.IsolateFiles, "isolate-job-files", "ISOLATE_JOB_FILES", true, "a workflow may name only its own inputs and the files shipped in ComfyUI's input folder (not another job's inputs, [output] or [temp] files, \"..\", absolute paths or backslashes), and its inputs are removed after the job; false: one tenant, files are shared and kept")
	fs.String(&c.Worker.InputDir, "comfyui-input-dir", "COMFYUI_INPUT_DIR", "", "ComfyUI's input folder, when this worker runs beside it (same container or pod): a job's inputs are removed from it after the job; empty: they are emptied through ComfyUI's upload route instead")
	fs.String(&c.Worker.OutputDir, "comfyui-output-dir", "COMFYUI_OUTPUT_DIR", "", "ComfyUI's output folder, when this worker runs beside it (same container or pod): a job's output files are removed from it once they are stored (not with ISOLATE_JOB_FILES=false, where workflows may read [output] files); empty: they stay")
	fs.Bool(&c.Worker.KeepFiles, "keep-comfyui-files", "KEEP_COMFYUI_FILES", false, "keep each job's inputs and outputs in ComfyUI's input and output folders after the job, as ComfyUI does")
	fs.List(&c.Worker.S3ConfigAllow, "s3-config-allow", "S3_CONFIG_ALLOW", nil, "hosts, IPs and CIDR prefixes with their ports, as INPUT_URL_ALLOW, that a job's own s3Config.endpointUrl may reach although private, loopback or link-local")
	fs.Bool(&c.Worker.S3ConfigAllowHTTP, "s3-config-allow-http", "S3_CONFIG_ALLOW_HTTP", false, "also accept http:// s3Config endpoints (only https:// otherwise)")
	fs.Int(&c.Worker.Concurrency, "transfer-concurrency", "TRANSFER_CONCURRENCY", worker.DefaultConcurrency, "input uploads and output transfers of one job that run at once")
	fs.String(&c.S3.Endpoint, "bucket-endpoint-url", "BUCKET_ENDPOINT_URL", "", "S3-compatible endpoint for outputs; empty keeps outputs in NATS and returns them inline as base64")
	fs.String(&c.S3.AccessKeyID, "bucket-access-key-id", "BUCKET_ACCESS_KEY_ID", "", "S3 access key id (required with BUCKET_ENDPOINT_URL)")
	fs.String(&c.S3.SecretAccessKey, "bucket-secret-access-key", "BUCKET_SECRET_ACCESS_KEY", "", "S3 secret access key (required with BUCKET_ENDPOINT_URL)")
	fs.String(&c.S3.Bucket, "bucket-name", "BUCKET_NAME", "", "S3 bucket; may be left out when the endpoint is https://<bucket>.s3.<region>.amazonaws.com")
	fs.String(&c.S3.Region, "bucket-region", "BUCKET_REGION", "", "S3 region; default: the one in an AWS endpoint, else us-east-1")
	fs.String(&c.S3.Prefix, "bucket-prefix", "BUCKET_PREFIX", "", "key prefix: outputs are stored at {prefix}/{job_id}/{filename}")
	fs.String(&c.S3.Addressing, "bucket-addressing-style", "BUCKET_ADDRESSING_STYLE", "", "path or virtual; default: virtual on amazonaws.com, path elsewhere (MinIO, R2, …)")
	fs.String(&c.S3.PublicBaseURL, "bucket-public-url", "BUCKET_PUBLIC_URL", "", "return {this URL}/{key} instead of presigned URLs (a public bucket or a CDN)")
	fs.Duration(&c.S3.URLExpiry, "bucket-url-expiry", "BUCKET_URL_EXPIRY", s3.DefaultURLExpiry, "lifetime of presigned output URLs (at most 7 days)")
	fs.String(&c.Listen, "listen", "LISTEN_ADDR", "", "address of GET /metrics (Prometheus), e.g. :9100; empty: none")
	c.Models.bind(fs)
	c.Keys.bindAdmin(fs)
	c.Keys.bindOrigins(fs)
	fs.Duration(&c.Worker.WarmDefer, "warm-defer", "WARM_DEFER", 25*time.Millisecond, "model-aware routing: a job another idle worker is readier for (its models warm, or its models by URL on disk where this one would download them) is handed back up to 3 times, at once and then after this step ×1, ×2; negative: never")
}

// Finish derives what the flags do not set directly and checks the
// settings; on error it names the setting at fault.
func (c *WorkerConfig) Finish() (setting string, err error) {
	if len(c.Pools) == 0 {
		return "POOL", errors.New("no pool given")
	}
	c.Worker.Pool, c.Worker.MorePools = c.Pools[0], c.Pools[1:]
	if c.Worker.ID == "" {
		host, _ := os.Hostname()
		c.Worker.ID = proto.HostWorkerID(host)
	}
	if c.MaxInputMB < 0 {
		return "MAX_INPUT_MB", fmt.Errorf("%d is negative", c.MaxInputMB)
	}
	c.Worker.MaxInputBytes = int64(c.MaxInputMB) << 20
	c.Worker.SharedFiles = !c.IsolateFiles
	if c.WarmupFile != "" && c.Worker.WarmupWorkflow == nil {
		data, err := os.ReadFile(c.WarmupFile)
		if err != nil {
			return "WARMUP_WORKFLOW", err
		}
		c.Worker.WarmupWorkflow = data
	}
	if c.Comfy.ReconnectAttempts == 0 {
		c.Comfy.ReconnectAttempts = -1 // worker-comfyui: 0 fails at the first drop
	}
	if err := c.Comfy.Validate(); err != nil {
		return "COMFYUI_URL", err
	}
	// As in worker-comfyui, BUCKET_ENDPOINT_URL alone switches S3 on. A
	// bucket name without it is harmless (deployments set one by default),
	// but credentials without it are a mistake that would silently send
	// outputs inline.
	if c.S3.Endpoint == "" && (c.S3.AccessKeyID != "" || c.S3.SecretAccessKey != "") {
		return "BUCKET_ENDPOINT_URL", errors.New("empty while S3 credentials are set; set it to upload outputs to S3")
	}
	if c.S3.Endpoint != "" {
		if err := c.S3.Validate(); err != nil {
			return "BUCKET_*", err
		}
	}
	if err := c.Worker.Validate(); err != nil {
		return "worker settings", err
	}
	if setting, err := c.Models.finish(); err != nil {
		return setting, err
	}
	rings, setting, err := c.Keys.finish(auth.Admin)
	if err != nil {
		return setting, err
	}
	c.admins = rings.Admin
	return "", nil
}

// Worker is a gpuworker's process: the worker, its ComfyUI client, and
// its metrics listener.
type Worker struct {
	cfg         WorkerConfig
	w           *worker.Worker
	closeModels func()
	cc          *comfy.Client
	ms          *metrics.Server
	log         *zap.Logger
}

// NewWorker builds a gpuworker on b. m records its series (shared by the
// dev stack's workers; nil records nothing); reg, when Listen is set, is
// served on it.
func NewWorker(cfg WorkerConfig, b *backend.Backend, m *worker.Metrics, reg *metrics.Registry, log *zap.Logger) (*Worker, error) {
	base := log // the worker names itself in its records
	log = log.With(zap.String("worker_id", cfg.Worker.ID))
	cc := cfg.Comfy
	cc.Logger = log
	client, err := comfy.New(cc)
	if err != nil {
		return nil, err
	}
	var out *s3.Store
	if cfg.S3.Endpoint != "" {
		if out, err = s3.New(cfg.S3); err != nil {
			_ = client.Close()
			return nil, fmt.Errorf("BUCKET_*: %w", err)
		}
	}
	models, closeModels, err := cfg.Models.open(log)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	w, err := worker.New(cfg.Worker, worker.Deps{Queue: b.Queue, Core: b.Core, Blobs: b.Blobs, S3: out,
		ComfyUI: client, Fleet: b.DB, Controls: b.DB, Logger: base, Metrics: m, Models: models})
	if err != nil {
		closeModels()
		_ = client.Close()
		return nil, err
	}
	p := &Worker{cfg: cfg, w: w, cc: client, log: log, closeModels: closeModels}
	if cfg.Listen != "" && reg != nil {
		g, _, err := cfg.Keys.guard(cfg.admins)
		if err != nil {
			closeModels()
			_ = client.Close()
			return nil, err
		}
		p.ms = metrics.NewServer(cfg.Listen, g.Require(auth.Admin, reg.Handler()))
	}
	return p, nil
}

// Start starts /metrics, then the worker.
func (p *Worker) Start(ctx context.Context) error {
	if p.ms != nil {
		if err := p.ms.Start(); err != nil {
			return fmt.Errorf("LISTEN_ADDR: %w", err)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := p.w.Start(sctx); err != nil {
		if p.ms != nil {
			p.ms.Stop()
		}
		return err
	}
	outputs := "blob store (inline base64)"
	if p.cfg.S3.Endpoint != "" {
		outputs = "S3 " + p.cfg.S3.Endpoint
	}
	p.log.Info("gpuworker running", zap.String("comfyui_url", p.cfg.Comfy.BaseURL), zap.String("outputs", outputs))
	return nil
}

// Stop drains the worker (the jobs in hand finish within the grace period
// or go back on the queue), then closes the ComfyUI client and /metrics.
func (p *Worker) Stop() {
	p.w.Stop()
	p.closeModels() // after the jobs: no fetch waits on it any more
	_ = p.cc.Close()
	if p.ms != nil {
		p.ms.Stop()
	}
}
