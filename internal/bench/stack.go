package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/devstack"
)

// stack is what a scenario talks to: the addresses of a stack the bench
// started in this process, or of the running one it was pointed at.
type stack struct {
	APIURL  string
	NATSURL string
	// NATSAuth are the credentials and TLS files of a running stack's
	// NATS (Config.NATSAuth); none for a stack the bench started.
	NATSAuth    backend.NATSAuth
	RedisURL    string   // of a stack the bench started
	ComfyUIURLs []string // one per worker, when known
	InProcess   bool

	dev *devstack.Stack
}

// stackSpec is the stack a scenario asks for; a running stack is taken
// as it is.
type stackSpec struct {
	Workers int
	// StepDelay is the emulators' time per sampler step; negative means
	// none (devstack's and comfysim's convention).
	StepDelay time.Duration
	// ModelLoadDelay and Checkpoints are the emulators' (devstack's
	// defaults when zero).
	ModelLoadDelay time.Duration
	Checkpoints    []string
	// Env are settings of the roles, by variable, as `comfyfleet dev`
	// takes them (e.g. PREFETCH).
	Env map[string]string
	// NoDispatcher, NoAdapter and NoWorkers leave that role out: the
	// memory scenario runs the one it measures in a process of its own.
	NoDispatcher, NoAdapter, NoWorkers bool
}

// startStack starts the stack of scenario name, or returns the running
// one. Stop it with stop.
func (r *runner) startStack(ctx context.Context, name string, spec stackSpec) (*stack, error) {
	if r.cfg.External() {
		s := &stack{APIURL: r.cfg.APIURL, NATSURL: r.cfg.NATSURL, NATSAuth: r.cfg.NATSAuth}
		if r.cfg.ComfyUIURL != "" {
			s.ComfyUIURLs = []string{r.cfg.ComfyUIURL}
		}
		return s, nil
	}
	// The stack's settings, as `comfyfleet dev` reads them from an
	// environment that holds only spec.Env.
	cfg, err := devstack.ConfigFrom(func(k string) string { return spec.Env[k] })
	if err != nil {
		return nil, fmt.Errorf("stack settings: %w", err)
	}
	cfg.Dir, cfg.Listen, cfg.NATSPort = filepath.Join(r.dir, name), "127.0.0.1:0", -1
	cfg.Workers, cfg.StepDelay, cfg.RedisURL = spec.Workers, spec.StepDelay, r.cfg.RedisURL
	cfg.ModelLoadDelay = spec.ModelLoadDelay
	if spec.Checkpoints != nil {
		cfg.Checkpoints = spec.Checkpoints
	}
	cfg.Common.KeyPrefix = r.cfg.KeyPrefix
	cfg.Worker.Worker.Grace, cfg.Adapter.ShutdownGrace = 5*time.Second, 5*time.Second
	cfg.Common.LogLevel = "error"
	cfg.NoDispatcher, cfg.NoAdapter, cfg.NoWorkers = spec.NoDispatcher, spec.NoAdapter, spec.NoWorkers
	if setting, err := cfg.Finish(); err != nil {
		return nil, fmt.Errorf("stack settings: %s: %w", setting, err)
	}
	cfg.Logger = r.cfg.Logger.Named("stack")
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	dev, err := devstack.Start(startCtx, cfg)
	if err != nil {
		return nil, fmt.Errorf("start the stack: %w", err)
	}
	return &stack{APIURL: dev.Info.APIURL, NATSURL: dev.Info.NATSURL, RedisURL: dev.Info.RedisURL, ComfyUIURLs: dev.Info.ComfyUIURLs,
		InProcess: true, dev: dev}, nil
}

// stop stops a stack the bench started; a running one is left alone.
func (s *stack) stop() {
	if s.dev != nil {
		s.dev.Stop()
	}
}

// session is a scenario's stack and the bench's connections to it: an API
// client when the stack has an API, a NATS producer and the event watcher
// when it has a NATS.
type session struct {
	st  *stack
	api *apiClient
	bus *bus
	w   *watcher
}

// open starts (or takes) the stack of scenario name and connects to it,
// keeping up to conns HTTP connections. Close it with close.
func (r *runner) open(ctx context.Context, name string, spec stackSpec, conns int) (_ *session, err error) {
	st, err := r.startStack(ctx, name, spec)
	if err != nil {
		return nil, err
	}
	s := &session{st: st}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if st.APIURL != "" {
		s.api = newAPIClient(st.APIURL, conns)
	}
	if st.NATSURL != "" {
		if s.bus, err = dialBus(ctx, st.NATSURL, st.NATSAuth); err != nil {
			return nil, err
		}
		if s.w, err = s.bus.watch(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// close closes the connections, then stops a stack the bench started.
func (s *session) close() {
	if s.w != nil {
		s.w.stop()
	}
	if s.bus != nil {
		s.bus.close()
	}
	if s.api != nil {
		s.api.close()
	}
	s.st.stop()
}
