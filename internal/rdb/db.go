package rdb

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
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
	// WaitReplicas, when above zero, makes every transition wait (WAIT)
	// until that many replicas have it, and every earlier write of the
	// process, before it counts as done: a transition fewer replicas
	// confirmed within WaitTimeout returns a *NotReplicatedError (the
	// master has it; the caller tries again as when Redis is away). So
	// a failover to a replica that confirmed it loses no transition a
	// process acted on. Zero: no waiting (one Redis, or a failover may
	// lose the last transitions: docs/scaling.md).
	WaitReplicas int
	// WaitTimeout bounds each WAIT; zero means DefaultWaitTimeout.
	WaitTimeout time.Duration
}

// DefaultWaitTimeout bounds a transition's WAIT for its replicas.
const DefaultWaitTimeout = time.Second

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
	if o.WaitReplicas < 0 {
		return fmt.Errorf("redis wait replicas %d is negative", o.WaitReplicas)
	}
	if o.WaitTimeout < 0 || o.WaitTimeout > maxWaitTimeout {
		return fmt.Errorf("redis wait timeout %v: want 0 (the default, %v) up to %v", o.WaitTimeout, DefaultWaitTimeout, maxWaitTimeout)
	}
	return nil
}

// maxWaitTimeout keeps a WAIT inside go-redis's default read timeout
// (3 s), within which a pipeline reads its replies.
const maxWaitTimeout = 2 * time.Second

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
	// waitReplicas and waitTimeout are Options.WaitReplicas and
	// WaitTimeout.
	waitReplicas int
	waitTimeout  time.Duration
}

// New returns a DB on rdb. Settings that Validate refuses are replaced by
// their defaults.
func New(rdb redis.UniversalClient, opts Options) *DB {
	db := &DB{rdb: rdb, prefix: opts.Prefix, retention: opts.Retention, ttl: opts.TTL,
		workerTTL: opts.WorkerTTL, webhookTTL: opts.WebhookTTL, waitReplicas: max(0, opts.WaitReplicas), waitTimeout: opts.WaitTimeout}
	if db.waitTimeout <= 0 || db.waitTimeout > maxWaitTimeout {
		db.waitTimeout = DefaultWaitTimeout
	}
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

// DefaultMasterName is the name Redis's sentinel.conf gives its example
// master, the name a [Sentinel] without one looks for.
const DefaultMasterName = "mymaster"

// Sentinel says how to find the master through Redis Sentinel. Without
// Addrs, Redis is the URL's server.
type Sentinel struct {
	// Addrs are host:port of the sentinels (any of them; each is asked in
	// turn until one answers).
	Addrs []string
	// MasterName is the name the sentinels monitor the master under;
	// empty means DefaultMasterName.
	MasterName string
	// Username and Password authenticate to the sentinels themselves
	// (their requirepass, or an ACL user of theirs); the master's own come
	// from the URL.
	Username, Password string
}

// Enabled reports whether Redis is found through Sentinel.
func (s Sentinel) Enabled() bool { return len(s.Addrs) > 0 }

// Check reports what is wrong with the settings: an address that is not
// host:port, a master name with spaces, a user without a password.
func (s Sentinel) Check() error {
	for _, a := range s.Addrs {
		host, port, err := net.SplitHostPort(strings.TrimSpace(a))
		if err != nil {
			return fmt.Errorf("sentinel address %q: want host:port", a)
		}
		if host == "" {
			return fmt.Errorf("sentinel address %q has no host", a)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("sentinel address %q: port %q is not 1 to 65535", a, port)
		}
	}
	if strings.ContainsAny(s.MasterName, " \t\r\n") {
		return fmt.Errorf("sentinel master name %q has white space", s.MasterName)
	}
	if !s.Enabled() && (s.Username != "" || s.Password != "") {
		return errors.New("a sentinel credential is set without sentinel addresses")
	}
	if s.Username != "" && s.Password == "" {
		return errors.New("a sentinel user is set without its password")
	}
	return nil
}

// Dial connects to the Redis at url (redis:// or rediss://, with an ACL
// user and password in its userinfo), makes sure it answers, and returns
// a DB on it; Close closes the connection. tlsConfig, when not nil,
// replaces the TLS settings a rediss:// URL implies (a custom CA, a client
// certificate); its ServerName defaults to the URL's host.
//
// With sentinel's addresses, the master is the one the sentinels name,
// found again after each failover (go-redis's failover client), and the
// URL gives only the master's scheme (rediss:// for TLS), user, password
// and database; its host is not used. go-redis speaks to the sentinels
// with the same TLS settings, and without a ServerName each server's
// certificate is checked against its own host.
func Dial(ctx context.Context, url string, tlsConfig *tls.Config, sentinel Sentinel, opts Options) (*DB, error) {
	ropts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	if err := sentinel.Check(); err != nil {
		return nil, err
	}
	if tlsConfig != nil {
		tc := tlsConfig.Clone()
		if tc.ServerName == "" && ropts.TLSConfig != nil && !sentinel.Enabled() {
			tc.ServerName = ropts.TLSConfig.ServerName
		}
		ropts.TLSConfig = tc
	} else if ropts.TLSConfig != nil && sentinel.Enabled() {
		ropts.TLSConfig.ServerName = ""
	}
	var c *redis.Client
	if sentinel.Enabled() {
		c = redis.NewFailoverClient(failoverOptions(ropts, sentinel))
	} else {
		c = redis.NewClient(ropts)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("ping: %w", err)
	}
	return New(c, opts), nil
}

// failoverOptions are the failover client's options: the sentinels', and
// the master's from its URL.
func failoverOptions(o *redis.Options, s Sentinel) *redis.FailoverOptions {
	addrs := make([]string, len(s.Addrs))
	for i, a := range s.Addrs {
		addrs[i] = strings.TrimSpace(a)
	}
	name := s.MasterName
	if name == "" {
		name = DefaultMasterName
	}
	return &redis.FailoverOptions{
		MasterName: name, SentinelAddrs: addrs, SentinelUsername: s.Username, SentinelPassword: s.Password,
		ClientName: o.ClientName, Protocol: o.Protocol, Username: o.Username, Password: o.Password, DB: o.DB,
		MaxRetries: o.MaxRetries, MinRetryBackoff: o.MinRetryBackoff, MaxRetryBackoff: o.MaxRetryBackoff,
		DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
		PoolSize: o.PoolSize, MinIdleConns: o.MinIdleConns, MaxIdleConns: o.MaxIdleConns,
		ConnMaxIdleTime: o.ConnMaxIdleTime, ConnMaxLifetime: o.ConnMaxLifetime, PoolTimeout: o.PoolTimeout,
		TLSConfig: o.TLSConfig,
	}
}

// Close closes the DB's Redis connection.
func (db *DB) Close() error { return db.rdb.Close() }
