package role

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/logging"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
)

// startTimeout bounds a process's start: connecting, ensuring streams.
const startTimeout = 30 * time.Second

// Common are the settings every role shares: where NATS and Redis are,
// how the streams are kept, the log level.
type Common struct {
	NATSURL  string
	RedisURL string
	// Security are the NATS credentials and the TLS files of NATS and
	// Redis.
	Security Security
	// KeyPrefix goes before every Redis key (tests sharing one Redis).
	KeyPrefix string
	// Streams sizes the streams and buckets.
	Streams queue.Config
	// RedisWaitReplicas and RedisWaitTimeout make each job transition
	// wait for that many Redis replicas (rdb.Options.WaitReplicas); -1
	// is the default of WaitReplicas.
	RedisWaitReplicas int
	RedisWaitTimeout  time.Duration
	LogLevel          string
}

// Bind binds the common settings.
func (c *Common) Bind(fs *flagenv.Set) {
	fs.String(&c.NATSURL, "nats-url", "NATS_URL", backend.DefaultNATSURL, "NATS server(s), comma-separated: nats://[user:password@]host:port, or tls:// for TLS")
	fs.String(&c.RedisURL, "redis-url", "REDIS_URL", backend.DefaultRedisURL, "Redis server: redis://[user:password@]host:port/db, or rediss:// for TLS")
	c.Security.Bind(fs)
	fs.Int(&c.RedisWaitReplicas, "redis-wait-replicas", "REDIS_WAIT_REPLICAS", -1, "Redis replicas that must have each job transition (WAIT) before the process acts on it, so that a Sentinel failover loses none; 0: no waiting; -1: 1 with REDIS_SENTINELS, else 0. While fewer are connected, transitions fail and are retried (docs/scaling.md)")
	fs.Duration(&c.RedisWaitTimeout, "redis-wait-timeout", "REDIS_WAIT_TIMEOUT", rdb.DefaultWaitTimeout, "how long a transition waits for REDIS_WAIT_REPLICAS before it counts as failed (up to 2s)")
	fs.Int(&c.Streams.Replicas, "stream-replicas", "STREAM_REPLICAS", 1, "replicas of every stream, the object store and the KV bucket on a NATS cluster (1, 3 or 5); a change takes effect as the next process starts")
	fs.Duration(&c.Streams.EventsMaxAge, "events-max-age", "EVENTS_MAX_AGE", queue.DefaultEventsMaxAge, "how long job events are kept in CF_EVENTS (/stream, late subscribers)")
	fs.Int64(&c.Streams.EventsMaxBytes, "events-max-bytes", "EVENTS_MAX_BYTES", queue.DefaultEventsMaxBytes, "size bound of CF_EVENTS; the oldest events go first")
	fs.Duration(&c.Streams.DLQMaxAge, "dlq-max-age", "DLQ_MAX_AGE", queue.DefaultDLQMaxAge, "how long dead letters are kept in CF_DLQ")
	fs.Int64(&c.Streams.DLQMaxBytes, "dlq-max-bytes", "DLQ_MAX_BYTES", queue.DefaultDLQMaxBytes, "size bound of CF_DLQ; the oldest dead letters go first")
	fs.String(&c.LogLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
}

// Finish checks the common settings, naming the one at fault.
func (c *Common) Finish() (setting string, err error) {
	if setting, err := c.Security.Finish(c.NATSURL, c.RedisURL); err != nil {
		return setting, err
	}
	if r := c.Streams.Replicas; r < 1 || r > 5 {
		return "STREAM_REPLICAS", fmt.Errorf("want 1 to 5 replicas (3 or 5 on a cluster of that many nodes or more), got %d", r)
	}
	if err := c.Streams.Validate(); err != nil {
		return "EVENTS_*/DLQ_*", err
	}
	if c.RedisWaitReplicas < -1 {
		return "REDIS_WAIT_REPLICAS", fmt.Errorf("want 0 or more replicas (-1: the default), got %d", c.RedisWaitReplicas)
	}
	if t := c.RedisWaitTimeout; t <= 0 || t > 2*time.Second {
		return "REDIS_WAIT_TIMEOUT", fmt.Errorf("want above 0 and up to 2s, got %v", t)
	}
	if _, err := logging.New(c.LogLevel); err != nil {
		return "LOG_LEVEL", err
	}
	return "", nil
}

// WaitReplicas is the number of replicas each transition waits for:
// RedisWaitReplicas, or by default one behind Sentinel (whose
// asynchronous replication would otherwise lose the last transitions
// of a failed master, and with them jobs whose messages were acked) and
// none on a single Redis.
func (c *Common) WaitReplicas() int {
	if c.RedisWaitReplicas >= 0 {
		return c.RedisWaitReplicas
	}
	if c.Security.RedisSentinel.Enabled() {
		return 1
	}
	return 0
}

// Logger builds the logger of LogLevel.
func (c *Common) Logger() (*zap.Logger, error) { return logging.New(c.LogLevel) }

// Open connects a process named name to NATS and Redis and ensures the
// streams and buckets.
func (c *Common) Open(ctx context.Context, name string, log *zap.Logger) (*backend.Backend, error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	b, err := backend.Open(ctx, c.backendConfig(name, log))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}

// Retry delays of OpenRetrying: a worker's fleet that is down is tried
// again soon, but never more than every half minute.
const (
	retryMin = time.Second
	retryMax = 30 * time.Second
)

// OpenRetrying is Open for a process that must wait for its fleet instead
// of exiting (a RunPod worker: RunPod would restart it in a loop, without
// saying why): while NATS or Redis is unreachable, refuses the
// credentials or fails TLS verification, each try logs the cause (URLs
// redacted) and the delay before the next, with capped exponential
// backoff, until ctx ends. Settings that are wrong in themselves (a
// missing file) were refused by Finish before.
func (c *Common) OpenRetrying(ctx context.Context, name string, log *zap.Logger) (*backend.Backend, error) {
	bo := backoff.New(retryMin, retryMax)
	for try := 1; ; try++ {
		b, err := c.Open(ctx, name, log)
		if err == nil {
			if try > 1 {
				log.Info("fleet reachable", zap.Int("tries", try))
			}
			return b, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		d := bo.Next()
		log.Warn(fmt.Sprintf("%v; retrying in %s", err, d.Round(100*time.Millisecond)),
			zap.Int("try", try), zap.Duration("retry_in", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%s: gave up waiting for the fleet: %w", name, err)
		case <-t.C:
		}
	}
}

func (c *Common) backendConfig(name string, log *zap.Logger) backend.Config {
	cfg := backend.Config{Name: name, NATSURL: c.NATSURL, NATSAuth: c.Security.NATS, RedisURL: c.RedisURL,
		RedisTLS: c.Security.RedisTLS, RedisSentinel: c.Security.RedisSentinel, Queue: c.Streams, Logger: log}
	cfg.DB.Prefix = c.KeyPrefix
	cfg.DB.WaitReplicas, cfg.DB.WaitTimeout = c.WaitReplicas(), c.RedisWaitTimeout
	return cfg
}
