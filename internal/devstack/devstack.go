// Package devstack runs the whole fleet in one process for a developer's
// machine: an embedded NATS server (unless NATS_URL names one), a Redis
// (unless REDIS_URL names one: a redis-server started under the stack's
// folder when one is installed, else an embedded Redis-protocol server
// that keeps its data there too), one dispatcher, the runpod-adapter's
// endpoint API and N gpuworkers, each on its own ComfyUI emulator unless
// ComfyUI URLs are given. Every role is built by package role from the
// same settings as its binary; the stack only decides where the servers
// come from and serves every role's HTTP routes (the endpoint API, the
// dispatcher's /fleet, /dlq and /metrics, and the web console at
// /console/) on one listener.
//
// The stack's folder is its own: a second stack on the same folder
// refuses to start and names the process that holds it. What JetStream
// keeps there survives a restart, and so do the job records beside it.
package devstack

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/console"
	"github.com/comfyfleet/comfyfleet/internal/dirlock"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/natsserver"
	"github.com/comfyfleet/comfyfleet/internal/redisserver"
	"github.com/comfyfleet/comfyfleet/internal/role"
	"github.com/comfyfleet/comfyfleet/internal/worker"
)

// Config configures the stack. The zero value of each field is its
// default; the roles' settings are those of their binaries.
type Config struct {
	// Dir holds the embedded servers' data, the emulators' files and the
	// stack file the CLI reads; "" means ./.comfyfleet.
	Dir string
	// Listen is the address of the endpoint API and the dispatcher's
	// routes; "" means 127.0.0.1:8000.
	Listen string
	// Workers is the number of gpuworkers; 0 means 2. With ComfyUIURLs
	// set, there is one worker per URL and Workers is ignored.
	Workers     int
	ComfyUIURLs []string
	// NATSPort is the embedded NATS server's port; 0 means 4222, or a
	// random port when 4222 is taken (the stack says so); -1 means a
	// random port.
	NATSPort int
	// StepDelay is the emulators' time per sampler step; 0 is their default.
	StepDelay time.Duration
	// ModelLoadDelay is the emulators' time to load a prompt's models
	// other than the ones in their VRAM; 0 means none.
	ModelLoadDelay time.Duration
	// Checkpoints are the emulators' checkpoint files; nil means theirs.
	Checkpoints []string
	// RedisServer is the redis-server binary to run; "" looks one up on
	// PATH, "-" never runs one (the embedded server is used).
	RedisServer string
	// NATSURL and RedisURL name servers of one's own; "" embeds one.
	NATSURL, RedisURL string

	// Common, Dispatcher, Worker and Adapter are the settings of the
	// roles, bound from the same flags and variables as their binaries.
	Common     role.Common
	Dispatcher role.DispatcherConfig
	Worker     role.WorkerConfig
	Adapter    role.AdapterConfig

	// NoDispatcher, NoAdapter and NoWorkers leave that role out of the
	// process, for a caller that runs it elsewhere against the stack's
	// NATS and Redis (the bench's memory scenario measures a role in a
	// process of its own). They are not settings of `comfyfleet dev`.
	// Without the adapter there is no API and no listener (Info.APIURL is
	// empty), so the dispatcher's routes are not served either.
	NoDispatcher, NoAdapter, NoWorkers bool
	// ExactWorkerID names a stack's only worker WORKER_ID as given,
	// without the "-1" of its number (the worker image's standalone
	// mode, whose one worker is the container's). Not a setting of
	// `comfyfleet dev`.
	ExactWorkerID bool

	Logger *zap.Logger
}

// Bind binds the stack's own settings and then every setting of the roles
// it embeds, under their binaries' names. A name the roles share (POOL,
// SHUTDOWN_GRACE, …) sets all of them.
func (c *Config) Bind(fs *flagenv.Set) {
	fs.String(&c.Listen, "listen", "LISTEN_ADDR", "127.0.0.1:8000", "address of the RunPod-compatible API, and of the dispatcher's /fleet, /dlq and /metrics")
	fs.Int(&c.Workers, "workers", "COMFYFLEET_WORKERS", 2, "number of GPU workers (each with its own emulator)")
	fs.List(&c.ComfyUIURLs, "comfyui-url", "COMFYUI_URL", nil, "ComfyUI to run jobs on, one worker each (repeatable or comma-separated); none = emulators")
	fs.String(&c.Dir, "dir", "COMFYFLEET_DIR", ".comfyfleet", "folder for the embedded NATS and Redis data, emulator files and stack.json; one stack per folder")
	fs.Int(&c.NATSPort, "nats-port", "COMFYFLEET_NATS_PORT", 4222, "port of the embedded NATS server; a random one when it is taken (said at start); -1: random")
	fs.Duration(&c.StepDelay, "step-delay", "COMFYSIM_STEP_DELAY", 0, "emulator time per sampler step (0 = its default, 5ms)")
	fs.Duration(&c.ModelLoadDelay, "model-load-delay", "COMFYSIM_MODEL_LOAD_DELAY", 0, "emulator time to load a prompt's models when they are not the ones in its VRAM, which holds one prompt's models at a time (0 = none)")
	fs.List(&c.Checkpoints, "checkpoints", "COMFYSIM_CHECKPOINTS", comfysim.StackCheckpoints(), "checkpoint names the emulators offer (repeatable or comma-separated); their other model folders hold the files of every worker image variant")
	fs.String(&c.RedisServer, "redis-server", "COMFYFLEET_REDIS_SERVER", "", "redis-server binary to run under --dir when REDIS_URL is unset (empty: look it up on PATH; -: never, use the embedded server)")
	fs.String(&c.NATSURL, "nats-url", "NATS_URL", "", "use this NATS server instead of embedding one")
	fs.String(&c.RedisURL, "redis-url", "REDIS_URL", "", "use this Redis server instead of starting one under --dir")
	c.Common.Bind(fs)
	c.Adapter.Bind(fs)
	c.Dispatcher.Bind(fs)
	c.Worker.Bind(fs)
}

// ConfigFrom is the stack's configuration as `comfyfleet dev` reads it
// from an environment (getenv; nil is an empty one) without flags: every
// setting at its default unless getenv names it. Adjust the fields, then
// call Finish.
func ConfigFrom(getenv func(string) string) (Config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var c Config
	fs := flagenv.New("comfyfleet dev", "")
	c.Bind(fs)
	if err := fs.Parse(nil, getenv); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Finish reconciles what the roles share in one process and checks every
// role's settings, naming the one at fault.
func (c *Config) Finish() (setting string, err error) {
	if c.Workers < 0 {
		return "COMFYFLEET_WORKERS", fmt.Errorf("%d is negative", c.Workers)
	}
	if c.ModelLoadDelay < 0 {
		return "COMFYSIM_MODEL_LOAD_DELAY", fmt.Errorf("%v is negative", c.ModelLoadDelay)
	}
	if c.NATSPort < -1 || c.NATSPort > 65535 {
		return "COMFYFLEET_NATS_PORT", fmt.Errorf("%d is out of range", c.NATSPort)
	}
	// One listener serves the API and the dispatcher's routes; the
	// workers' series are on its /metrics.
	c.Adapter.Listen, c.Dispatcher.Listen, c.Worker.Listen = c.Listen, "", ""
	if len(c.Worker.Pools) > 0 {
		// The API's jobs and the jobs that name no pool go to the
		// workers' first pool.
		c.Adapter.API.Pool, c.Dispatcher.Dispatch.DefaultPool = c.Worker.Pools[0], c.Worker.Pools[0]
	}
	if c.Worker.Worker.ID == "" {
		c.Worker.Worker.ID = "dev-worker" // each worker adds its number
	}
	c.Worker.Comfy.BaseURL = "http://127.0.0.1:1" // each worker gets its own
	for _, f := range []func() (string, error){c.Common.Finish, c.Adapter.Finish, c.Dispatcher.Finish, c.Worker.Finish} {
		if s, err := f(); err != nil {
			return s, err
		}
	}
	return "", nil
}

// Info says where the stack's parts listen; it is also written to
// <Dir>/stack.json for the CLI.
type Info struct {
	APIURL string `json:"api_url"`
	// ConsoleURL is the web console's page; empty without the dispatcher.
	ConsoleURL  string   `json:"console_url,omitempty"`
	NATSURL     string   `json:"nats_url"`
	RedisURL    string   `json:"redis_url"`
	ComfyUIURLs []string `json:"comfyui_urls"`
	PID         int      `json:"pid"`
	// Redis says which Redis runs: "external", or the embedded kind.
	Redis string `json:"redis"`
	// NATSFallback is set when the NATS port asked for was taken and a
	// random one was used.
	NATSFallback bool `json:"nats_fallback,omitempty"`
	// S3Origins are scheme://host:port of the workers' S3 (BUCKET_ENDPOINT_URL
	// and BUCKET_PUBLIC_URL), where their s3_url outputs are: the CLI's
	// downloads allow them although they are often on loopback.
	S3Origins []string `json:"s3_origins,omitempty"`
}

// Stack is a running local fleet.
type Stack struct {
	Info Info
	// Metrics is the registry every role of the stack registers its series
	// on, served on the API address's /metrics.
	Metrics *metrics.Registry

	log      *zap.Logger
	dir      string
	lock     *dirlock.Lock
	nats     *natsserver.Server
	redis    *redisserver.Server
	sims     []*http.Server
	simCores []*comfysim.Server
	backends []*backend.Backend
	disp     *role.Dispatcher
	workers  []*role.Worker
	adapter  *role.Adapter
}

// Start brings the stack up and returns once the API accepts requests.
// cfg must have been Finished. On error everything started so far is
// stopped.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if cfg.Dir == "" {
		cfg.Dir = ".comfyfleet"
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8000"
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Stack{log: log, dir: cfg.Dir}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if s.lock, err = dirlock.Acquire(cfg.Dir); err != nil {
		return nil, fmt.Errorf("dev stack: %w", err)
	}
	if err := s.startServers(&cfg); err != nil {
		return nil, err
	}

	// ComfyUI: given URLs, or one emulator per worker. A worker on an
	// emulator is given the emulator's input folder, as a worker beside a
	// real ComfyUI is (COMFYUI_INPUT_DIR), so a job's inputs are removed
	// after it for real.
	urls := cfg.ComfyUIURLs
	var inputDirs, modelsDirs []string
	if cfg.NoWorkers {
		urls = nil
	} else if len(urls) == 0 {
		for i := range cfg.Workers {
			u, inputDir, modelsDir, err := s.startSim(filepath.Join(cfg.Dir, fmt.Sprintf("comfysim-%d", i+1)), cfg)
			if err != nil {
				return nil, fmt.Errorf("dev stack: %w", err)
			}
			urls = append(urls, u)
			inputDirs = append(inputDirs, inputDir)
			modelsDirs = append(modelsDirs, modelsDir)
		}
	}
	s.Info.ComfyUIURLs = urls
	open := func(name string) (*backend.Backend, error) {
		b, err := cfg.Common.Open(ctx, name, log)
		if err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		s.backends = append(s.backends, b)
		return b, nil
	}
	reg := metrics.NewRegistry()
	s.Metrics = reg

	// Control plane: its routes are served on the API's listener.
	if !cfg.NoDispatcher {
		db, err := open("comfyfleet-dev-dispatcher")
		if err != nil {
			return nil, err
		}
		if s.disp, err = role.NewDispatcher(cfg.Dispatcher, db, reg, log); err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		if err := s.disp.Start(ctx); err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
	}

	// Workers, one connection set each, as separate processes would have.
	wm := worker.NewMetrics(reg)
	for i, u := range urls {
		wcfg := cfg.Worker
		if !cfg.ExactWorkerID || len(urls) > 1 {
			wcfg.Worker.ID = fmt.Sprintf("%s-%d", cfg.Worker.Worker.ID, i+1)
		}
		wcfg.Comfy.BaseURL = u
		if inputDirs != nil {
			wcfg.Worker.InputDir = inputDirs[i]
		}
		if modelsDirs != nil && wcfg.Models.Cache.ModelsDir == "" {
			// Its emulator's models folder, which offers what appears in
			// it: models by URL work in dev as beside a real ComfyUI.
			wcfg.Models.Cache.ModelsDir = modelsDirs[i]
		}
		wb, err := open("comfyfleet-dev-" + wcfg.Worker.ID)
		if err != nil {
			return nil, err
		}
		w, err := role.NewWorker(wcfg, wb, wm, nil, log)
		if err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		s.workers = append(s.workers, w)
		if err := w.Start(ctx); err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
	}

	// The endpoint API, with the dispatcher's routes beside it.
	if !cfg.NoAdapter {
		ab, err := open("comfyfleet-dev-adapter")
		if err != nil {
			return nil, err
		}
		opts := role.AdapterOptions{API: true}
		if s.disp != nil {
			opts.Routes = s.disp.Routes()
			opts.OnShutdown = []func(){s.disp.CloseStreams}
		}
		if s.adapter, err = role.NewAdapter(cfg.Adapter, ab, reg, opts, log); err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		if err := s.adapter.Start(ctx); err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		s.Info.APIURL = "http://" + s.adapter.Addr()
		if s.disp != nil {
			s.Info.ConsoleURL = s.Info.APIURL + console.Path
		}
	}
	s.Info.S3Origins = s3Origins(cfg.Worker.S3.Endpoint, cfg.Worker.S3.PublicBaseURL)
	s.Info.PID = os.Getpid()
	if err := s.writeInfo(); err != nil {
		return nil, err
	}
	return s, nil
}

// startServers starts the embedded NATS and Redis unless the settings
// name servers of their own.
func (s *Stack) startServers(cfg *Config) error {
	cfg.Common.NATSURL, cfg.Common.RedisURL = cfg.NATSURL, cfg.RedisURL
	if cfg.NATSURL == "" {
		port := cfg.NATSPort
		switch port {
		case 0:
			port = 4222
		case -1:
			port = 0 // natsserver: random
		}
		n, err := natsserver.Start(natsserver.Config{Port: port, FallbackToRandomPort: true, StoreDir: filepath.Join(cfg.Dir, "nats")})
		if err != nil {
			return fmt.Errorf("dev stack: %w", err)
		}
		s.nats = n
		cfg.Common.NATSURL = n.URL()
		// The embedded server has no users and no TLS: the NATS
		// credentials and TLS settings are for a server of one's own.
		cfg.Common.Security.NATS = backend.NATSAuth{}
		s.Info.NATSFallback = port != 0 && !strings.HasSuffix(n.URL(), fmt.Sprintf(":%d", port))
	}
	s.Info.NATSURL = cfg.Common.NATSURL
	s.Info.Redis = "external"
	// A Redis behind Sentinel is one's own too: REDIS_URL then gives only
	// its credentials and database.
	if cfg.RedisURL == "" && !cfg.Common.Security.RedisSentinel.Enabled() {
		rc := redisserver.Config{Dir: filepath.Join(cfg.Dir, "redis"), RedisServer: cfg.RedisServer, Logger: s.log}
		if cfg.RedisServer == "-" {
			rc.Backend, rc.RedisServer = redisserver.BackendMiniredis, ""
		}
		rs, err := redisserver.Start(rc)
		if err != nil {
			return fmt.Errorf("dev stack: %w", err)
		}
		s.redis = rs
		cfg.Common.RedisURL = rs.URL()
		cfg.Common.Security.RedisTLS = backend.TLSFiles{} // as for NATS
		// It has no replicas to wait for (and miniredis no WAIT).
		cfg.Common.RedisWaitReplicas = 0
		s.Info.Redis = string(rs.Backend())
	}
	s.Info.RedisURL = cfg.Common.RedisURL
	return nil
}

// startSim runs one emulator on a random loopback port and returns its
// URL, its input folder and its models folder.
func (s *Stack) startSim(dir string, cfg Config) (url, inputDir, modelsDir string, err error) {
	modelsDir = filepath.Join(dir, "models")
	sim, err := comfysim.New(comfysim.Config{Dir: dir, ModelsDir: modelsDir, Checkpoints: cfg.Checkpoints, StepDelay: cfg.StepDelay,
		ModelLoadDelay: cfg.ModelLoadDelay, Logger: s.log}.WithVariantModels())
	if err != nil {
		return "", "", "", err
	}
	s.simCores = append(s.simCores, sim)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", "", fmt.Errorf("listen for the emulator: %w", err)
	}
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	s.sims = append(s.sims, srv)
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), sim.InputDir(), modelsDir, nil
}

// EmulatorStats returns the counters of the stack's emulators, one per
// worker in the order of Info.ComfyUIURLs; none when the workers run on
// ComfyUI URLs given.
func (s *Stack) EmulatorStats() []comfysim.Stats {
	out := make([]comfysim.Stats, 0, len(s.simCores))
	for _, sim := range s.simCores {
		out = append(out, sim.Stats())
	}
	return out
}

// s3Origins keeps the scheme and host of each URL given, nothing else.
func s3Origins(urls ...string) []string {
	var out []string
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if raw == "" || err != nil || u.Host == "" {
			continue
		}
		out = append(out, (&url.URL{Scheme: u.Scheme, Host: u.Host}).String())
	}
	return out
}

// StackFile is where the stack's addresses are written inside Dir.
const StackFile = "stack.json"

// writeInfo writes stack.json for its owner alone, as the URLs in it may
// carry credentials (a NATS_URL or REDIS_URL given with a password), and
// at once: a reader (the CLI) finds it whole or not at all.
func (s *Stack) writeInfo() error {
	data, _ := json.MarshalIndent(s.Info, "", "  ")
	path := filepath.Join(s.dir, StackFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("dev stack: write %s: %w", StackFile, err)
	}
	// A temporary file left by a stack that crashed keeps its mode.
	err := os.Chmod(tmp, 0o600)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("dev stack: write %s: %w", StackFile, err)
	}
	return nil
}

// Done is closed when the API's listener fails; without the adapter
// (NoAdapter) it never is.
func (s *Stack) Done() <-chan struct{} {
	if s.adapter == nil {
		return nil
	}
	return s.adapter.Done()
}

// Stop shuts the stack down in order: the API stops taking requests, the
// workers drain (their jobs finish or go back on the queue), the
// dispatcher stops, then the emulators and the shared servers, and the
// folder is let go. It is idempotent.
func (s *Stack) Stop() {
	if s.adapter != nil {
		s.adapter.Stop()
		s.adapter = nil
		_ = os.Remove(filepath.Join(s.dir, StackFile))
	}
	for _, w := range s.workers {
		w.Stop()
	}
	s.workers = nil
	if s.disp != nil {
		s.disp.Stop()
		s.disp = nil
	}
	for _, srv := range s.sims {
		_ = srv.Close()
	}
	s.sims = nil
	for _, sim := range s.simCores {
		_ = sim.Close()
	}
	s.simCores = nil
	for _, b := range s.backends {
		b.Close()
	}
	s.backends = nil
	if s.nats != nil {
		s.nats.Stop()
		s.nats = nil
	}
	if s.redis != nil {
		if err := s.redis.Stop(); err != nil {
			s.log.Error("stop the dev stack's Redis", zap.Error(err))
		}
		s.redis = nil
	}
	if s.lock != nil {
		s.lock.Release()
		s.lock = nil
	}
}
