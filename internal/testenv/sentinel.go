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
	"sync/atomic"
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
	// Password, when set, is the data servers' requirepass (and the
	// replicas' masterauth, the sentinels' auth-pass).
	Password string
	// SentinelPassword, when set, is the sentinels' own requirepass.
	SentinelPassword string
	// Proxied puts a proxy of the test's own in front of the first
	// master: everyone (the sentinels, the replicas, the clients) reaches
	// it there, so that the test can hold the replication stream back
	// (HoldReplication) and lose what was held with the master
	// (KillMaster): the asynchronous replication's loss, made certain.
	Proxied bool
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
	// Password and SentinelPassword are SentinelConfig's.
	Password, SentinelPassword string

	t   testing.TB
	bin string
	log string // the folder of the servers' logs

	mu      sync.Mutex
	servers map[string]*redisProc // data servers by host:port
	proxy   *replProxy
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
	r := &RedisSentinel{MasterName: "fleet", Password: cfg.Password, SentinelPassword: cfg.SentinelPassword,
		t: t, bin: bin, log: t.TempDir(), servers: map[string]*redisProc{}}
	t.Cleanup(r.killAll)

	master := FreeAddr(t)
	r.startServer(master, "")
	if cfg.Proxied {
		// The master is the proxy's address to everyone, the sentinels
		// too: a replica whose master they knew by another address they
		// would point at that one.
		r.proxy = startReplProxy(t, master)
		r.mu.Lock()
		r.servers[r.proxy.addr()] = r.servers[master]
		delete(r.servers, master)
		r.mu.Unlock()
		master = r.proxy.addr()
	}
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
		if r.Password != "" {
			text += fmt.Sprintf("sentinel auth-pass %s %s\n", r.MasterName, r.Password)
		}
		if r.SentinelPassword != "" {
			// The sentinels authenticate to each other with it too.
			text += fmt.Sprintf("requirepass %s\n", r.SentinelPassword)
		}
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
			c := r.sentinelClient(s)
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

func (r *RedisSentinel) sentinelClient(addr string) *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: addr, Password: r.SentinelPassword, MaxRetries: -1})
}

// SentinelList is the sentinels' addresses comma-separated, as
// REDIS_SENTINELS takes them.
func (r *RedisSentinel) SentinelList() string { return strings.Join(r.Sentinels, ",") }

// Master is the host:port the sentinels name as the master now (the
// first sentinel that answers).
func (r *RedisSentinel) Master(ctx context.Context) (string, error) {
	var errs []string
	for _, s := range r.Sentinels {
		c := r.sentinelClient(s)
		hp, err := c.GetMasterAddrByName(ctx, r.MasterName).Result()
		c.Close()
		if err == nil && len(hp) == 2 {
			return net.JoinHostPort(hp[0], hp[1]), nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", s, err))
	}
	return "", fmt.Errorf("no sentinel names the master: %s", strings.Join(errs, "; "))
}

// HoldReplication makes the proxies (SentinelConfig.Proxied) keep what
// the master sends its replicas from them: from now on the master's
// writes are its own only, until KillMaster drops them.
func (r *RedisSentinel) HoldReplication() {
	r.t.Helper()
	if r.proxy == nil {
		r.t.Fatal("HoldReplication needs SentinelConfig.Proxied, before the first KillMaster")
	}
	r.proxy.hold()
}

// KillMaster SIGKILLs the current master and returns its address; the
// replication proxies close, dropping what they held, and refuse the
// replicas from then on (the sentinels point them at the new master).
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
	if r.proxy != nil {
		r.proxy.close()
		r.proxy = nil
	}
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
			c := r.sentinelClient(s)
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
	c := redis.NewClient(&redis.Options{Addr: addr, Password: r.Password, MaxRetries: -1})
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
	if r.Password != "" {
		args = append(args, "--requirepass", r.Password, "--masterauth", r.Password)
	}
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
		c := redis.NewClient(&redis.Options{Addr: addr, Password: r.Password, MaxRetries: -1})
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

// replProxy forwards connections to a master; held, it drops what the
// master sends on its replication connections (those that asked for
// PSYNC or SYNC) instead of passing it on, and passes the rest as ever.
type replProxy struct {
	ln       net.Listener
	upstream string

	mu    sync.Mutex
	held  bool
	conns []net.Conn
	done  bool
	wg    sync.WaitGroup
}

func startReplProxy(t testing.TB, upstream string) *replProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("replication proxy: %v", err)
	}
	p := &replProxy{ln: ln, upstream: upstream}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *replProxy) addr() string { return p.ln.Addr().String() }

func (p *replProxy) accept() {
	defer p.wg.Done()
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		if p.done {
			p.mu.Unlock()
			down.Close()
			up.Close()
			return
		}
		p.conns = append(p.conns, down, up)
		p.wg.Add(2)
		p.mu.Unlock()
		var replication atomic.Bool
		go p.pipe(down, up, func(b []byte) bool { // the client's commands
			if s := strings.ToUpper(string(b)); strings.Contains(s, "PSYNC") || strings.Contains(s, "\r\nSYNC\r\n") {
				replication.Store(true)
			}
			return true
		})
		go p.pipe(up, down, func([]byte) bool { // the master's replies and stream
			p.mu.Lock()
			defer p.mu.Unlock()
			return !(p.held && replication.Load())
		})
	}
}

// pipe copies from src to dst what pass lets through.
func (p *replProxy) pipe(src, dst net.Conn, pass func([]byte) bool) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && pass(buf[:n]) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (p *replProxy) hold() {
	p.mu.Lock()
	p.held = true
	p.mu.Unlock()
}

// close stops the proxy and its connections; idempotent.
func (p *replProxy) close() {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return
	}
	p.done = true
	conns := p.conns
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}
