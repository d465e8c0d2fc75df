package redisserver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// aofDirName is the folder under Dir where redis-server 7 keeps its
// append-only files (its default appenddirname).
const aofDirName = "appendonlydir"

// process is a redis-server child process.
type process struct {
	bin         string
	port        int
	cmd         *exec.Cmd
	out         *output
	stopTimeout time.Duration

	done    chan struct{} // closed once the process has exited
	waitErr error         // cmd.Wait's result; read after done
}

// startProcess runs redis-server and waits until it answers PING. With a
// random port it retries when another program took the port between our
// pick and redis-server's bind.
func startProcess(cfg Config, bin string, log *zap.Logger) (*process, error) {
	attempts := 1
	if cfg.Port == 0 {
		attempts = 3
	}
	for i := 1; ; i++ {
		port := cfg.Port
		if port == 0 {
			var err error
			if port, err = freePort(); err != nil {
				return nil, err
			}
		}
		p, err := launch(cfg, bin, port, log)
		if err == nil {
			return p, nil
		}
		if i == attempts || !errors.Is(err, errAddrInUse) {
			return nil, err
		}
	}
}

var errAddrInUse = errors.New("address already in use")

func launch(cfg Config, bin string, port int, log *zap.Logger) (*process, error) {
	args := []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--dir", cfg.Dir,
		// The append-only file is the store: every write, fsynced once a
		// second, and fsynced in full at shutdown. No RDB snapshots: they
		// would fork the server for no gain in what survives.
		"--appendonly", "yes",
		"--appendfsync", "everysec",
		"--save", "",
		"--daemonize", "no",
		"--logfile", "", // stdout, which we keep
		"--databases", "16",
	}
	out := &output{log: log.Named("redis-server")}
	cmd := exec.Command(bin, args...)
	cmd.Dir = cfg.Dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = sysProcAttr()
	// The children redis-server forks (to rewrite the append-only file)
	// inherit stdout; they must not hold up Wait once it is gone.
	cmd.WaitDelay = 2 * time.Second
	p := &process{
		bin:         bin,
		port:        port,
		cmd:         cmd,
		out:         out,
		stopTimeout: cfg.StopTimeout,
		done:        make(chan struct{}),
	}
	started := make(chan error)
	go func() {
		// Pdeathsig fires when the OS thread that started the child
		// exits, and the runtime ends a thread when a goroutine locked to
		// it exits. Locking this goroutine keeps its thread to itself, and
		// it exits only once the child has.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	if err := p.waitReady(cfg.ReadyTimeout); err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return nil, err
	}
	log.Info("redis-server started", zap.String("binary", bin), zap.Int("pid", cmd.Process.Pid),
		zap.Int("port", port), zap.String("dir", cfg.Dir))
	return p, nil
}

// waitReady polls until redis-server answers PING with PONG (it answers
// LOADING while it reads its append-only file) and INFO with its own pid
// (so that another server on the port is not taken for it), exits, or the
// timeout passes.
func (p *process) waitReady(timeout time.Duration) error {
	addr := p.addr()
	deadline := time.Now().Add(timeout)
	retry := time.NewTicker(20 * time.Millisecond)
	defer retry.Stop()
	for {
		err := probe(addr, p.cmd.Process.Pid, time.Second)
		if err == nil {
			return nil
		}
		if errors.Is(err, errAddrInUse) {
			return fmt.Errorf("%s on %s: %w", p.bin, addr, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s on %s: no answer to PING after %s (last: %v); output: %s",
				p.bin, addr, timeout, err, p.out.tail())
		}
		select {
		case <-p.done:
			tail := p.out.tail()
			if strings.Contains(tail, "Address already in use") {
				return fmt.Errorf("%s on %s: %w (exited before answering PING: %v); output: %s",
					p.bin, addr, errAddrInUse, p.waitErr, tail)
			}
			return fmt.Errorf("%s on %s exited before answering PING (%v); output: %s", p.bin, addr, p.waitErr, tail)
		case <-retry.C:
		}
	}
}

func (p *process) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

func (p *process) url() string { return "redis://" + p.addr() + "/0" }

// stop sends SIGTERM, on which redis-server fsyncs its append-only file and
// exits, and waits for the exit; after StopTimeout it sends SIGKILL.
func (p *process) stop() error {
	pid := p.cmd.Process.Pid
	select {
	case <-p.done:
		return fmt.Errorf("stop %s (pid %d): it had already exited (%v); output: %s", p.bin, pid, p.waitErr, p.out.tail())
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s (pid %d): %w", p.bin, pid, err)
	}
	timer := time.NewTimer(p.stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		if p.waitErr != nil {
			return fmt.Errorf("stop %s (pid %d): %w; output: %s", p.bin, pid, p.waitErr, p.out.tail())
		}
		return nil
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("stop %s (pid %d): still running %s after SIGTERM, killed; up to a second of writes may be lost",
			p.bin, pid, p.stopTimeout)
	}
}

// probe sends PING and INFO over a fresh connection, and wants PONG and
// the process id pid back.
func probe(addr string, pid int, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answer %q", strings.TrimSpace(line))
	}
	if line, err = r.ReadString('\n'); err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
	if !strings.HasPrefix(line, "$") || err != nil || n < 0 {
		// Our redis-server answers PONG only once it answers INFO too.
		return fmt.Errorf("%w: the server there answers INFO with %q, not as process %d",
			errAddrInUse, strings.TrimSpace(line), pid)
	}
	info := make([]byte, n)
	if _, err := io.ReadFull(r, info); err != nil {
		return err
	}
	got := "none"
	for _, l := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "process_id:"); ok {
			got = v
		}
	}
	if got != strconv.Itoa(pid) {
		return fmt.Errorf("%w: the server there is process %s, not %d", errAddrInUse, got, pid)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// output takes redis-server's stdout and stderr: it logs each line at debug
// level and keeps the last few kilobytes for error messages.
type output struct {
	log *zap.Logger

	mu      sync.Mutex
	last    []byte // the most recent output, at most 2*tailBytes
	partial []byte // the line being written
}

const tailBytes = 2048

func (o *output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.last = append(o.last, b...)
	if len(o.last) > 2*tailBytes {
		o.last = append(o.last[:0], o.last[len(o.last)-tailBytes:]...)
	}
	o.partial = append(o.partial, b...)
	for {
		i := bytes.IndexByte(o.partial, '\n')
		if i < 0 {
			break
		}
		if line := bytes.TrimSpace(o.partial[:i]); len(line) > 0 {
			o.log.Debug(string(line))
		}
		o.partial = o.partial[i+1:]
	}
	if len(o.partial) > tailBytes { // a line without end: log what we have
		o.log.Debug(string(o.partial))
		o.partial = nil
	}
	return len(b), nil
}

// tail is the last output, at most tailBytes, or a note that there was none.
func (o *output) tail() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	t := o.last
	if len(t) > tailBytes {
		t = t[len(t)-tailBytes:]
	}
	s := strings.TrimSpace(string(t))
	if s == "" {
		return "(none)"
	}
	return s
}
