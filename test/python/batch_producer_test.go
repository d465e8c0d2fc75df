package pythontest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/devstack"
)

// root is the repository's top folder.
func root(t *testing.T) string { return filepath.Dir(filepath.Dir(here(t))) }

// buildComfyfleet builds the comfyfleet binary of this tree.
func buildComfyfleet(t *testing.T) string {
	t.Helper()
	gobin := os.Getenv("GO")
	if gobin == "" {
		gobin = "go"
	}
	bin := filepath.Join(t.TempDir(), "comfyfleet")
	cmd := exec.Command(gobin, "build", "-o", bin, "./cmd/comfyfleet")
	cmd.Dir = root(t)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build ./cmd/comfyfleet:\n%s", out)
	return bin
}

// startDev runs a fresh `comfyfleet dev` (embedded NATS and Redis, the
// ComfyUI emulator behind two workers, whatever the environment says)
// in a folder of its own, and reads its stack file. It is stopped as
// Ctrl-C does at the end of the test.
func startDev(t *testing.T, bin string) devstack.Info {
	t.Helper()
	help, err := exec.Command(bin, "dev", "--help").CombinedOutput()
	require.NoError(t, err, "%s", help)
	drop := map[string]bool{}
	for _, m := range regexp.MustCompile(`\(env ([A-Z0-9_]+)\)`).FindAllStringSubmatch(string(help), -1) {
		drop[m[1]] = true
	}
	require.True(t, drop["NATS_URL"] && drop["API_KEYS"], "comfyfleet dev --help names no variables:\n%s", help)
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !drop[k] {
			env = append(env, kv)
		}
	}
	dir := filepath.Join(t.TempDir(), "stack")
	cmd := exec.Command(bin, "dev", "--listen", "127.0.0.1:0", "--nats-port", "-1", "--dir", dir, "--workers", "2", "--log-level", "warn")
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			t.Errorf("comfyfleet dev did not stop on SIGINT:\n%s", out)
		}
		if t.Failed() {
			t.Logf("comfyfleet dev:\n%s", out)
		}
	})
	var info devstack.Info
	deadline := time.Now().Add(2 * time.Minute)
	for {
		data, err := os.ReadFile(filepath.Join(dir, devstack.StackFile))
		if err == nil && json.Unmarshal(data, &info) == nil && info.PID == cmd.Process.Pid {
			return info
		}
		select {
		case <-done:
			t.Fatalf("comfyfleet dev exited:\n%s", out)
		case <-time.After(20 * time.Millisecond):
		}
		require.True(t, time.Now().Before(deadline), "comfyfleet dev did not come up:\n%s", out)
	}
}

// wait waits for a process to end and returns its exit code.
func (p *proc) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(limit):
		t.Fatalf("still running after %v:\n%s", limit, p.out)
	}
	return p.cmd.ProcessState.ExitCode()
}

// TestBatchProducer: examples/batch_producer.py, with the real nats-py,
// submits a seed sweep to a fresh `comfyfleet dev` over NATS, follows
// its jobs' final events and writes every job's images; run again, it
// re-sends the same ids, the fleet drops them as duplicates, and the
// script picks up the results it has.
func TestBatchProducer(t *testing.T) {
	t.Parallel()
	py := python(t)
	info := startDev(t, buildComfyfleet(t))
	out := t.TempDir()
	args := []string{filepath.Join(root(t), "examples", "batch_producer.py"), filepath.Join(root(t), "examples", "txt2img.json"),
		"--seeds", "1-3", "--batch", "pytest", "--nats", info.NATSURL, "--api", info.APIURL, "--out", out, "--poll", "0.5"}

	p := start(t, py, cleanEnv(), args...)
	require.Equal(t, 0, p.wait(t, 3*time.Minute), "batch_producer.py:\n%s", p.out)
	log := p.out.String()
	for seed := 1; seed <= 3; seed++ {
		id := fmt.Sprintf("pytest-%d", seed)
		require.Contains(t, log, "submitted "+id+": stream ")
		require.Regexp(t, `\] `+id+` COMPLETED: `, log)
		files, err := filepath.Glob(filepath.Join(out, id, "*.png"))
		require.NoError(t, err)
		require.NotEmpty(t, files, "%s wrote no image:\n%s", id, log)
		for _, f := range files {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			_, err = png.Decode(bytes.NewReader(data))
			require.NoError(t, err, "%s is a PNG", f)
		}
	}

	again := start(t, py, cleanEnv(), args...)
	require.Equal(t, 0, again.wait(t, 3*time.Minute), "batch_producer.py, again:\n%s", again.out)
	require.Equal(t, 3, strings.Count(again.out.String(), "(sent before: duplicate dropped)"), "%s", again.out)
	require.Equal(t, 3, strings.Count(again.out.String(), " COMPLETED: "), "%s", again.out)
}
