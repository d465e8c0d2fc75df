package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/role"
)

// The memory scenario measures one role in a process of its own: the
// bench re-executes its own binary with ChildEnv naming the role, and
// that process runs the role as its binary would (the same settings, from
// the environment the bench gives it) until its stdin closes. Its
// resident memory is then the role's, not the bench's or the rest of the
// stack's.
const (
	// ChildEnv names the role a re-executed bench process runs:
	// "worker", "dispatcher" or "adapter".
	ChildEnv = "COMFYFLEET_BENCH_CHILD"
	// childPrefixEnv is the Redis key prefix of the child's role (a
	// setting of tests and the bench, not of the binaries).
	childPrefixEnv = "COMFYFLEET_BENCH_KEY_PREFIX"
	// childReady starts the line a child writes on its stdout once its
	// role started; the adapter adds its address.
	childReady = "ready"
	// childRuntimePrefix before a variable of childRuntimeEnv sets it in
	// the measured role's process only.
	childRuntimePrefix = "COMFYFLEET_BENCH_ROLE_"
)

// childRuntimeEnv are the Go runtime's variables a measured role can be
// given (COMFYFLEET_BENCH_ROLE_GOGC, …).
var childRuntimeEnv = []string{"GOGC", "GOMEMLIMIT", "GODEBUG", "GOMAXPROCS"}

// Child runs the role this process was started for, when it is a child
// of the memory scenario (ChildEnv set), and returns true with the exit
// code; otherwise it returns false at once. Call it first in main, and
// in TestMain of a package whose tests run the memory scenario.
func Child() (bool, int) {
	name := os.Getenv(ChildEnv)
	if name == "" {
		return false, 0
	}
	if err := runChild(name); err != nil {
		fmt.Fprintf(os.Stderr, "bench child %s: %v\n", name, err)
		return true, 1
	}
	return true, 0
}

func runChild(name string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The bench closes stdin to stop the child, and so does its death.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()

	var common role.Common
	fs := flagenv.New("comfyfleet bench child "+name, "")
	common.Bind(fs)
	var start func(b *backend.Backend, log *zap.Logger) (addr string, stop func(), err error)
	switch name {
	case "worker":
		var cfg role.WorkerConfig
		cfg.Bind(fs)
		start = func(b *backend.Backend, log *zap.Logger) (string, func(), error) {
			if s, err := cfg.Finish(); err != nil {
				return "", nil, fmt.Errorf("%s: %w", s, err)
			}
			w, err := role.NewWorker(cfg, b, nil, nil, log)
			if err != nil {
				return "", nil, err
			}
			if err := w.Start(ctx); err != nil {
				return "", nil, err
			}
			return "", w.Stop, nil
		}
	case "dispatcher":
		var cfg role.DispatcherConfig
		cfg.Bind(fs)
		start = func(b *backend.Backend, log *zap.Logger) (string, func(), error) {
			if s, err := cfg.Finish(); err != nil {
				return "", nil, fmt.Errorf("%s: %w", s, err)
			}
			d, err := role.NewDispatcher(cfg, b, metrics.NewRegistry(), log)
			if err != nil {
				return "", nil, err
			}
			if err := d.Start(ctx); err != nil {
				return "", nil, err
			}
			return "", d.Stop, nil
		}
	case "adapter":
		var cfg role.AdapterConfig
		cfg.Bind(fs)
		start = func(b *backend.Backend, log *zap.Logger) (string, func(), error) {
			if s, err := cfg.Finish(); err != nil {
				return "", nil, fmt.Errorf("%s: %w", s, err)
			}
			a, err := role.NewAdapter(cfg, b, metrics.NewRegistry(), role.AdapterOptions{API: true}, log)
			if err != nil {
				return "", nil, err
			}
			if err := a.Start(ctx); err != nil {
				return "", nil, err
			}
			return a.Addr(), a.Stop, nil
		}
	default:
		return fmt.Errorf("%s=%q: not a role (worker, dispatcher or adapter)", ChildEnv, name)
	}
	if err := fs.Parse(nil, os.Getenv); err != nil {
		return err
	}
	common.KeyPrefix = os.Getenv(childPrefixEnv)
	if s, err := common.Finish(); err != nil {
		return fmt.Errorf("%s: %w", s, err)
	}
	log, err := common.Logger()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	b, err := common.Open(ctx, "comfyfleet-bench-"+name, log)
	if err != nil {
		return err
	}
	defer b.Close()
	addr, stopRole, err := start(b, log)
	if err != nil {
		return err
	}
	fmt.Println(strings.TrimSpace(childReady + " " + addr))
	<-ctx.Done()
	stopRole()
	return nil
}

// child is a role's process started by the memory scenario.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	// Addr is what the child said when ready (the adapter's address).
	Addr   string
	logf   string
	exited chan struct{}
}

// startChild starts this binary as the role name with env (the role's
// settings) and waits until it says it is ready. Its stderr goes to a
// file in dir, quoted when it fails.
func startChild(ctx context.Context, name, dir string, env map[string]string) (_ *child, err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the bench's binary to run the %s: %w", name, err)
	}
	c := &child{name: name, logf: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
	logFile, err := os.Create(c.logf)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	c.cmd = exec.Command(exe)
	// Only what the bench sets: none of the caller's role settings leak in.
	c.cmd.Env = []string{ChildEnv + "=" + name, "PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"TMPDIR=" + os.TempDir()}
	// COMFYFLEET_BENCH_ROLE_GOGC and the like set the Go runtime's
	// settings of the measured role alone (the bench's own process, with
	// its embedded NATS, keeps its own), to try the role under another
	// GOGC or GOMEMLIMIT.
	for _, k := range childRuntimeEnv {
		if v, ok := os.LookupEnv(childRuntimePrefix + k); ok {
			c.cmd.Env = append(c.cmd.Env, k+"="+v)
		}
	}
	for k, v := range env {
		c.cmd.Env = append(c.cmd.Env, k+"="+v)
	}
	c.cmd.Stderr = logFile
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the %s's process: %w", name, err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, childReady) {
				select {
				case ready <- strings.TrimSpace(strings.TrimPrefix(line, childReady)):
				default:
				}
			}
		}
		_ = c.cmd.Wait()
		close(c.exited)
	}()
	defer func() {
		if err != nil {
			c.stop()
		}
	}()
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case c.Addr = <-ready:
		return c, nil
	case <-c.exited:
		return nil, fmt.Errorf("the %s's process exited before it was ready: %s", name, c.logTail())
	case <-t.C:
		return nil, fmt.Errorf("the %s's process was not ready within a minute: %s", name, c.logTail())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Pid is the child's process id.
func (c *child) Pid() int { return c.cmd.Process.Pid }

// stop closes the child's stdin, so that it stops its role, and kills it
// (by its pid) if it has not exited within 30 s.
func (c *child) stop() {
	_ = c.stdin.Close()
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-c.exited:
	case <-t.C:
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// logTail is the end of the child's stderr.
func (c *child) logTail() string {
	data, err := os.ReadFile(c.logf)
	if err != nil {
		return err.Error()
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	if s == "" {
		return "(its stderr is empty)"
	}
	return s
}

var errNoProc = errors.New("no /proc/<pid>/status on this system")
