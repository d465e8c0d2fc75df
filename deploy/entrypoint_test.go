package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// entrypoint is deploy/worker/entrypoint.sh running as a process with the
// real gpuworker and, as ComfyUI, the emulator behind a fake Python.
type entrypoint struct {
	cmd      *exec.Cmd
	out      *syncBuffer
	done     chan struct{}
	err      error
	dir      string
	port     string
	workerID string
	rdb      *redis.Client
}

// startEntrypoint runs the entrypoint with args and env added to a working
// environment; cleanup kills whatever is left.
func startEntrypoint(t *testing.T, env map[string]string, args ...string) *entrypoint {
	t.Helper()
	nats := testenv.StartNATS(t)
	rdb, _ := testenv.Redis(t)
	dir := t.TempDir()
	fakes := filepath.Join(dir, "fakes")
	require.NoError(t, os.MkdirAll(fakes, 0o755))
	require.NoError(t, os.Symlink(repoPath("deploy", "testdata", "fake-runpod-adapter.sh"), filepath.Join(fakes, "runpod-adapter")))
	e := &entrypoint{out: &syncBuffer{}, done: make(chan struct{}), dir: dir, port: freePort(t), rdb: rdb,
		workerID: "entrypoint-test-" + uuid.NewString()[:8]}
	base := map[string]string{
		"PATH":                 fakes + ":" + filepath.Dir(bin(t, "gpuworker")) + ":" + os.Getenv("PATH"),
		"COMFYUI_PYTHON":       repoPath("deploy", "testdata", "fake-python.sh"),
		"COMFYUI_DIR":          filepath.Join(dir, "comfyui"),
		"COMFYUI_PORT":         e.port,
		"COMFYUI_PID_FILE":     filepath.Join(dir, "comfyui.pid"),
		"FAKE_ARGS_FILE":       filepath.Join(dir, "python-args"),
		"NATS_URL":             nats.URL,
		"REDIS_URL":            testenv.RedisURL(),
		"WORKER_ID":            e.workerID,
		"SHUTDOWN_GRACE":       "5s",
		"LOG_LEVEL":            "warn",
		"NETWORK_VOLUME":       filepath.Join(dir, "runpod-volume"),
		"COMFYUI_ARGS":         "--highvram --fast",
		"COMFY_LOG_LEVEL":      "",
		"COMFYUI_LISTEN":       "",
		"NETWORK_VOLUME_DEBUG": "",
		"GORACE":               "atexit_sleep_ms=0", // binaries built with -race exit at once
	}
	for k, v := range env {
		base[k] = v
	}
	if base["WORKER_ID"] == "" {
		delete(base, "WORKER_ID")
	}
	var environ []string
	for k, v := range base {
		environ = append(environ, k+"="+v)
	}
	e.cmd = exec.Command(repoPath("deploy", "worker", "entrypoint.sh"), args...)
	e.cmd.Env = environ
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own group, so cleanup reaches every child
	e.cmd.WaitDelay = 5 * time.Second                       // a child left holding the output pipe does not hide the exit
	require.NoError(t, e.cmd.Start())
	go func() { e.err = e.cmd.Wait(); close(e.done) }()
	t.Cleanup(func() {
		syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
		<-e.done
		if t.Failed() {
			t.Logf("entrypoint output:\n%s", e.out.String())
		}
		rdb.Del(context.Background(), proto.WorkerKey(e.workerID))
	})
	return e
}

// wait waits for the entrypoint to exit and returns its exit code.
func (e *entrypoint) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-e.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("the entrypoint did not exit; output:\n%s", e.out.String())
	}
	var exit *exec.ExitError
	if errors.As(e.err, &exit) {
		return exit.ExitCode()
	}
	require.NoError(t, e.err)
	return 0
}

// waitForWorker waits until the worker's heartbeat says it takes jobs.
func (e *entrypoint) waitForWorker(t *testing.T, id string) {
	t.Helper()
	require.Eventually(t, func() bool {
		state, _ := e.rdb.HGet(context.Background(), proto.WorkerKey(id), "state").Result()
		return state == "idle"
	}, 30*time.Second, 50*time.Millisecond, "worker %s never became idle; output:\n%s", id, e.out.String())
}

func (e *entrypoint) comfyAnswers() bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+e.port, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func (e *entrypoint) pythonCalls(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(e.dir, "python-args"))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	require.NoError(t, err)
	return string(b)
}

// requireOrder checks that the output has these lines in this order.
func requireOrder(t *testing.T, out string, lines ...string) {
	t.Helper()
	at := 0
	for _, l := range lines {
		i := strings.Index(out[at:], l)
		require.GreaterOrEqual(t, i, 0, "%q missing or out of order in:\n%s", l, out)
		at += i + len(l)
	}
}

func TestEntrypointStopsWorkerThenComfyUIOnSIGTERM(t *testing.T) {
	t.Parallel()
	e := startEntrypoint(t, nil)
	e.waitForWorker(t, e.workerID)
	require.True(t, e.comfyAnswers())
	calls := e.pythonCalls(t)
	require.Contains(t, calls, "-c import torch; torch.cuda.init()", "the GPU is checked first")
	require.Contains(t, calls, "-u "+filepath.Join(e.dir, "comfyui", "main.py")+" --disable-auto-launch --log-stdout --verbose INFO --listen 127.0.0.1 --port "+e.port+" --disable-metadata --highvram --fast")

	manager, err := os.ReadFile(filepath.Join(e.dir, "comfyui", "user", "default", "ComfyUI-Manager", "config.ini"))
	require.NoError(t, err)
	require.Equal(t, "[default]\nnetwork_mode = offline\n", string(manager), "ComfyUI-Manager fetches nothing at run time")

	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, e.wait(t), e.out.String())
	requireOrder(t, e.out.String(), "GPU available — OK: NVIDIA Fake GPU", "ComfyUI answers on", "starting gpuworker",
		"signal received: draining", "stopping gpuworker", "stopping ComfyUI", "stopped")
	require.False(t, e.comfyAnswers(), "ComfyUI is stopped")
	n, err := e.rdb.Exists(context.Background(), proto.WorkerKey(e.workerID)).Result()
	require.NoError(t, err)
	require.Zero(t, n, "the worker drained and removed its heartbeat")
}

func TestEntrypointExitsWhenComfyUIDies(t *testing.T) {
	t.Parallel()
	e := startEntrypoint(t, nil)
	e.waitForWorker(t, e.workerID)
	pid, err := os.ReadFile(filepath.Join(e.dir, "comfyui.pid"))
	require.NoError(t, err)
	p, err := strconv.Atoi(strings.TrimSpace(string(pid)))
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(p, syscall.SIGKILL))

	code := e.wait(t)
	require.NotZero(t, code, "the container fails when ComfyUI dies")
	requireOrder(t, e.out.String(), "ComfyUI exited with status 137; stopping the worker", "stopping gpuworker")
	require.Equal(t, 137, code)
}

func TestEntrypointStartFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		env      map[string]string
		wantCode int
		wantOut  []string
	}{
		{name: "no GPU", env: map[string]string{"FAKE_GPU": "fail"}, wantCode: 1, wantOut: []string{
			"comfyfleet-worker: GPU is not available. PyTorch CUDA init failed:",
			"comfyfleet-worker: FAIL: RuntimeError: Found no NVIDIA driver on your system.",
			"This usually means the GPU on this machine is not properly initialized."}},
		{name: "ComfyUI never answers", env: map[string]string{"FAKE_COMFYUI": "hang", "COMFYUI_START_TIMEOUT": "1", "COMFYUI_STOP_TIMEOUT": "1"}, wantCode: 1,
			wantOut: []string{"ComfyUI did not answer on http://127.0.0.1:", "within 1s", "stopping ComfyUI"}},
		{name: "ComfyUI exits at start", env: map[string]string{"FAKE_COMFYUI": "exit", "GPU_CHECK": "false"}, wantCode: 3,
			wantOut: []string{"GPU check skipped (GPU_CHECK=false)", "ComfyUI exited with status 3 before it answered"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := startEntrypoint(t, tt.env)
			require.Equal(t, tt.wantCode, e.wait(t), e.out.String())
			requireOrder(t, e.out.String(), tt.wantOut...)
			require.NotContains(t, e.out.String(), "starting gpuworker")
			if tt.name == "no GPU" {
				require.NotContains(t, e.pythonCalls(t), "main.py", "ComfyUI is not started without a GPU")
			}
			if b, err := os.ReadFile(filepath.Join(e.dir, "comfyui.pid")); err == nil {
				p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
				require.Error(t, syscall.Kill(p, 0), "ComfyUI (pid %d) was stopped", p)
			}
		})
	}
}

// TestEntrypointServerlessMode: with RUNPOD_WEBHOOK_GET_JOB set (RunPod sets
// it in serverless workers) the adapter runs too, and the worker is named
// after the pod.
func TestEntrypointServerlessMode(t *testing.T) {
	t.Parallel()
	pod := "pod" + uuid.NewString()[:6]
	e := startEntrypoint(t, map[string]string{"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/ep/job-take/$RUNPOD_POD_ID", "RUNPOD_POD_ID": pod, "WORKER_ID": ""})
	id := "runpod-" + pod
	e.workerID = id // for cleanup
	e.waitForWorker(t, id)
	require.Eventually(t, func() bool {
		return strings.Contains(e.out.String(), "fake-adapter: RUNPOD_WEBHOOK_GET_JOB=https://api.runpod.ai")
	},
		10*time.Second, 20*time.Millisecond)
	require.Contains(t, e.out.String(), "WORKER_ID="+id)
	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, e.wait(t), e.out.String())
	requireOrder(t, e.out.String(), "starting runpod-adapter (RunPod serverless mode)", "signal received: draining",
		"stopping runpod-adapter", "stopping gpuworker", "stopping ComfyUI")
}

// TestEntrypointComfyUIMode: compose runs ComfyUI alone in the worker image.
func TestEntrypointComfyUIMode(t *testing.T) {
	t.Parallel()
	vol := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(vol, "models", "loras"), 0o755))
	writeFile(t, filepath.Join(vol, "models", "loras", "a.safetensors"), "x")
	managerConfig := filepath.Join(t.TempDir(), "config.ini")
	writeFile(t, managerConfig, "[default]\nnetwork_mode = public\nsecurity_level = normal\n")
	e := startEntrypoint(t, map[string]string{"NETWORK_VOLUME": vol, "NETWORK_VOLUME_DEBUG": "true", "COMFYUI_SAVE_METADATA": "true",
		"COMFY_LOG_LEVEL": "WARNING", "COMFYUI_ARGS": "", "COMFYUI_MANAGER_CONFIG": managerConfig}, "comfyui")
	require.Eventually(t, e.comfyAnswers, 20*time.Second, 20*time.Millisecond, e.out.String())
	calls := e.pythonCalls(t)
	require.Contains(t, calls, "--verbose WARNING --listen 0.0.0.0 --port "+e.port+"\n", "listens for the gpuworker container, keeps metadata")
	require.Contains(t, e.out.String(), "network volume: loras: 1 file(s)")
	require.Equal(t, "[default]\nnetwork_mode = offline\nsecurity_level = normal\n", readAbs(t, managerConfig))
	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, e.wait(t), e.out.String())
	require.NotContains(t, e.out.String(), "starting gpuworker")
}

// TestEntrypointComfyUIModeSharesOutputs: compose's gpuworker runs in its
// own container as user 65532:65532 (deploy/Dockerfile) and deletes a
// job's outputs from ComfyUI's output folder, which the pair shares. With
// COMFYUI_OUTPUT_GID, what ComfyUI (root) writes there, in new subfolders
// too, can be deleted by that user; the files of an earlier run as well.
func TestEntrypointComfyUIModeSharesOutputs(t *testing.T) {
	t.Parallel()
	require.Zero(t, os.Geteuid(), "the test runs ComfyUI as root and the gpuworker as 65532, as the containers do; run the tests as root (CI does)")
	tmp := t.TempDir()
	// The folders above reach the output folder for everyone, as / and
	// /comfyui do in the containers.
	require.NoError(t, os.Chmod(tmp, 0o755))
	require.NoError(t, os.Chmod(filepath.Dir(tmp), 0o755))
	out := filepath.Join(tmp, "output")
	old := filepath.Join(out, "old", "ComfyUI_00001_.png")
	require.NoError(t, os.MkdirAll(filepath.Dir(old), 0o755))
	writeFile(t, old, "png")
	require.NoError(t, os.Chmod(old, 0o644))
	written := filepath.Join(out, "job-1", "ComfyUI_00002_.png")
	e := startEntrypoint(t, map[string]string{"COMFYUI_OUTPUT_DIR": out, "COMFYUI_OUTPUT_GID": "65532", "FAKE_OUTPUT_FILE": written}, "comfyui")
	require.Eventually(t, e.comfyAnswers, 20*time.Second, 20*time.Millisecond, e.out.String())
	require.Contains(t, e.pythonCalls(t), "umask 0002\n", "ComfyUI writes group-writable files")
	require.Contains(t, e.out.String(), "output folder "+out+" shared with group 65532")

	// The gpuworker's user deletes both files.
	for _, f := range []string{written, old} {
		rm := exec.Command("rm", f)
		rm.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
		b, err := rm.CombinedOutput()
		require.NoError(t, err, "user 65532 deletes %s: %s", f, b)
		require.NoFileExists(t, f)
	}
	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, e.wait(t), e.out.String())

	// Without it, nothing changes: ComfyUI keeps the usual umask.
	plain := startEntrypoint(t, map[string]string{"COMFYUI_OUTPUT_DIR": out}, "comfyui")
	require.Eventually(t, plain.comfyAnswers, 20*time.Second, 20*time.Millisecond, plain.out.String())
	require.NotContains(t, plain.pythonCalls(t), "umask 0002")
	require.NoError(t, plain.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, plain.wait(t), plain.out.String())

	bad := startEntrypoint(t, map[string]string{"COMFYUI_OUTPUT_DIR": out, "COMFYUI_OUTPUT_GID": "gpuworker"}, "comfyui")
	require.Equal(t, 1, bad.wait(t))
	require.Contains(t, bad.out.String(), "COMFYUI_OUTPUT_GID=gpuworker: want a numeric group id")
}

func TestEntrypointRunsOtherCommands(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(repoPath("deploy", "worker", "entrypoint.sh"), "echo", "hello").CombinedOutput()
	require.NoError(t, err)
	require.Equal(t, "hello\n", string(out))
}

// TestEntrypointSettingsAreDocumented: the variables the entrypoint reads
// are in docs/configuration.md with the script's defaults.
func TestEntrypointSettingsAreDocumented(t *testing.T) {
	t.Parallel()
	rows := docTable(t, "worker-image")
	got := map[string]string{}
	for _, r := range rows {
		got[r.Env] = r.Default
	}
	require.Equal(t, entrypointVariables(t), got)
	// Variables it reads but does not own are explained in the same section.
	section := docSection(t, "## Worker image")
	for _, v := range []string{"WORKER_ID", "RUNPOD_POD_ID", "COMFYUI_URL"} {
		require.Contains(t, readFile(t, "deploy", "worker", "entrypoint.sh"), "${"+v)
		require.Contains(t, section, "`"+v+"`")
	}
}

func readAbs(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// TestEntrypointEndsWithTheAdapter: in serverless mode the adapter may end
// the worker (REFRESH_WORKER); the container then stops cleanly, and with
// the adapter's failure when it failed.
func TestEntrypointEndsWithTheAdapter(t *testing.T) {
	t.Parallel()
	for _, code := range []int{0, 5} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			t.Parallel()
			e := startEntrypoint(t, map[string]string{"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/ep/job-take/x", "FAKE_ADAPTER_EXIT": strconv.Itoa(code)})
			require.Equal(t, code, e.wait(t), e.out.String())
			requireOrder(t, e.out.String(), "runpod-adapter exited with status "+strconv.Itoa(code), "stopping gpuworker", "stopping ComfyUI")
			require.False(t, e.comfyAnswers())
		})
	}
}

// TestEntrypointComfyUIModeStopsAsPID1: in comfyui mode the entrypoint may
// be PID 1 (an image run without its init), where the kernel drops every
// signal the process has no handler for; ComfyUI, exec'd there, would
// ignore SIGTERM and each stop would wait for SIGKILL. The entrypoint runs
// as PID 1 of its own PID namespace here, with a ComfyUI that has no
// handler for SIGTERM (the fake's "hang"), and a SIGTERM stops it at once.
func TestEntrypointComfyUIModeStopsAsPID1(t *testing.T) {
	t.Parallel()
	unshare, err := exec.LookPath("unshare")
	require.NoError(t, err, "util-linux's unshare runs the entrypoint as PID 1")
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "python-args")
	out := &syncBuffer{}
	cmd := exec.Command(unshare, "--pid", "--fork", "--kill-child", repoPath("deploy", "worker", "entrypoint.sh"), "comfyui")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "COMFYUI_PYTHON=" + repoPath("deploy", "testdata", "fake-python.sh"),
		"COMFYUI_DIR=" + filepath.Join(dir, "comfyui"), "COMFYUI_PID_FILE=" + filepath.Join(dir, "comfyui.pid"),
		"FAKE_ARGS_FILE=" + argsFile, "FAKE_COMFYUI=hang", "GPU_CHECK=false",
		"COMFYUI_STOP_TIMEOUT=120", // far beyond the test's wait: only the passed-on SIGTERM can stop it in time
		"NETWORK_VOLUME=" + filepath.Join(dir, "vol")}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})

	// The namespace's PID 1 is unshare's child; ComfyUI runs once the fake
	// Python has recorded its call.
	var init int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		if err != nil || len(strings.Fields(string(b))) == 0 {
			return false
		}
		init, _ = strconv.Atoi(strings.Fields(string(b))[0])
		calls, _ := os.ReadFile(argsFile)
		return strings.Contains(string(calls), "main.py")
	}, 20*time.Second, 10*time.Millisecond, out.String())
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", init))
	require.NoError(t, err)
	require.Contains(t, string(status), "NSpid:\t"+strconv.Itoa(init)+"\t1\n", "the entrypoint is PID 1 of its namespace")

	start := time.Now()
	require.NoError(t, syscall.Kill(init, syscall.SIGTERM))
	select {
	case <-done:
		require.NoError(t, waitErr, out.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("SIGTERM did not stop ComfyUI; output:\n%s", out.String())
	}
	require.Less(t, time.Since(start), 30*time.Second)
	requireOrder(t, out.String(), "starting ComfyUI on 0.0.0.0", "signal received: stopping ComfyUI", "stopped")
}
