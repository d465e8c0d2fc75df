package deploy_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/blob/s3/s3test"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// joinedRedisDB is the Redis database of the fleet the joined-mode test
// starts: the binaries have no key prefix, so the fleet gets a database of
// its own on the test Redis (the sim stack has fleetRedisDB).
const joinedRedisDB = 10

// s3Server is the package's S3 server (versitygw), started on first use.
var s3Server s3test.Lazy

// startImage runs the worker image's entrypoint as a process with the real
// binaries on PATH, nothing faked but ComfyUI's Python (the emulator behind
// fake-python.sh), and a fake RunPod platform's variables as RunPod sets
// them in a serverless worker. env is added to that.
func startImage(t *testing.T, plat *runpodtest.Platform, env map[string]string, args ...string) *entrypoint {
	t.Helper()
	dir := t.TempDir()
	e := &entrypoint{out: &syncBuffer{}, done: make(chan struct{}), dir: dir, port: freePort(t)}
	getJob, postOutput, postStream, ping := plat.Templates()
	base := map[string]string{
		"PATH":                       filepath.Dir(bin(t, "comfyfleet")) + ":" + os.Getenv("PATH"),
		"HOME":                       dir,
		"COMFYUI_PYTHON":             repoPath("deploy", "testdata", "fake-python.sh"),
		"COMFYUI_DIR":                filepath.Join(dir, "comfyui"),
		"COMFYUI_PORT":               e.port,
		"COMFYUI_PID_FILE":           filepath.Join(dir, "comfyui.pid"),
		"FAKE_ARGS_FILE":             filepath.Join(dir, "python-args"),
		"NETWORK_VOLUME":             filepath.Join(dir, "runpod-volume"),
		"RUNPOD_WEBHOOK_GET_JOB":     getJob,
		"RUNPOD_WEBHOOK_POST_OUTPUT": postOutput,
		"RUNPOD_WEBHOOK_POST_STREAM": postStream,
		"RUNPOD_WEBHOOK_PING":        ping,
		"RUNPOD_AI_API_KEY":          "rp-key",
		"RUNPOD_POD_ID":              "pod" + uuid.NewString()[:6],
		"RUNPOD_PING_INTERVAL":       "200",
		"COMFYFLEET_DIR":             filepath.Join(dir, "comfyfleet"),
		"LISTEN_ADDR":                "127.0.0.1:0",
		"SHUTDOWN_GRACE":             "5s",
		"LOG_LEVEL":                  "info",
		"GORACE":                     "atexit_sleep_ms=0", // binaries built with -race exit at once
	}
	for k, v := range env {
		base[k] = v
	}
	var environ []string
	for k, v := range base {
		environ = append(environ, k+"="+v)
	}
	e.cmd = exec.Command(repoPath("deploy", "worker", "entrypoint.sh"), args...)
	e.cmd.Env = environ
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own group, so cleanup reaches every child
	e.cmd.WaitDelay = 5 * time.Second
	require.NoError(t, e.cmd.Start())
	go func() { e.err = e.cmd.Wait(); close(e.done) }()
	t.Cleanup(func() {
		syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
		<-e.done
		if t.Failed() {
			t.Logf("entrypoint output:\n%s", e.out.String())
		}
	})
	return e
}

// txt2imgJob is examples/txt2img.json as RunPod hands it to a worker:
// the request's input under a job id.
func txt2imgJob(t *testing.T, id string) map[string]any {
	t.Helper()
	var req struct {
		Input json.RawMessage `json:"input"`
	}
	require.NoError(t, json.Unmarshal([]byte(readFile(t, "examples", "txt2img.json")), &req))
	return map[string]any{"id": id, "input": req.Input}
}

// jobDone waits for the final job-done post of job id (not a progress
// post, which carries "status": "IN_PROGRESS") and returns its body.
func jobDone(t *testing.T, plat *runpodtest.Platform, id string) []byte {
	t.Helper()
	final := func(r runpodtest.Request) bool {
		if r.Kind() != "job-done" || !strings.Contains(r.URI, "/"+id+"?") {
			return false
		}
		var b struct {
			Status string `json:"status"`
		}
		return json.Unmarshal(r.Body, &b) == nil && b.Status != "IN_PROGRESS"
	}
	reqs := plat.WaitFor(t, "job-done of "+id, func(reqs []runpodtest.Request) bool {
		for _, r := range reqs {
			if final(r) {
				return true
			}
		}
		return false
	})
	for _, r := range reqs {
		if final(r) {
			return r.Body
		}
	}
	return nil
}

// requireWorkerComfyUIAnswer checks a job-done body against worker-comfyui
// 5.x's success answer: output.images[] of {filename, type: "base64", data}
// with PNG bytes, no error.
func requireWorkerComfyUIAnswer(t *testing.T, body []byte) {
	t.Helper()
	requireImageAnswer(t, body, "base64", "ComfyUI")
}

// requireImageAnswer checks a job-done body for one PNG image of this
// type, "base64" (data is the bytes) or "s3_url" (data is their URL),
// saved by the workflow under this filename_prefix.
func requireImageAnswer(t *testing.T, body []byte, typ, prefix string) {
	t.Helper()
	var done struct {
		Output struct {
			Images []struct {
				Filename string `json:"filename"`
				Type     string `json:"type"`
				Data     string `json:"data"`
			} `json:"images"`
			Errors []string `json:"errors"`
		} `json:"output"`
		Error   any  `json:"error"`
		StopPod bool `json:"stopPod"`
	}
	require.NoError(t, json.Unmarshal(body, &done), "%s", body)
	require.Nil(t, done.Error, "%s", body)
	require.Len(t, done.Output.Images, 1, "%s", body)
	img := done.Output.Images[0]
	require.Equal(t, typ, img.Type, "%s", body)
	require.Regexp(t, `^`+regexp.QuoteMeta(prefix)+`_\d{5}_\.png$`, img.Filename)
	var png []byte
	if typ == "s3_url" {
		resp, err := http.Get(img.Data)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, img.Data)
		png, err = io.ReadAll(resp.Body)
		require.NoError(t, err)
	} else {
		var err error
		png, err = base64.StdEncoding.DecodeString(img.Data)
		require.NoError(t, err)
	}
	require.True(t, bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")), "the data is a PNG")
	require.Empty(t, done.Output.Errors)
}

// TestStandaloneModeRunsAJobAndDrains: on a RunPod serverless worker with
// no fleet configured (no NATS_URL), the image runs the whole fleet in the
// container: a worker-comfyui job taken from RunPod ends in job-done with
// worker-comfyui's answer. SIGTERM then drains and stops it, ComfyUI last.
func TestStandaloneModeRunsAJobAndDrains(t *testing.T) {
	t.Parallel()
	plat := runpodtest.StartPlatform(t)
	e := startImage(t, plat, nil)
	plat.AddJob(txt2imgJob(t, "sa-1"))
	requireWorkerComfyUIAnswer(t, jobDone(t, plat, "sa-1"))
	// A second job on the same worker: the stack keeps taking jobs.
	plat.AddJob(txt2imgJob(t, "sa-2"))
	requireWorkerComfyUIAnswer(t, jobDone(t, plat, "sa-2"))

	out := e.out.String()
	require.Contains(t, out, "standalone mode (no fleet to join)")
	require.NotContains(t, out, "starting gpuworker", "no process of its own: the worker is inside the standalone process")
	require.NotContains(t, out, "starting runpod-adapter")
	for _, r := range plat.Requests() {
		require.Equal(t, "rp-key", r.Header.Get("Authorization"), "%s %s", r.Method, r.URI)
	}
	require.NotEmpty(t, runpodtest.Of(plat.Requests(), "ping"), "heartbeats reach RunPod")

	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, e.wait(t), e.out.String())
	requireOrder(t, e.out.String(), "starting comfyfleet standalone", "comfyfleet standalone is up",
		"signal received: draining", "stopping comfyfleet standalone", "stopping ComfyUI", "stopped")
	require.False(t, e.comfyAnswers(), "ComfyUI is stopped")
	_, err := os.Stat(filepath.Join(e.dir, "comfyfleet", "stack.json"))
	require.ErrorIs(t, err, os.ErrNotExist, "the stack stopped and removed its stack.json")
}

// TestStandaloneModeDrainsTheJobInHand: SIGTERM while a job runs lets it
// finish and report before the container exits.
func TestStandaloneModeDrainsTheJobInHand(t *testing.T) {
	t.Parallel()
	plat := runpodtest.StartPlatform(t)
	// The emulator takes 100 ms a sampler step: 2 s for the 20 steps.
	e := startImage(t, plat, map[string]string{"SHUTDOWN_GRACE": "30s", "FAKE_STEP_DELAY": "100ms"})
	job := txt2imgJob(t, "sa-drain")
	plat.AddJob(job)
	plat.WaitFor(t, "the job's progress", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-stream")) > 0 || len(runpodtest.Of(reqs, "job-done")) > 0
	})
	signalled := time.Now()
	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, e.wait(t), e.out.String())
	requireWorkerComfyUIAnswer(t, jobDone(t, plat, "sa-drain"))
	for _, r := range runpodtest.Of(plat.Requests(), "job-done") {
		if strings.Contains(r.URI, "/sa-drain?") && !strings.Contains(string(r.Body), "IN_PROGRESS") {
			require.True(t, r.At.After(signalled), "the job was still running at SIGTERM and finished in the drain")
		}
	}
	requireOrder(t, e.out.String(), "signal received: draining", "stopping comfyfleet standalone", "stopping ComfyUI")
}

// TestStandaloneModeRefreshWorker: with REFRESH_WORKER (worker-comfyui's
// setting), the job's result asks RunPod for a fresh worker (stopPod) and
// the container ends cleanly after it.
func TestStandaloneModeRefreshWorker(t *testing.T) {
	t.Parallel()
	plat := runpodtest.StartPlatform(t)
	e := startImage(t, plat, map[string]string{"REFRESH_WORKER": "true"})
	plat.AddJob(txt2imgJob(t, "sa-refresh"))
	body := jobDone(t, plat, "sa-refresh")
	requireWorkerComfyUIAnswer(t, body)
	require.Contains(t, string(body), `"stopPod":true`)
	require.Equal(t, 0, e.wait(t), e.out.String())
	requireOrder(t, e.out.String(), "refresh_worker", "comfyfleet standalone exited with status 0; stopping ComfyUI")
	require.False(t, e.comfyAnswers())
}

// TestJoinedModeRunsAJob: with NATS_URL set the image joins that fleet
// (here a NATS server, a Redis database and a dispatcher the test runs):
// gpuworker and runpod-adapter run beside ComfyUI, and the same job gets
// the same answer through the fleet.
func TestJoinedModeRunsAJob(t *testing.T) {
	t.Parallel()
	nats := testenv.StartNATS(t)
	redisURL := joinedRedis(t)
	disp := exec.Command(bin(t, "dispatcher"))
	disp.Env = []string{"NATS_URL=" + nats.URL, "REDIS_URL=" + redisURL, "LOG_LEVEL=warn", "GORACE=atexit_sleep_ms=0"}
	dispOut := &syncBuffer{}
	disp.Stdout, disp.Stderr = dispOut, dispOut
	disp.WaitDelay = 5 * time.Second
	require.NoError(t, disp.Start())
	t.Cleanup(func() {
		_ = disp.Process.Signal(syscall.SIGTERM)
		_ = disp.Wait()
		if t.Failed() {
			t.Logf("dispatcher output:\n%s", dispOut.String())
		}
	})

	plat := runpodtest.StartPlatform(t)
	e := startImage(t, plat, map[string]string{"NATS_URL": nats.URL, "REDIS_URL": redisURL, "WORKER_ID": "joined-" + uuid.NewString()[:6]})
	plat.AddJob(txt2imgJob(t, "jn-1"))
	requireWorkerComfyUIAnswer(t, jobDone(t, plat, "jn-1"))
	out := e.out.String()
	require.Contains(t, out, "starting gpuworker")
	require.Contains(t, out, "starting runpod-adapter (RunPod serverless mode)")
	require.NotContains(t, out, "standalone")

	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, e.wait(t), e.out.String())
	requireOrder(t, e.out.String(), "signal received: draining", "stopping runpod-adapter", "stopping gpuworker", "stopping ComfyUI")
}

// TestStandaloneModeRefusesAFleet: `comfyfleet standalone` run with
// NATS_URL set says that standalone embeds its own NATS.
func TestStandaloneModeRefusesAFleet(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(bin(t, "comfyfleet"), "standalone")
	cmd.Env = []string{"NATS_URL=nats://127.0.0.1:4222", "GORACE=atexit_sleep_ms=0"}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "%s", out)
	require.Equal(t, 2, exit.ExitCode())
	require.Contains(t, string(out), "comfyfleet standalone: NATS_URL: set, but standalone mode runs its own NATS")
}

// joinedRedis returns the URL of the joined fleet's Redis database,
// emptied before and after.
func joinedRedis(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(testenv.RedisURL())
	require.NoError(t, err)
	u.Path = fmt.Sprintf("/%d", joinedRedisDB)
	opts, err := redis.ParseURL(u.String())
	require.NoError(t, err)
	rdb := redis.NewClient(opts)
	require.NoError(t, rdb.FlushDB(testenv.Context(t, 10*time.Second)).Err(), "redis at %s", testenv.RedisURL())
	t.Cleanup(func() {
		rdb.FlushDB(context.Background())
		rdb.Close()
	})
	return u.String()
}

// TestStandaloneModeSecondSignal: a second SIGTERM during the drain ends
// the container at once, without waiting for the job in hand (RunPod
// hands it out again).
func TestStandaloneModeSecondSignal(t *testing.T) {
	t.Parallel()
	plat := runpodtest.StartPlatform(t)
	// 20 steps of 1 s: the job outlasts the test unless the drain is cut.
	e := startImage(t, plat, map[string]string{"SHUTDOWN_GRACE": "60s", "FAKE_STEP_DELAY": "1s"})
	plat.AddJob(txt2imgJob(t, "sa-forced"))
	plat.WaitFor(t, "the job's progress", func(reqs []runpodtest.Request) bool {
		return len(runpodtest.Of(reqs, "job-stream")) > 0
	})
	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	require.Eventually(t, func() bool { return strings.Contains(e.out.String(), `"msg":"draining"`) },
		20*time.Second, 20*time.Millisecond, "the stack never started draining")
	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 1, e.wait(t), e.out.String())
	requireOrder(t, e.out.String(), "signal received: draining", "second signal: passing it on", "second signal, exiting now",
		"stopping ComfyUI")
	for _, r := range runpodtest.Of(plat.Requests(), "job-done") {
		require.Contains(t, string(r.Body), "IN_PROGRESS", "no result was posted for the cut job")
	}
}

// TestStandaloneModeOutputsToS3: worker-comfyui's BUCKET_* variables send
// the outputs to S3, and the answer carries their URLs ("s3_url"), as
// worker-comfyui's does. A job without a workflow fails with
// worker-comfyui's error.
func TestStandaloneModeOutputsToS3(t *testing.T) {
	t.Parallel()
	srv := s3Server.Get(t)
	bucket := srv.Bucket(t)
	plat := runpodtest.StartPlatform(t)
	startImage(t, plat, map[string]string{"BUCKET_ENDPOINT_URL": srv.Endpoint, "BUCKET_ACCESS_KEY_ID": srv.AccessKey,
		"BUCKET_SECRET_ACCESS_KEY": srv.SecretKey, "BUCKET_NAME": bucket, "BUCKET_REGION": srv.Region, "BUCKET_PREFIX": "sa"})
	plat.AddJob(txt2imgJob(t, "sa-s3"))
	requireImageAnswer(t, jobDone(t, plat, "sa-s3"), "s3_url", "ComfyUI")

	plat.AddJob(map[string]any{"id": "sa-bad", "input": map[string]any{"images": []any{}}})
	var failed struct {
		Error string `json:"error"`
	}
	body := jobDone(t, plat, "sa-bad")
	require.NoError(t, json.Unmarshal(body, &failed), "%s", body)
	require.Equal(t, "Missing 'workflow' parameter", failed.Error, "%s", body)
}
