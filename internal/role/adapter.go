package role

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/jobtake"
	"github.com/comfyfleet/comfyfleet/internal/runpod/serverless"
	"github.com/comfyfleet/comfyfleet/proto"
)

// AdapterConfig are the runpod-adapter's settings.
type AdapterConfig struct {
	API runpod.Config
	// Listen is the endpoint API's address.
	Listen string
	// MetricsAddr is where GET /metrics is served apart from the public
	// API; "" nowhere.
	MetricsAddr string
	// Keys are the API, admin and worker keys and the allowed origins.
	Keys Keys
	// ShutdownGrace is how long held requests (runsync, long polls) may
	// finish on SIGTERM.
	ShutdownGrace time.Duration

	JobTake    bool
	Take       jobtake.Config
	Serverless serverless.Config
	PingMillis int
	// Endpoints is ENDPOINTS as given; Finish parses it into API.Endpoints
	// and Take.Endpoints.
	Endpoints string
	// EndpointID is RUNPOD_ENDPOINT_ID, which RunPod sets in a worker's
	// container: in serverless mode with ENDPOINTS, Finish makes its pool
	// Serverless.Pool.
	EndpointID string
}

// ServerlessMode reports whether the adapter runs inside a RunPod worker
// (RUNPOD_WEBHOOK_GET_JOB is set, as RunPod's SDK decides it).
func (c *AdapterConfig) ServerlessMode() bool { return c.Serverless.GetJobURL != "" }

// Bind binds the adapter's settings.
func (c *AdapterConfig) Bind(fs *flagenv.Set) {
	fs.String(&c.Listen, "listen", "LISTEN_ADDR", ":8000", "address of the endpoint API")
	c.Keys.bindAPI(fs)
	c.Keys.bindAdmin(fs)
	c.Keys.bindOrigins(fs)
	fs.Duration(&c.API.RunRetention, "run-retention", "RUN_RETENTION", 30*time.Minute, "how long /run results are kept (at most 30 days)")
	fs.Duration(&c.API.SyncRetention, "sync-retention", "SYNC_RETENTION", time.Minute, "how long /runsync results are kept (at most 30 days)")

	// api mode
	fs.String(&c.API.Pool, "pool", "POOL", "default", "pool that receives the API's jobs, that RunPod workers take from (--job-take), and that serverless mode submits to (with ENDPOINTS: the bare routes' pool)")
	fs.String(&c.Endpoints, "endpoints", "ENDPOINTS", "", "RunPod endpoint ids as pools, comma-separated id=pool pairs (e.g. sdxl=pool-sdxl,flux=pool-flux): /v2/{id}/… serves that pool's jobs alone, the job-take host hands RunPod workers of endpoint id that pool's jobs, serverless mode submits to the pool of RUNPOD_ENDPOINT_ID, and an id not listed is 404; empty: every id is POOL")
	fs.Int(&c.API.MaxQueued, "max-queued", "MAX_QUEUED", 0, "backpressure: /run and /runsync answer 429 while this many jobs wait; 0 = no limit")
	fs.Int(&c.API.MaxQueuedPerLane, "max-queued-per-lane", "MAX_QUEUED_PER_LANE", 0, "backpressure per lane: /run and /runsync answer 429 while this many jobs wait in the lane (interactive or batch) the job would join; 0 = no limit")
	fs.String(&c.MetricsAddr, "metrics-addr", "METRICS_ADDR", "", "address of GET /metrics (Prometheus), e.g. :9101; empty: none")
	fs.Duration(&c.API.DefaultWait, "runsync-wait", "RUNSYNC_WAIT", 90*time.Second, "how long /runsync and /status-sync wait without ?wait= (RunPod: 90s)")
	fs.Duration(&c.API.StreamWait, "stream-wait", "STREAM_WAIT", 3*time.Second, "how long /stream holds a request without ?wait= while nothing new happens")
	fs.Duration(&c.ShutdownGrace, "shutdown-grace", "SHUTDOWN_GRACE", 30*time.Second, "on SIGTERM, how long held requests (runsync, long polls) may finish")

	// job-take host
	fs.Bool(&c.JobTake, "job-take", "JOB_TAKE", false, "also serve job-take, job-done, job-stream, job-stop and ping for RunPod's Python workers")
	c.Keys.bindWorker(fs)
	fs.Duration(&c.Take.TakeHold, "job-take-hold", "JOB_TAKE_HOLD", 20*time.Second, "how long an empty job-take is held before 204 (under 90s)")
	fs.Duration(&c.Take.StopHold, "job-stop-hold", "JOB_STOP_HOLD", 20*time.Second, "how long an empty job-stop poll is held (under 90s)")
	fs.Duration(&c.Take.LeaseTimeout, "job-take-lease", "JOB_TAKE_LEASE", 30*time.Second, "a job its RunPod worker has not named in a ping for this long goes back on the queue")
	fs.Duration(&c.Take.ExecutionTimeout, "job-take-execution-timeout", "JOB_TAKE_EXECUTION_TIMEOUT", 10*time.Minute, "how long a RunPod worker's job may run when its policy.executionTimeout is unset; then it ends TIMED_OUT and the worker is told on job-stop")
	fs.Duration(&c.Take.LivenessTimeout, "job-take-liveness", "JOB_TAKE_LIVENESS", 0, "how long a RunPod worker's pings alone keep its jobs once it gave its job-stop poll up (its main process died) without polling again; 0: JOB_TAKE_LEASE")
	fs.Duration(&c.Take.RefusalDelay, "job-take-refusal-delay", "JOB_TAKE_REFUSAL_DELAY", 5*time.Second, "how long a job-take route holds its 401 to a wrong worker key, so that the SDK's loops back off")

	// serverless mode: the variables RunPod sets in a worker container
	fs.String(&c.Serverless.GetJobURL, "runpod-webhook-get-job", "RUNPOD_WEBHOOK_GET_JOB", "", "RunPod's job-take URL template; set = serverless mode")
	fs.String(&c.Serverless.PostOutputURL, "runpod-webhook-post-output", "RUNPOD_WEBHOOK_POST_OUTPUT", "", "RunPod's job-done URL template")
	fs.String(&c.Serverless.PostStreamURL, "runpod-webhook-post-stream", "RUNPOD_WEBHOOK_POST_STREAM", "", "RunPod's job-stream URL template (progress)")
	fs.String(&c.Serverless.PingURL, "runpod-webhook-ping", "RUNPOD_WEBHOOK_PING", "", "RunPod's heartbeat URL template")
	fs.String(&c.Serverless.APIKey, "runpod-ai-api-key", "RUNPOD_AI_API_KEY", "", "key sent to RunPod's worker routes")
	fs.String(&c.Serverless.WorkerID, "runpod-pod-id", "RUNPOD_POD_ID", "", "this worker's id at RunPod; empty = random, and no pings")
	fs.String(&c.EndpointID, "runpod-endpoint-id", "RUNPOD_ENDPOINT_ID", "", "the RunPod endpoint this worker serves; with ENDPOINTS, serverless mode submits to its pool")
	fs.String(&c.Serverless.Tenant, "serverless-tenant", "SERVERLESS_TENANT", "default", "tenant that owns the jobs taken from RunPod: its API keys see them")
	fs.Int(&c.PingMillis, "runpod-ping-interval", "RUNPOD_PING_INTERVAL", 10000, "milliseconds between heartbeats")
	fs.Int(&c.Serverless.Concurrency, "serverless-concurrency", "SERVERLESS_CONCURRENCY", 1, "RunPod jobs held at once (more than one uses job-take-batch)")
	fs.Bool(&c.Serverless.RefreshWorker, "refresh-worker", "REFRESH_WORKER", false, "serverless mode: ask RunPod for a fresh worker after each job (stopPod) and exit")
}

// Finish completes and checks the settings; on failure it names the
// setting.
func (c *AdapterConfig) Finish() (setting string, err error) {
	rings, setting, err := c.Keys.finish(auth.Tenant | auth.Admin | auth.Worker)
	if err != nil {
		return setting, err
	}
	c.API.Keys, c.API.AllowedOrigins = rings.API, c.Keys.AllowedOrigins
	c.Take.Keys, c.Take.AllowedOrigins = rings.Worker, c.Keys.AllowedOrigins
	c.Take.Pool, c.Serverless.Pool = c.API.Pool, c.API.Pool
	eps, err := runpod.ParseEndpoints(c.Endpoints)
	if err != nil {
		return "ENDPOINTS", err
	}
	c.API.Endpoints, c.Take.Endpoints = eps, eps
	if c.ServerlessMode() && len(eps) > 0 {
		switch pool, ok := eps[c.EndpointID]; {
		case c.EndpointID == "":
			return "RUNPOD_ENDPOINT_ID", errors.New("empty in serverless mode with ENDPOINTS: the jobs' pool is the pool of this worker's endpoint (RunPod sets RUNPOD_ENDPOINT_ID)")
		case !ok:
			return "RUNPOD_ENDPOINT_ID", fmt.Errorf("endpoint %s is not in ENDPOINTS (%s)", proto.Shorten(c.EndpointID), eps)
		default:
			c.Serverless.Pool = pool
		}
	}
	if c.JobTake && rings.Worker.Empty() {
		return "WORKER_KEYS", errors.New("required with JOB_TAKE: the job-take routes hand out jobs with their secrets, and API keys never work there")
	}
	if c.PingMillis < 0 {
		return "RUNPOD_PING_INTERVAL", fmt.Errorf("%d ms is negative", c.PingMillis)
	}
	c.Serverless.PingInterval = time.Duration(c.PingMillis) * time.Millisecond
	if err := c.API.Validate(); err != nil {
		return "POOL/MAX_QUEUED/RUNSYNC_WAIT/STREAM_WAIT", err
	}
	if c.JobTake {
		if err := c.Take.Validate(); err != nil {
			return "JOB_TAKE_*", err
		}
	}
	if c.ServerlessMode() {
		if err := c.Serverless.Validate(); err != nil {
			return "RUNPOD_WEBHOOK_*", err
		}
	}
	return "", nil
}

// Adapter is the runpod-adapter's process: in api mode the endpoint API
// (and the job-take host with JobTake) on Listen; in serverless mode, the
// RunPod worker that takes the endpoint's jobs; or both, in the dev stack.
type Adapter struct {
	cfg  AdapterConfig
	log  *zap.Logger
	mux  *http.ServeMux
	host *jobtake.Host
	sl   *serverless.Worker
	ms   *metrics.Server
	q    *queue.Client

	srv        *http.Server
	served     chan error
	addr       string
	onShutdown []func()
}

// AdapterOptions are what a caller may add to the adapter's process.
type AdapterOptions struct {
	// API serves the endpoint API even in serverless mode (the dev stack
	// runs both).
	API bool
	// Routes are more routes served on Listen beside the endpoint API (the
	// dev stack's dispatcher routes), behind the admin keys: they are
	// operator routes on the API's public listener.
	Routes []dispatch.Route
	// OnShutdown run when the listener's shutdown begins: Routes' event
	// streams end there, which the shutdown would otherwise wait for.
	OnShutdown []func()
}

// NewAdapter builds the adapter on b; reg gets its metrics and is served
// on MetricsAddr, or on Listen's /metrics when opts.Routes carry one.
func NewAdapter(cfg AdapterConfig, b *backend.Backend, reg *metrics.Registry, opts AdapterOptions, log *zap.Logger) (*Adapter, error) {
	a := &Adapter{cfg: cfg, log: log, onShutdown: opts.OnShutdown, q: b.Queue}
	if cfg.ServerlessMode() {
		sl, err := serverless.New(cfg.Serverless, serverless.Deps{Queue: b.Queue, Core: b.Core, Blobs: b.Blobs, Logger: log})
		if err != nil {
			return nil, err
		}
		a.sl = sl
		if !opts.API {
			return a, nil
		}
	}
	// The operator routes take the API's keys, where only admin keys pass.
	ops, _, err := cfg.Keys.guard(cfg.API.Keys)
	if err != nil {
		return nil, err
	}
	a.mux = http.NewServeMux()
	for _, r := range adminRoutes(ops, opts.Routes) {
		a.mux.Handle(r.Pattern, r.Handler)
	}
	api := runpod.NewAPI(cfg.API, runpod.Deps{Queue: b.Queue, Core: b.Core, DB: b.DB, Blobs: b.Blobs, Logger: log})
	a.mux.Handle("/", metrics.Instrument(reg, "comfyfleet_api", api))
	if cfg.JobTake {
		host, err := jobtake.New(cfg.Take, jobtake.Deps{Queue: b.Queue, Core: b.Core, Blobs: b.Blobs, Fleet: b.DB, Logger: log})
		if err != nil {
			return nil, err
		}
		host.Register(a.mux)
		a.host = host
	}
	// /metrics has its own port: the API's port is public and behind API
	// keys.
	if cfg.MetricsAddr != "" {
		a.ms = metrics.NewServer(cfg.MetricsAddr, ops.Require(auth.Admin, reg.Handler()))
	}
	return a, nil
}

// Start starts the job-take host, then serves (and, in serverless mode,
// starts taking jobs). It returns once the listeners are open.
func (a *Adapter) Start(ctx context.Context) error {
	if a.mux != nil {
		// The lane consumers of the endpoints' pools (or of POOL) exist
		// before their first worker does, for an autoscaler that scales
		// a pool from zero on their backlog (docs/scaling.md).
		for _, pool := range a.cfg.API.Endpoints.Pools(a.cfg.API.Pool) {
			sctx, cancel := context.WithTimeout(ctx, startTimeout)
			err := a.q.EnsureLaneConsumers(sctx, pool)
			cancel()
			if err != nil {
				return fmt.Errorf("start runpod-adapter: %w", err)
			}
		}
		if a.ms != nil {
			if err := a.ms.Start(); err != nil {
				return fmt.Errorf("METRICS_ADDR: %w", err)
			}
		}
		if a.host != nil {
			sctx, cancel := context.WithTimeout(ctx, startTimeout)
			err := a.host.Start(sctx)
			cancel()
			if err != nil {
				a.stopMetrics()
				return err
			}
		}
		ln, err := net.Listen("tcp", a.cfg.Listen)
		if err != nil {
			a.stopHost()
			a.stopMetrics()
			return fmt.Errorf("LISTEN_ADDR: %w", err)
		}
		a.addr = ln.Addr().String()
		a.srv = &http.Server{Handler: a.mux, ReadHeaderTimeout: 10 * time.Second}
		if a.host != nil {
			// The job-stop polls of workers that hold jobs are held as
			// long as the jobs run: they end when the shutdown begins.
			a.srv.RegisterOnShutdown(a.host.Drain)
		}
		for _, fn := range a.onShutdown {
			a.srv.RegisterOnShutdown(fn)
		}
		a.served = make(chan error, 1)
		go func() { a.served <- a.srv.Serve(ln) }()
		a.log.Info("runpod-adapter listening", zap.String("addr", a.addr),
			zap.Int("api_keys", a.cfg.API.Keys.Count(auth.Tenant)), zap.Int("admin_keys", a.cfg.API.Keys.Count(auth.Admin)),
			zap.Bool("job_take", a.cfg.JobTake), zap.String("pool", a.cfg.API.Pool), zap.Stringer("endpoints", a.cfg.API.Endpoints))
		if a.cfg.API.Keys.Empty() && !auth.Loopback(a.addr) {
			a.log.Warn("the endpoint API takes connections from other hosts and has no API keys: anyone who reaches it can queue jobs; set API_KEYS")
		}
	}
	if a.sl != nil {
		if err := a.sl.Start(ctx); err != nil {
			a.Stop()
			return err
		}
	}
	return nil
}

// Addr is the endpoint API's address once started, "" without one.
func (a *Adapter) Addr() string { return a.addr }

// Done is closed when the adapter ends by itself: a serverless worker
// that asked RunPod for a fresh one (refresh_worker), or a listener that
// failed. A nil channel (never closed) in api mode without failure.
func (a *Adapter) Done() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var sl <-chan struct{}
		if a.sl != nil {
			sl = a.sl.Done()
		}
		select {
		case <-sl:
		case <-a.servedOrNil():
		}
	}()
	return done
}

func (a *Adapter) servedOrNil() <-chan error {
	if a.served == nil {
		return nil
	}
	return a.served
}

// Stop shuts down in order: stop accepting and let held requests
// (runsync, long polls) end within ShutdownGrace, then the serverless
// worker (its jobs are given back), the job-take host and /metrics.
func (a *Adapter) Stop() {
	if a.srv != nil {
		grace := a.cfg.ShutdownGrace
		if grace <= 0 {
			grace = 30 * time.Second
		}
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		if err := a.srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			a.log.Warn("shut the API down", zap.Error(err))
		}
		cancel()
		a.srv = nil
	}
	if a.sl != nil {
		a.sl.Stop()
	}
	a.stopHost()
	a.stopMetrics()
}

func (a *Adapter) stopHost() {
	if a.host != nil {
		a.host.Stop()
	}
}

func (a *Adapter) stopMetrics() {
	if a.ms != nil {
		a.ms.Stop()
	}
}
