package pythontest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// python is the interpreter of the pinned venv, which make test makes
// (scripts/ensure-pyenv.sh) and names in COMFYFLEET_PYTHON. Without it the
// tests fail, as the tests that need Redis do without one: they never
// skip, so a run that leaves the Python peers out does not pass.
func python(t *testing.T) string {
	t.Helper()
	p := os.Getenv("COMFYFLEET_PYTHON")
	if p == "" {
		t.Fatal("COMFYFLEET_PYTHON is unset: run make test, or ./scripts/ensure-pyenv.sh then COMFYFLEET_PYTHON=$PWD/test/python/.venv/bin/python go test ./test/python/")
	}
	out, err := exec.Command(p, "-c", "import runpod, nats; print(runpod.__version__)").CombinedOutput()
	if err != nil {
		t.Fatalf("COMFYFLEET_PYTHON=%s cannot import the pinned packages (run ./scripts/ensure-pyenv.sh): %v\n%s", p, err, out)
	}
	if v := strings.TrimSpace(string(out)); v != lockedVersion(t, "runpod") {
		t.Fatalf("COMFYFLEET_PYTHON=%s has runpod %s, the lock says %s (run ./scripts/ensure-pyenv.sh)", p, v, lockedVersion(t, "runpod"))
	}
	return p
}

// here is this folder.
func here(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Dir(file)
}

// lockedVersion is a package's pin in requirements.txt.
func lockedVersion(t *testing.T, pkg string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(here(t), "requirements.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, pkg+"=="); ok {
			return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "\\"))
		}
	}
	t.Fatalf("requirements.txt pins no %s", pkg)
	return ""
}

// proc is a Python process in a process group of its own.
type proc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// cleanEnv is the test process's environment without the variables the
// Python peers read, with extra added.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "RUNPOD_") || k == "NATS_URL" || k == "CF_TENANT" {
			continue
		}
		env = append(env, kv)
	}
	// RunPod's SDK checks the host at start (disk at least 10% free, GPU,
	// CUDA) and exits when one fails: those judge the machine, not the
	// protocol under test, and a test machine's disk may well be fuller.
	return append(append(env, "PYTHONUNBUFFERED=1", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true"), extra...)
}

// start runs the interpreter with args and env; at the end of the test
// its whole process group is killed.
func start(t *testing.T, py string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(py, args...)
	cmd.Dir = here(t)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", py, err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.killGroup()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("python process %d did not end", cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.out)
		}
	})
	return p
}

// killGroup SIGKILLs the process and every child it started (the SDK's
// ping process among them).
func (p *proc) killGroup() { _ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) }

// killMain SIGKILLs the main process alone: its children live on.
func (p *proc) killMain() { _ = p.cmd.Process.Signal(syscall.SIGKILL) }
