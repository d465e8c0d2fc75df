// Package backend opens the connections every comfyfleet process needs:
// NATS (with the contract's streams and buckets, through package queue)
// and Redis (package rdb), and the lifecycle core on top of them, so each
// role and tool connects the same way.
package backend

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
)

// Default addresses, as DESIGN.md names them.
const (
	DefaultNATSURL  = "nats://127.0.0.1:4222"
	DefaultRedisURL = "redis://127.0.0.1:6379/0"
)

// Config says where the backends are and how the streams and keys are
// kept.
type Config struct {
	// Name identifies the process in NATS's connection list.
	Name     string
	NATSURL  string
	RedisURL string
	// Queue sizes the streams and buckets (ignored with Attach).
	Queue queue.Config
	// DB are the Redis settings: key prefix (tests), retention, TTLs.
	DB rdb.Options
	// Attach opens existing streams and the blob bucket without creating or
	// reconfiguring them: for tools (the CLI) that must not change a
	// deployment's stream settings.
	Attach bool
	Logger *zap.Logger
}

// Backend is a set of open connections and the core on them.
type Backend struct {
	Queue *queue.Client
	DB    *rdb.DB
	Core  *lifecycle.Core
	// Blobs is the object store, the blob store of a fleet without S3.
	Blobs blob.Store

	nc *nats.Conn
}

// Open connects to NATS and Redis, ensures the streams and buckets (or
// attaches to them), and checks that Redis answers. ctx bounds the whole
// start.
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
	if err := rdb.CheckURL(cfg.RedisURL); err != nil {
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
		return nil, fmt.Errorf("connect to NATS at %s: %w", RedactURLs(cfg.NATSURL), err)
	}
	b := &Backend{nc: nc}
	if b.Queue, err = queue.New(nc); err != nil {
		b.Close()
		return nil, err
	}
	if cfg.Attach {
		err = b.Queue.Attach(ctx)
	} else {
		err = b.Queue.Ensure(ctx, cfg.Queue)
	}
	if err != nil {
		b.Close()
		return nil, err
	}
	b.Blobs = b.Queue.Blobs()
	if b.DB, err = rdb.Dial(ctx, cfg.RedisURL, cfg.DB); err != nil {
		b.Close()
		return nil, err
	}
	b.Core = lifecycle.New(b.DB, b.Queue, log)
	return b, nil
}

// Close closes every connection; safe on a partly opened Backend.
func (b *Backend) Close() {
	if b.DB != nil {
		_ = b.DB.Close()
	}
	if b.nc != nil {
		b.nc.Close()
	}
}

// RedactURLs hides the passwords and tokens of server URLs (NATS_URL takes
// several, comma-separated) so they can be logged or shown in an error.
func RedactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		if _, hasPassword := u.User.Password(); !hasPassword {
			u.User = url.User("xxxxx") // a token
		}
		parts[i] = u.Redacted()
	}
	return strings.Join(parts, ",")
}
