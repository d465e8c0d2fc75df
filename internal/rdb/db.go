package rdb

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of [Options].
const (
	// DefaultRetention is how long a terminal record is kept: RunPod's
	// retention of /run results.
	DefaultRetention = 30 * time.Minute
	// DefaultTTL is RunPod's default policy.ttl, a job's whole lifespan.
	DefaultTTL = 24 * time.Hour
	// DefaultWorkerTTL is how long a worker heartbeat lives.
	DefaultWorkerTTL = 15 * time.Second
	// DefaultWebhookTTL is how long a job's webhook target is kept.
	DefaultWebhookTTL = 7 * 24 * time.Hour
	// AttemptsKeep is how long an attempt log is kept after its last entry.
	AttemptsKeep = DefaultTTL + time.Hour
)

// Options configure a [DB]. The zero value is the production setup.
type Options struct {
	// Prefix goes in front of every key: "" in production, a per-test
	// prefix in tests.
	Prefix string
	// Retention is how long a terminal record is kept when the job names
	// none; zero means DefaultRetention.
	Retention time.Duration
	// TTL is a job's policy.ttl when it names none; zero means DefaultTTL.
	TTL time.Duration
	// WorkerTTL is how long a worker heartbeat lives; zero means
	// DefaultWorkerTTL.
	WorkerTTL time.Duration
	// WebhookTTL is how long a job's webhook target is kept after
	// admission; zero means DefaultWebhookTTL.
	WebhookTTL time.Duration
}

// Validate reports the first setting that cannot be used.
func (o Options) Validate() error {
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"retention", o.Retention}, {"TTL", o.TTL}, {"worker TTL", o.WorkerTTL}, {"webhook TTL", o.WebhookTTL}} {
		if d.d < 0 {
			return fmt.Errorf("redis %s %v is negative", d.name, d.d)
		}
	}
	return nil
}

// DB is comfyfleet's Redis: the job records and their leases, TTL index and
// attempt logs (jobs.go, sweep.go), the fleet's heartbeats (fleet.go),
// webhook targets (webhook.go), batch indexes (batch.go), the recent
// jobs, lane rates and the operator's controls (control.go) and /stream
// cursors (cursor.go). It is safe for concurrent use.
type DB struct {
	rdb        redis.UniversalClient
	prefix     string
	retention  time.Duration
	ttl        time.Duration
	workerTTL  time.Duration
	webhookTTL time.Duration
}

// New returns a DB on rdb. Settings that Validate refuses are replaced by
// their defaults.
func New(rdb redis.UniversalClient, opts Options) *DB {
	db := &DB{rdb: rdb, prefix: opts.Prefix, retention: opts.Retention, ttl: opts.TTL,
		workerTTL: opts.WorkerTTL, webhookTTL: opts.WebhookTTL}
	if db.retention <= 0 {
		db.retention = DefaultRetention
	}
	if db.ttl <= 0 {
		db.ttl = DefaultTTL
	}
	if db.workerTTL <= 0 {
		db.workerTTL = DefaultWorkerTTL
	}
	if db.webhookTTL <= 0 {
		db.webhookTTL = DefaultWebhookTTL
	}
	return db
}

// Client is the Redis client, for what is not comfyfleet's (the tests'
// cleanup, a health check).
func (db *DB) Client() redis.UniversalClient { return db.rdb }

// Prefix is the key prefix.
func (db *DB) Prefix() string { return db.prefix }

// key puts the prefix in front of one of proto's keys.
func (db *DB) key(k string) string { return db.prefix + k }

// millis is d in whole milliseconds, at least 1: PEXPIRE 0 would delete.
func millis(d time.Duration) int64 {
	return max(1, d.Milliseconds())
}

// CheckURL reports what is wrong with a Redis URL (redis:// or rediss://).
func CheckURL(url string) error {
	_, err := redis.ParseURL(url)
	return err
}

// Dial connects to the Redis at url (redis:// or rediss://, with an ACL
// user and password in its userinfo), makes sure it answers, and returns
// a DB on it; Close closes the connection. tlsConfig, when not nil,
// replaces the TLS settings a rediss:// URL implies (a custom CA, a client
// certificate); its ServerName defaults to the URL's host.
func Dial(ctx context.Context, url string, tlsConfig *tls.Config, opts Options) (*DB, error) {
	ropts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	if tlsConfig != nil {
		tc := tlsConfig.Clone()
		if tc.ServerName == "" && ropts.TLSConfig != nil {
			tc.ServerName = ropts.TLSConfig.ServerName
		}
		ropts.TLSConfig = tc
	}
	c := redis.NewClient(ropts)
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("ping: %w", err)
	}
	return New(c, opts), nil
}

// Close closes the DB's Redis connection.
func (db *DB) Close() error { return db.rdb.Close() }
