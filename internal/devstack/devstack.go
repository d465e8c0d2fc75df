// Package devstack runs the whole fleet in one process for a developer's
// machine: an embedded NATS server (unless NATS_URL names one), an embedded
// Redis-protocol server (unless REDIS_URL names one), one dispatcher, the
// runpod-adapter's endpoint API, and N gpuworkers, each on its own ComfyUI
// emulator unless ComfyUI URLs are given. `comfyfleet dev` is a thin shell
// around Start; the end-to-end tests use it too.
package devstack

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/natsserver"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/worker"
)

// Config configures the stack. The zero value of each field is its default.
type Config struct {
	// Dir holds the embedded NATS server's data and the emulators' files,
	// and the stack file the CLI reads; "" means ./.comfyfleet.
	Dir string
	// Listen is the endpoint API's address; "" means 127.0.0.1:8000.
	Listen string
	// Workers is the number of gpuworkers; 0 means 2. With ComfyUIURLs
	// set, there is one worker per URL and Workers is ignored.
	Workers     int
	ComfyUIURLs []string
	// NATSURL and RedisURL name external servers; "" embeds one.
	NATSURL  string
	RedisURL string
	// NATSPort is the embedded NATS server's port; 0 means 4222, or a
	// random port when 4222 is taken; -1 means a random port.
	NATSPort int
	// StepDelay is the emulators' time per sampler step; 0 is their default.
	StepDelay time.Duration
	// KeyPrefix goes before every Redis key (tests sharing a Redis).
	KeyPrefix string
	// Grace is each worker's shutdown grace period; 0 means 10 s.
	Grace  time.Duration
	Logger *zap.Logger
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Workers < 0 {
		return fmt.Errorf("workers: %d is negative", c.Workers)
	}
	if c.NATSPort < -1 || c.NATSPort > 65535 {
		return fmt.Errorf("nats port: %d is out of range", c.NATSPort)
	}
	return nil
}

// Info says where the stack's parts listen; it is also written to
// <Dir>/stack.json for the CLI.
type Info struct {
	APIURL      string   `json:"api_url"`
	NATSURL     string   `json:"nats_url"`
	RedisURL    string   `json:"redis_url"`
	ComfyUIURLs []string `json:"comfyui_urls"`
	PID         int      `json:"pid"`
}

// Stack is a running local fleet.
type Stack struct {
	Info Info

	log      *zap.Logger
	dir      string
	nats     *natsserver.Server
	redis    *miniredis.Miniredis
	backends []*backend.Backend
	sims     []*http.Server
	simCores []*comfysim.Server
	clients  []*comfy.Client
	disp     *dispatch.Dispatcher
	hooks    *dispatch.Webhooks
	workers  []*worker.Worker
	api      *http.Server
	apiDone  chan error
}

// Start brings the stack up and returns once the API accepts requests.
// On error everything started so far is stopped.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dev stack: %w", err)
	}
	if cfg.Dir == "" {
		cfg.Dir = ".comfyfleet"
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8000"
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	switch cfg.NATSPort {
	case 0:
		cfg.NATSPort = 4222
	case -1:
		cfg.NATSPort = 0 // natsserver: random
	}
	if cfg.Grace == 0 {
		cfg.Grace = 10 * time.Second
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
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("dev stack: %w", err)
	}

	// Shared servers.
	s.Info.NATSURL = cfg.NATSURL
	if s.Info.NATSURL == "" {
		s.nats, err = natsserver.Start(natsserver.Config{
			Port: cfg.NATSPort, FallbackToRandomPort: true, StoreDir: filepath.Join(cfg.Dir, "nats"),
		})
		if err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		s.Info.NATSURL = s.nats.URL()
	}
	s.Info.RedisURL = cfg.RedisURL
	if s.Info.RedisURL == "" {
		s.redis = miniredis.NewMiniRedis()
		if err := s.redis.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("dev stack: start embedded redis: %w", err)
		}
		s.Info.RedisURL = "redis://" + s.redis.Addr() + "/0"
	}
	open := func(name string) (*backend.Backend, error) {
		b, err := backend.Open(ctx, backend.Config{
			Name: name, NATSURL: s.Info.NATSURL, RedisURL: s.Info.RedisURL, KeyPrefix: cfg.KeyPrefix, Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		s.backends = append(s.backends, b)
		return b, nil
	}

	// ComfyUI: given URLs, or one emulator per worker.
	urls := cfg.ComfyUIURLs
	if len(urls) == 0 {
		for i := range cfg.Workers {
			u, err := s.startSim(filepath.Join(cfg.Dir, fmt.Sprintf("comfysim-%d", i+1)), cfg.StepDelay)
			if err != nil {
				return nil, fmt.Errorf("dev stack: %w", err)
			}
			urls = append(urls, u)
		}
	}
	s.Info.ComfyUIURLs = urls

	// Control plane.
	db, err := open("comfyfleet-dev-dispatcher")
	if err != nil {
		return nil, err
	}
	if s.disp, err = dispatch.New(dispatch.Config{}, db.Queue, db.Status, log); err != nil {
		return nil, fmt.Errorf("dev stack: %w", err)
	}
	// Webhooks may reach this machine: the stack is local. They start
	// before admission, so their consumer exists before any job ends.
	targets := dispatch.NewWebhookTargets(db.Redis, cfg.KeyPrefix, 0)
	s.disp.SetAdmission(dispatch.Admission{Webhooks: targets, Models: dispatch.NewModelCheck(dispatch.ModelCheckConfig{}, db.Fleet, db.Status)})
	if s.hooks, err = dispatch.NewWebhooks(dispatch.WebhookConfig{Allow: []string{"127.0.0.0/8", "::1"}}, dispatch.WebhookDeps{
		JetStream: db.Queue.JetStream(), Targets: targets, Records: db.Status, Blobs: db.Blobs,
	}, log); err != nil {
		return nil, fmt.Errorf("dev stack: %w", err)
	}
	if err := s.hooks.Start(ctx); err != nil {
		return nil, fmt.Errorf("dev stack: %w", err)
	}
	if err := s.disp.Start(ctx); err != nil {
		return nil, fmt.Errorf("dev stack: %w", err)
	}

	// Workers, one connection set each, as separate processes would have.
	for i, u := range urls {
		id := fmt.Sprintf("dev-worker-%d", i+1)
		wb, err := open("comfyfleet-dev-" + id)
		if err != nil {
			return nil, err
		}
		cc, err := comfy.New(comfy.Config{BaseURL: u, Logger: log.With(zap.String("worker_id", id))})
		if err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		s.clients = append(s.clients, cc)
		w, err := worker.New(worker.Config{ID: id, Grace: cfg.Grace}, worker.Deps{
			Queue: wb.Queue, Store: wb.Status, Blobs: wb.Blobs, ComfyUI: cc, Fleet: wb.Fleet, Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		if err := w.Start(ctx); err != nil {
			return nil, fmt.Errorf("dev stack: %w", err)
		}
		s.workers = append(s.workers, w)
	}

	// The endpoint API.
	ab, err := open("comfyfleet-dev-adapter")
	if err != nil {
		return nil, err
	}
	api := runpod.NewAPI(runpod.Config{}, ab.Queue, ab.Status, ab.Blobs, ab.Fleet, log)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("dev stack: listen for the API: %w", err)
	}
	s.api = &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}
	s.apiDone = make(chan error, 1)
	go func() { s.apiDone <- s.api.Serve(ln) }()
	s.Info.APIURL = "http://" + ln.Addr().String()
	s.Info.PID = os.Getpid()
	if err := s.writeInfo(); err != nil {
		return nil, err
	}
	return s, nil
}

// startSim runs one emulator on a random loopback port.
func (s *Stack) startSim(dir string, stepDelay time.Duration) (string, error) {
	sim, err := comfysim.New(comfysim.Config{Dir: dir, StepDelay: stepDelay, Logger: s.log})
	if err != nil {
		return "", err
	}
	s.simCores = append(s.simCores, sim)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("listen for the emulator: %w", err)
	}
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	s.sims = append(s.sims, srv)
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), nil
}

// StackFile is where the stack's addresses are written inside Dir.
const StackFile = "stack.json"

func (s *Stack) writeInfo() error {
	data, _ := json.MarshalIndent(s.Info, "", "  ")
	if err := os.WriteFile(filepath.Join(s.dir, StackFile), data, 0o644); err != nil {
		return fmt.Errorf("dev stack: write %s: %w", StackFile, err)
	}
	return nil
}

// Stop shuts the stack down in order: the API stops taking requests, the
// workers drain (their jobs finish or go back on the queue), the dispatcher
// stops, then the emulators and the shared servers. It is idempotent.
func (s *Stack) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s.api != nil {
		_ = s.api.Shutdown(ctx)
		<-s.apiDone
		s.api = nil
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
	if s.hooks != nil {
		s.hooks.Stop()
		s.hooks = nil
	}
	for _, c := range s.clients {
		_ = c.Close()
	}
	s.clients = nil
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
		s.redis.Close()
		s.redis = nil
	}
}
