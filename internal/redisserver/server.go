package redisserver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Backend names the server that runs behind the Redis URL.
type Backend string

const (
	// BackendAuto, the zero value, runs redis-server when one is found and
	// miniredis otherwise.
	BackendAuto Backend = ""
	// BackendRedisServer runs a redis-server child process; Start fails
	// when there is no binary.
	BackendRedisServer Backend = "redis-server"
	// BackendMiniredis runs miniredis in this process with a snapshot
	// file, whether or not a redis-server binary exists.
	BackendMiniredis Backend = "miniredis"
)

// Config configures a server. The zero value of each field but Dir is its
// default.
type Config struct {
	// Dir holds the data: redis-server's append-only files, or
	// miniredis's snapshot. It is created if missing. Required.
	Dir string
	// Port to listen on, on 127.0.0.1; 0 means a random free port.
	Port int
	// Backend chooses the server; BackendAuto (the zero value) means
	// redis-server when one is found, miniredis otherwise.
	Backend Backend
	// RedisServer is the path of a redis-server binary; "" means look it
	// up on PATH. A path that is set but does not run is an error, never
	// a silent switch to miniredis.
	RedisServer string
	// ReadyTimeout bounds the wait for redis-server to answer PING;
	// 0 means 30 s (a large append-only file takes a while to load).
	ReadyTimeout time.Duration
	// StopTimeout bounds the wait for redis-server to exit after SIGTERM,
	// before it gets SIGKILL; 0 means 10 s.
	StopTimeout time.Duration
	// SnapshotInterval is how often miniredis's snapshot is written while
	// keys change; 0 means 1 s.
	SnapshotInterval time.Duration
	// Logger receives the server's log; nil means none.
	Logger *zap.Logger
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("dir: is required")
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("port: %d is out of range", c.Port)
	}
	switch c.Backend {
	case BackendAuto, BackendRedisServer, BackendMiniredis:
	default:
		return fmt.Errorf("backend: %q is not %q, %q or empty", c.Backend, BackendRedisServer, BackendMiniredis)
	}
	if c.Backend == BackendMiniredis && c.RedisServer != "" {
		return fmt.Errorf("redis server: %q is set with backend %q", c.RedisServer, c.Backend)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ready timeout", c.ReadyTimeout},
		{"stop timeout", c.StopTimeout},
		{"snapshot interval", c.SnapshotInterval},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s: %s is negative", d.name, d.v)
		}
	}
	return nil
}

// Server is a running Redis-protocol server.
type Server struct {
	backend Backend
	url     string
	impl    interface{ stop() error }

	stopOnce sync.Once
	stopErr  error
}

// Start starts a server and returns once it accepts commands. On error
// nothing is left running.
func Start(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("start redis server: %w", err)
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.SnapshotInterval == 0 {
		cfg.SnapshotInterval = time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("redis")
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("start redis server: dir %s: %w", cfg.Dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("start redis server: %w", err)
	}
	cfg.Dir = dir

	bin, err := findBinary(cfg)
	if err != nil {
		return nil, fmt.Errorf("start redis server: %w", err)
	}
	if bin == "" {
		warnForeign(log, filepath.Join(dir, aofDirName), BackendRedisServer)
		e, err := startEmbedded(cfg, log)
		if err != nil {
			return nil, fmt.Errorf("start redis server (miniredis): %w", err)
		}
		return &Server{backend: BackendMiniredis, url: e.url(), impl: e}, nil
	}
	warnForeign(log, filepath.Join(dir, snapshotName), BackendMiniredis)
	p, err := startProcess(cfg, bin, log)
	if err != nil {
		return nil, fmt.Errorf("start redis server: %w", err)
	}
	return &Server{backend: BackendRedisServer, url: p.url(), impl: p}, nil
}

// findBinary returns the redis-server binary to run, or "" for miniredis.
func findBinary(cfg Config) (string, error) {
	switch {
	case cfg.Backend == BackendMiniredis:
		return "", nil
	case cfg.RedisServer != "":
		bin, err := exec.LookPath(cfg.RedisServer)
		if err != nil {
			return "", fmt.Errorf("redis server binary %s: %w", cfg.RedisServer, err)
		}
		return bin, nil
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if cfg.Backend == BackendRedisServer {
			return "", fmt.Errorf("backend %s: %w", BackendRedisServer, err)
		}
		return "", nil
	}
	return bin, nil
}

// warnForeign logs when the folder holds the other backend's data, which
// this one does not read.
func warnForeign(log *zap.Logger, path string, other Backend) {
	if _, err := os.Stat(path); err == nil {
		log.Warn("folder holds data of the other backend, which is not loaded",
			zap.String("path", path), zap.String("written_by", string(other)))
	}
}

// URL is the client URL, e.g. redis://127.0.0.1:6379/0.
func (s *Server) URL() string { return s.url }

// Backend says which server runs: BackendRedisServer or BackendMiniredis.
func (s *Server) Backend() Backend { return s.backend }

// Stop stops the server and waits until its data is on disk and it has
// exited. It is idempotent, safe on a nil or zero Server, and every call
// returns the first call's error: a failed final snapshot (miniredis) or a
// redis-server that had to be killed or exited with an error.
func (s *Server) Stop() error {
	if s == nil {
		return nil
	}
	s.stopOnce.Do(func() {
		if s.impl != nil {
			s.stopErr = s.impl.stop()
		}
	})
	return s.stopErr
}
