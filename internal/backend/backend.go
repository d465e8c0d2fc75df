// Package backend opens the shared backends every comfyfleet process talks
// to (NATS with the contract's streams and the blob store, and Redis with
// the status store and the fleet registry), so each binary wires them the
// same way.
package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/status"
)

// Default addresses, as DESIGN.md names them.
const (
	DefaultNATSURL  = "nats://127.0.0.1:4222"
	DefaultRedisURL = "redis://127.0.0.1:6379/0"
)

// Config says where the backends are.
type Config struct {
	// Name identifies the process in NATS's connection list.
	Name     string
	NATSURL  string
	RedisURL string
	// KeyPrefix goes before every Redis key (tests); "" in production.
	KeyPrefix string
	Queue     queue.Config
	Blobs     blob.ObjectStoreConfig
	Status    status.Options
	// Attach opens existing streams and the blob bucket without creating or
	// reconfiguring them: for tools (the CLI) that must not change a
	// deployment's stream settings.
	Attach bool
	// WorkerTTL is how long a worker heartbeat lives; 0 means 15 s.
	WorkerTTL time.Duration
	Logger    *zap.Logger
}

// Backend is a set of open connections.
type Backend struct {
	NATS   *nats.Conn
	Queue  *queue.Client
	Blobs  blob.Store
	Redis  *redis.Client
	Status *status.Store
	Fleet  *fleet.Registry
}

// Open connects to NATS and Redis, ensures the streams and the blob bucket,
// and checks that Redis answers. ctx bounds the whole start.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.NATSURL == "" {
		cfg.NATSURL = DefaultNATSURL
	}
	if cfg.RedisURL == "" {
		cfg.RedisURL = DefaultRedisURL
	}
	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	nlog := log.Named("nats")
	nc, err := nats.Connect(cfg.NATSURL,
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				nlog.Warn("disconnected", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { nlog.Info("reconnected", zap.String("url", c.ConnectedUrlRedacted())) }),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", cfg.NATSURL, err)
	}
	b := &Backend{NATS: nc}
	if b.Queue, err = queue.New(nc); err != nil {
		b.Close()
		return nil, err
	}
	if !cfg.Attach {
		if err := b.Queue.Ensure(ctx, cfg.Queue); err != nil {
			b.Close()
			return nil, err
		}
		b.Blobs, err = blob.OpenObjectStore(ctx, b.Queue.JetStream(), cfg.Blobs)
	} else {
		b.Blobs, err = blob.AttachObjectStore(ctx, b.Queue.JetStream(), cfg.Blobs.Bucket)
	}
	if err != nil {
		b.Close()
		return nil, err
	}
	b.Redis = redis.NewClient(ropts)
	if err := b.Redis.Ping(ctx).Err(); err != nil {
		b.Close()
		return nil, fmt.Errorf("connect to Redis at %s: %w", ropts.Addr, err)
	}
	sopts := cfg.Status
	sopts.Prefix = cfg.KeyPrefix
	b.Status = status.NewStore(b.Redis, sopts)
	b.Fleet = fleet.NewRegistry(b.Redis, cfg.KeyPrefix, cfg.WorkerTTL)
	return b, nil
}

// Close closes every connection; safe on a partly opened Backend.
func (b *Backend) Close() {
	if b.Redis != nil {
		_ = b.Redis.Close()
	}
	if b.NATS != nil {
		b.NATS.Close()
	}
}
