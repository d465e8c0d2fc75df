package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelConfig shapes a [RedisSentinel]; the zero value of each field
// is its default.
type SentinelConfig struct {
	// Replicas of the master; 0 means 2.
	Replicas int
	// Sentinels watching it; 0 means 3 (a quorum of 2).
	Sentinels int
	// DownAfter is the sentinels' down-after-milliseconds: how long the
	// master is silent before it counts as down; 0 means 500 ms.
	DownAfter time.Duration
	// FailoverTimeout is the sentinels' failover-timeout; 0 means 3 s.
	FailoverTimeout time.Duration
}

// RedisSentinel is a test's own Redis with Sentinel failover: a master,
// its replicas and the sentinels that watch them, each a real
// redis-server process (the sentinels run as redis-server --sentinel,
// which the redis-sentinel command is) on a loopback port, each in a
// temporary folder, without persistence. Cleanup kills them all.
type RedisSentinel struct {
	// MasterName is the name the sentinels monitor the master under.
	MasterName string
	// Sentinels are the sentinels' host:port.
	Sentinels []string

	t   testing.TB
	bin string
	log string // the folder of the servers' logs

	mu      sync.Mutex
	servers map[string]*redisProc // data servers by host:port
}

// redisProc is one running redis-server.
type redisProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

// StartRedisSentinel starts a master, cfg's replicas and sentinels, and
// returns once every replica is in sync and every sentinel knows the
// replicas and the other sentinels (so that a failover can reach its
// quorum). It fails the test without a redis-server on PATH
// (scripts/ensure-redis.sh installs it).
func StartRedisSentinel(t testing.TB, cfg SentinelConfig) *RedisSentinel {
	t.Helper()
	if cfg.Replicas == 0 {
		cfg.Replicas = 2
	}
	if cfg.Sentinels == 0 {
		cfg.Sentinels = 3
	}
	if cfg.DownAfter == 0 {
		cfg.DownAfter = 500 * time.Millisecond
	}
	if cfg.FailoverTimeout == 0 {
		cfg.FailoverTimeout = 3 * time.Second
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not on PATH (scripts/ensure-redis.sh installs it): %v", err)
	}
	r := &RedisSentinel{MasterName: "fleet", t: t, bin: bin, log: t.TempDir(), servers: map[string]*redisProc{}}
	t.Cleanup(r.killAll)

	master := FreeAddr(t)
	r.startServer(master, "")
	for range cfg.Replicas {
		r.startServer(FreeAddr(t), master)
	}
	_, mport, _ := net.SplitHostPort(master)
	quorum := cfg.Sentinels/2 + 1
	for i := range cfg.Sentinels {
		addr := FreeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf("port %s\nbind 127.0.0.1\nprotected-mode no\ndir %s\n"+
			"sentinel monitor %s 127.0.0.1 %s %d\n"+
			"sentinel down-after-milliseconds %[3]s %[6]d\n"+
			"sentinel failover-timeout %[3]s %[7]d\n"+
			"sentinel parallel-syncs %[3]s %[8]d\n",
			port, dir, r.MasterName, mport, quorum, cfg.DownAfter.Milliseconds(), cfg.FailoverTimeout.Milliseconds(), cfg.Replicas)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatalf("sentinel.conf: %v", err)
		}
		p := r.spawn(fmt.Sprintf("sentinel-%d", i+1), conf, "--sentinel")
		t.Cleanup(func() { p.kill() })
		r.Sentinels = append(r.Sentinels, addr)
	}

	// Ready: every replica in sync, every sentinel seeing them all and
	// the other sentinels (they find each other through the master's
	// hello channel, every 2 s).
	r.waitFor(30*time.Second, "the replicas in sync", func(ctx context.Context) error {
		return r.replicasInSync(ctx, master, cfg.Replicas)
	})
	r.waitFor(30*time.Second, "every sentinel seeing the replicas and the other sentinels", func(ctx context.Context) error {
		for _, s := range r.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: s, MaxRetries: -1})
			m, err := c.Master(ctx, r.MasterName).Result()
			c.Close()
			if err != nil {
				return fmt.Errorf("sentinel %s: %w", s, err)
			}
			if m["num-slaves"] != strconv.Itoa(cfg.Replicas) || m["num-other-sentinels"] != strconv.Itoa(cfg.Sentinels-1) {
				return fmt.Errorf("sentinel %s sees %s replicas and %s other sentinels", s, m["num-slaves"], m["num-other-sentinels"])
			}
		}
		return nil
	})
	return r
}

// SentinelList is the sentinels' addresses comma-separated, as
// REDIS_SENTINELS takes them.
func (r *RedisSentinel) SentinelList() string { return strings.Join(r.Sentinels, ",") }

// Master is the host:port the sentinels name as the master now (the
// first sentinel that answers).
func (r *RedisSentinel) Master(ctx context.Context) (string, error) {
	var errs []string
	for _, s := range r.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: s, MaxRetries: -1})
		hp, err := c.GetMasterAddrByName(ctx, r.MasterName).Result()
		c.Close()
		if err == nil && len(hp) == 2 {
			return net.JoinHostPort(hp[0], hp[1]), nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", s, err))
	}
	return "", fmt.Errorf("no sentinel names the master: %s", strings.Join(errs, "; "))
}

// KillMaster SIGKILLs the current master and returns its address.
func (r *RedisSentinel) KillMaster() string {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr, err := r.Master(ctx)
	if err != nil {
		r.t.Fatalf("kill the master: %v", err)
	}
	r.mu.Lock()
	p := r.servers[addr]
	delete(r.servers, addr)
	r.mu.Unlock()
	if p == nil {
		r.t.Fatalf("kill the master: %s is not one of the test's servers", addr)
	}
	p.kill()
	return addr
}

// WaitFailover waits until every sentinel names a master other than old
// and that server says it is a master with at least one replica in sync,
// and returns its address.
func (r *RedisSentinel) WaitFailover(old string, within time.Duration) string {
	r.t.Helper()
	var now string
	r.waitFor(within, "a failover away from "+old, func(ctx context.Context) error {
		for _, s := range r.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: s, MaxRetries: -1})
			hp, err := c.GetMasterAddrByName(ctx, r.MasterName).Result()
			c.Close()
			if err != nil || len(hp) != 2 {
				return fmt.Errorf("sentinel %s: %v", s, err)
			}
			addr := net.JoinHostPort(hp[0], hp[1])
			if addr == old {
				return fmt.Errorf("sentinel %s still names %s", s, old)
			}
			if now != "" && addr != now {
				return fmt.Errorf("the sentinels disagree: %s and %s", now, addr)
			}
			now = addr
		}
		return r.replicasInSync(ctx, now, 1)
	})
	return now
}

// replicasInSync checks that the server at addr is a master with at
// least n replicas online.
func (r *RedisSentinel) replicasInSync(ctx context.Context, addr string, n int) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if !strings.Contains(info, "role:master") {
		return fmt.Errorf("%s is not a master", addr)
	}
	online := strings.Count(info, "state=online")
	if online < n {
		return fmt.Errorf("%s has %d replicas online, want %d", addr, online, n)
	}
	return nil
}

// waitFor polls check until it succeeds, failing the test after within.
func (r *RedisSentinel) waitFor(within time.Duration, what string, check func(context.Context) error) {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("waiting %v for %s: %v\n%s", within, what, err, r.logs())
		}
		<-time.After(20 * time.Millisecond) // the polling interval
	}
}

// startServer starts a data server on addr, the replica of master unless
// that is empty.
func (r *RedisSentinel) startServer(addr, master string) {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--dir", r.t.TempDir(), "--save", "", "--appendonly", "no",
		"--protected-mode", "no", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"}
	if master != "" {
		mhost, mport, _ := net.SplitHostPort(master)
		args = append(args, "--replicaof", mhost, mport)
	}
	p := r.spawn("redis-"+port, args...)
	r.mu.Lock()
	r.servers[addr] = p
	r.mu.Unlock()
	r.waitFor(10*time.Second, "redis-server on "+addr, func(ctx context.Context) error {
		select {
		case <-p.exited:
			return fmt.Errorf("redis-server on %s exited: %s", addr, readLog(p.log))
		default:
		}
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		defer c.Close()
		return c.Ping(ctx).Err()
	})
}

// spawn runs redis-server with args, its output in a log named name.
func (r *RedisSentinel) spawn(name string, args ...string) *redisProc {
	r.t.Helper()
	logFile := filepath.Join(r.log, name+".log")
	out, err := os.Create(logFile)
	if err != nil {
		r.t.Fatalf("%s log: %v", name, err)
	}
	defer out.Close()
	cmd := exec.Command(r.bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start %s: %v", name, err)
	}
	p := &redisProc{cmd: cmd, exited: make(chan struct{}), log: logFile}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p
}

func (p *redisProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (r *RedisSentinel) killAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for addr, p := range r.servers {
		p.kill()
		delete(r.servers, addr)
	}
}

// logs is the tail of every server's and sentinel's log, for a failure.
func (r *RedisSentinel) logs() string {
	files, _ := filepath.Glob(filepath.Join(r.log, "*.log"))
	var b strings.Builder
	for _, f := range files {
		text := readLog(f)
		if len(text) > 1500 {
			text = "…" + text[len(text)-1500:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s\n", filepath.Base(f), text)
	}
	return b.String()
}
