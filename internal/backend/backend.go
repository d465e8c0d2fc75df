// Package backend opens the connections every comfyfleet process needs:
// NATS (with the contract's streams and buckets, through package queue)
// and Redis (package rdb), and the lifecycle core on top of them, so each
// role and tool connects the same way.
package backend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

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
	Name    string
	NATSURL string
	// NATSAuth are the credentials and TLS files of the NATS connection.
	NATSAuth NATSAuth
	RedisURL string
	// RedisTLS are the TLS files of a rediss:// RedisURL.
	RedisTLS TLSFiles
	// RedisSentinel, with addresses, finds the Redis master through Redis
	// Sentinel; RedisURL then gives only its scheme, credentials and
	// database.
	RedisSentinel rdb.Sentinel
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
	if setting, err := CheckRedis(cfg.RedisURL, cfg.RedisTLS); err != nil {
		return nil, fmt.Errorf("%s: %w", setting, err)
	}
	if setting, err := CheckSentinel(cfg.RedisSentinel); err != nil {
		return nil, fmt.Errorf("%s: %w", setting, err)
	}
	redisTLS, _ := cfg.RedisTLS.Config() // checked above
	nlog := log.Named("nats")
	nc, err := ConnectNATS(ctx, cfg.Name, cfg.NATSURL, cfg.NATSAuth,
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				nlog.Warn("disconnected", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { nlog.Info("reconnected", zap.String("url", c.ConnectedUrlRedacted())) }),
	)
	if err != nil {
		return nil, err
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
	if b.DB, err = rdb.Dial(ctx, cfg.RedisURL, redisTLS, cfg.RedisSentinel, cfg.DB); err != nil {
		b.Close()
		where := RedactURLs(cfg.RedisURL)
		if cfg.RedisSentinel.Enabled() {
			where = fmt.Sprintf("master %q of the sentinels %s", sentinelMaster(cfg.RedisSentinel), strings.Join(cfg.RedisSentinel.Addrs, ","))
		}
		return nil, &UnreachableError{Server: "Redis", URL: where, Err: err}
	}
	b.Core = lifecycle.New(b.DB, b.Queue, log)
	return b, nil
}

func sentinelMaster(s rdb.Sentinel) string {
	if s.MasterName == "" {
		return rdb.DefaultMasterName
	}
	return s.MasterName
}

// UnreachableError is a server that did not let the process in: down,
// refused, a TLS or authentication failure. The URL is redacted.
type UnreachableError struct {
	Server, URL string
	Err         error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("%s at %s unreachable: %v", e.Server, e.URL, e.Err)
}
func (e *UnreachableError) Unwrap() error { return e.Err }

// ConnectNATS connects to the NATS servers of urls as name, with auth's
// credentials and TLS files and more options, reconnecting for ever once
// connected. Its error is auth's setting at fault, or an
// [UnreachableError] with the URLs redacted. Every connection of
// comfyfleet to a fleet's NATS is made here.
func ConnectNATS(ctx context.Context, name, urls string, auth NATSAuth, more ...nats.Option) (*nats.Conn, error) {
	secure, err := auth.Options()
	if err != nil {
		return nil, err
	}
	opts := append(secure, nats.Name(name), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false))
	nc, err := nats.Connect(urls, append(opts, more...)...)
	if err != nil {
		return nil, &UnreachableError{Server: "NATS", URL: RedactURLs(urls), Err: dialCause(ctx, urls, err)}
	}
	return nc, nil
}

// dialCause adds to nats.go's "no servers available", which hides why,
// the reason a TCP dial to the first server fails (refused, no such host,
// timeout); other errors (TLS, authorization) already say it.
func dialCause(ctx context.Context, urls string, err error) error {
	if !errors.Is(err, nats.ErrNoServers) {
		return err
	}
	first, _, _ := strings.Cut(urls, ",")
	first = strings.TrimSpace(first)
	if !strings.Contains(first, "://") {
		first = "nats://" + first
	}
	u, perr := url.Parse(first)
	if perr != nil || u.Host == "" {
		return err
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "4222")
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, derr := (&net.Dialer{}).DialContext(dctx, "tcp", host)
	if derr != nil {
		return fmt.Errorf("%w (%v)", err, derr)
	}
	c.Close()
	return err
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
