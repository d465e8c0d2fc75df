package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// The binaries' defaults (internal/backend), used when a variable is unset.
const (
	defaultNATSURL  = "nats://127.0.0.1:4222"
	defaultRedisURL = "redis://127.0.0.1:6379/0"
)

// prober runs the checks with the service's environment.
type prober struct {
	getenv   func(string) string
	procRoot string // "/proc"; tests may point elsewhere
	hostname func() (string, error)
}

func (p prober) env(name, def string) string {
	if v := p.getenv(name); v != "" {
		return v
	}
	return def
}

// http checks that url answers with a 2xx status.
func (p prober) http(ctx context.Context, rawURL string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return fmt.Errorf("build request for %s: %w", rawURL, err)
	}
	key, err := p.apiKey()
	if err != nil {
		return err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: HTTP %d", rawURL, resp.StatusCode)
	}
	return nil
}

// apiKey is the first accepted key of the runpod-adapter's API_KEYS or
// API_KEYS_FILE, so the probe passes the adapter's authentication.
func (p prober) apiKey() (string, error) {
	for _, k := range strings.Split(p.getenv("API_KEYS"), ",") {
		if k = strings.TrimSpace(k); k != "" {
			return k, nil
		}
	}
	path := p.getenv("API_KEYS_FILE")
	if path == "" {
		return "", nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read API_KEYS_FILE: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k := strings.TrimSpace(sc.Text()); k != "" && !strings.HasPrefix(k, "#") {
			return k, nil
		}
	}
	return "", sc.Err()
}

// backends checks for live connections to NATS and Redis.
func (p prober) backends(ctx context.Context) error {
	if err := p.connectedTo(ctx, "NATS_URL", p.env("NATS_URL", defaultNATSURL), "4222"); err != nil {
		return err
	}
	return p.connectedTo(ctx, "REDIS_URL", p.env("REDIS_URL", defaultRedisURL), "6379")
}

// worker checks the worker's own heartbeat and its NATS connection.
func (p prober) worker(ctx context.Context) error {
	id := p.getenv("WORKER_ID")
	if id == "" {
		// gpuworker's own default: the host name, made a valid id.
		host, err := p.hostname()
		if err != nil {
			return fmt.Errorf("WORKER_ID is not set and the host name is unknown: %w", err)
		}
		id = proto.HostWorkerID(host)
	}
	opts, err := redis.ParseURL(p.env("REDIS_URL", defaultRedisURL))
	if err != nil {
		return fmt.Errorf("REDIS_URL: %w", err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	state, err := rdb.HGet(ctx, proto.WorkerKey(id), "state").Result()
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("worker %s has no heartbeat in Redis", id)
	}
	if err != nil {
		return fmt.Errorf("read heartbeat of worker %s: %w", id, err)
	}
	if state == "unhealthy" {
		return fmt.Errorf("worker %s reports itself unhealthy (its ComfyUI does not answer)", id)
	}
	return p.connectedTo(ctx, "NATS_URL", p.env("NATS_URL", defaultNATSURL), "4222")
}

// connectedTo checks that this network namespace has an established TCP
// connection to one of the servers of rawURLs (comma-separated, as NATS
// allows).
func (p prober) connectedTo(ctx context.Context, setting, rawURLs, defPort string) error {
	var want []endpoint
	for _, raw := range strings.Split(rawURLs, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if !strings.Contains(raw, "://") {
			raw = "tcp://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("%s: %w", setting, err)
		}
		if u.Scheme == "unix" {
			return nil // a Unix socket has no TCP connection to look for
		}
		port := u.Port()
		if port == "" {
			port = defPort
		}
		ips, err := net.DefaultResolver.LookupIP(ctx, "ip", u.Hostname())
		if err != nil {
			return fmt.Errorf("%s: resolve %s: %w", setting, u.Hostname(), err)
		}
		for _, ip := range ips {
			want = append(want, endpoint{IP: ip, Port: port})
		}
	}
	if len(want) == 0 {
		return fmt.Errorf("%s names no server", setting)
	}
	conns, err := establishedConns(p.procRoot)
	if err != nil {
		return err
	}
	for _, c := range conns {
		for _, w := range want {
			if c.Port == w.Port && c.IP.Equal(w.IP) {
				return nil
			}
		}
	}
	return fmt.Errorf("no live connection to %s (%s)", setting, rawURLs)
}
