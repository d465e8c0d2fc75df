package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// cliEnv makes the test binary act as the comfyfleet binary: with it set
// (to the JSON list of arguments), the process runs the command and exits
// before any test runs. The end-to-end tests start the CLI this way, as
// separate processes they can interrupt and kill.
const cliEnv = "COMFYFLEET_TEST_RUN"

func init() {
	a := os.Getenv(cliEnv)
	if a == "" {
		return
	}
	var args []string
	if err := json.Unmarshal([]byte(a), &args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(exitUsage)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// proc is a comfyfleet process.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs `comfyfleet args...` in dir, with none of the settings of the
// test's own environment, as a user with a fresh shell would.
func start(t *testing.T, dir string, args ...string) *proc {
	t.Helper()
	return startWith(t, dir, nil, args...)
}

// startWith is start with the variables env (NAME=value) set.
func startWith(t *testing.T, dir string, env []string, args ...string) *proc {
	t.Helper()
	a, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// Every variable a command reads: dev's, which are every binary's too,
	// and the CLI's.
	var dc devstack.Config
	settings := map[string]bool{}
	for _, s := range devSettings(&dc).Settings() {
		settings[s.Env] = true
	}
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); settings[name] || name == "COMFYFLEET_DIR" {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Env = append(cmd.Env, cliEnv+"="+string(a))
	cmd.Dir = dir
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(t, cmd.Start())
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to end and returns its exit code.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("comfyfleet %v still running after %v; output:\n%s", p.cmd.Env[len(p.cmd.Env)-1], d, p.out)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, p.err)
	return 0
}

// manifestItems counts the items in a manifest being written.
func manifestItems(dir string) int {
	f, err := os.Open(filepath.Join(dir, batch.ManifestFile))
	if err != nil {
		return 0
	}
	defer f.Close()
	got, _, _ := batch.ReadManifest(f)
	return len(got)
}

// TestSubmitResumesAfterKill is the batch workflow end to end, with every
// part a separate process as on a user's machine: `comfyfleet dev`, then a
// 50-item sweep through `comfyfleet submit` (finding the dev stack by
// itself), interrupted with Ctrl-C midway; `comfyfleet watch` reattaches
// and is killed (SIGKILL) midway; the same submit command again finishes
// the batch. In the end there are 50 results, no job was submitted twice
// (every publish on the intake is counted), and the manifest agrees with
// the status records.
func TestSubmitResumesAfterKill(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	example, err := os.ReadFile("../../examples/txt2img.json")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(work, "wf.json"), example, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(work, "prompts.txt"), []byte("a red fox\na blue whale, swimming\n"), 0o644))

	dev := start(t, work, "dev", "--listen", "127.0.0.1:0", "--step-delay", "10ms", "--log-level", "warn")
	stackFile := filepath.Join(work, ".comfyfleet", "stack.json")
	require.Eventually(t, func() bool { _, err := os.Stat(stackFile); return err == nil }, time.Minute, 20*time.Millisecond,
		"comfyfleet dev did not come up:\n%s", dev.out)
	var info struct{ NATSURL, RedisURL string }
	data, err := os.ReadFile(stackFile)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &struct {
		N *string `json:"nats_url"`
		R *string `json:"redis_url"`
	}{&info.NATSURL, &info.RedisURL}))

	// Every publish on the intake, duplicates included, seen from beside.
	nc, err := nats.Connect(info.NATSURL)
	require.NoError(t, err)
	defer nc.Close()
	var publishes atomic.Int64
	sub, err := nc.Subscribe(proto.SubmitSubjects, func(*nats.Msg) { publishes.Add(1) })
	require.NoError(t, err)
	defer sub.Unsubscribe()
	require.NoError(t, nc.Flush())

	submitArgs := []string{"submit", "wf.json", "--set", "3.inputs.seed=1..25", "--set", "6.inputs.text=@prompts.txt", "--out", "out"}
	out := filepath.Join(work, "out")

	// 1. Submit, then Ctrl-C once some results are in.
	run1 := start(t, work, submitArgs...)
	require.Eventually(t, func() bool { return manifestItems(out) >= 8 && publishes.Load() == 50 }, time.Minute, 10*time.Millisecond,
		"first run:\n%s", run1.out)
	require.NoError(t, run1.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, exitInterrupted, run1.wait(t, 30*time.Second), run1.out.String())
	m := regexp.MustCompile(`batch (\S+): submitting 50 item\(s\)`).FindStringSubmatch(run1.out.String())
	require.NotNil(t, m, run1.out.String())
	batchID := m[1]
	require.Contains(t, run1.out.String(), "keeps running on the fleet")
	require.Contains(t, run1.out.String(), "reattach with: comfyfleet watch "+batchID)
	t.Logf("first run, interrupted:\n%s", run1.out)

	// 2. Reattach, and kill it hard midway.
	before := manifestItems(out)
	run2 := start(t, work, "watch", batchID, "--out", "out")
	require.Eventually(t, func() bool { return manifestItems(out) >= before+6 }, time.Minute, 10*time.Millisecond,
		"watch:\n%s", run2.out)
	require.NoError(t, run2.cmd.Process.Kill())
	run2.wait(t, 10*time.Second)
	t.Logf("watch, killed with %d of 50 results in the manifest:\n%s", manifestItems(out), run2.out)

	// 3. The same command again finishes the batch.
	run3 := start(t, work, submitArgs...)
	require.Equal(t, exitOK, run3.wait(t, 2*time.Minute), run3.out.String())
	require.Contains(t, run3.out.String(), "submitted 0 new job(s)")
	t.Logf("second submit:\n%s", run3.out)

	// No duplicate submission: 50 publishes in all, 50 messages stored.
	require.EqualValues(t, 50, publishes.Load(), "publishes on the intake")
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, proto.SubmitStream)
	require.NoError(t, err)
	si, err := stream.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 50, si.State.LastSeq, "messages ever stored on %s", proto.SubmitStream)

	// 50 results, and the manifest agrees with the status records.
	f, err := os.Open(filepath.Join(out, batch.ManifestFile))
	require.NoError(t, err)
	results, bad, err := batch.ReadManifest(f)
	f.Close()
	require.NoError(t, err)
	require.Zero(t, bad)
	require.Len(t, results, 50)
	ropts, err := redis.ParseURL(info.RedisURL)
	require.NoError(t, err)
	rc := redis.NewClient(ropts)
	defer rc.Close()
	store := rdb.New(rc, rdb.Options{})
	jobIDs := map[string]bool{}
	params := map[string]bool{}
	for name, r := range results {
		jobIDs[r.JobID] = true
		params[string(r.Params["3.inputs.seed"])+string(r.Params["6.inputs.text"])] = true
		require.Equal(t, proto.StatusCompleted, r.Status, name)
		require.Equal(t, batchID, r.BatchID)
		rec, err := store.Get(ctx, r.JobID)
		require.NoError(t, err, name)
		require.Equal(t, rec.Status, r.Status, name)
		require.Equal(t, rec.WorkerID, r.WorkerID, name)
		require.Equal(t, rec.Attempt, r.Attempt, name)
		require.Equal(t, rec.Retries, r.Retries, name)
		require.True(t, rec.SubmittedAt.Equal(r.SubmittedAt), name)
		require.True(t, rec.StartedAt.Equal(r.StartedAt), name)
		require.True(t, rec.FinishedAt.Equal(r.FinishedAt), name)
		require.Equal(t, rec.ExecutionTime().Milliseconds(), r.ExecutionMS, name)
		require.Equal(t, proto.LaneBatch, rec.Lane)
		var o proto.Output
		require.NoError(t, json.Unmarshal(rec.Output, &o))
		require.Len(t, r.Files, len(o.Images), name)
		for i, img := range o.Images {
			fl := r.Files[i]
			require.Equal(t, img.Blob, fl.Blob, name)
			require.Equal(t, name+"/"+name+"_"+img.Filename, fl.Path, name, "the file carries its item")
			fi, err := os.Stat(filepath.Join(out, fl.Path))
			require.NoError(t, err, name)
			require.Equal(t, img.Size, fi.Size(), name)
		}
	}
	require.Len(t, jobIDs, 50)
	require.Len(t, params, 50, "every combination once")

	// The other commands, against the same stack, with no settings.
	st := start(t, work, "status", batchID)
	require.Equal(t, exitOK, st.wait(t, 30*time.Second), st.out.String())
	require.Contains(t, st.out.String(), "batch "+batchID+": 50 item(s): COMPLETED 50")
	fl := start(t, work, "fleet")
	require.Equal(t, exitOK, fl.wait(t, 30*time.Second), fl.out.String())
	require.Contains(t, fl.out.String(), "workers: 2")
	require.Contains(t, fl.out.String(), "COMPLETED 50")

	cn := start(t, work, "cancel", batchID)
	require.Equal(t, exitOK, cn.wait(t, 30*time.Second), cn.out.String())
	require.Contains(t, cn.out.String(), "cancelled 0 job(s) (0 not yet admitted); 50 had finished already")

	require.NoError(t, dev.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, exitOK, dev.wait(t, 30*time.Second), dev.out.String())
}

func TestCommandLineErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	wf := filepath.Join(dir, "wf.json")
	require.NoError(t, os.WriteFile(wf, []byte(`{"3":{"class_type":"KSampler","inputs":{"seed":1}}}`), 0o644))
	tests := []struct {
		args []string
		code int
		want string
	}{
		{args: []string{"submit"}, code: exitUsage, want: "want one argument, got 0"},
		{args: []string{"submit", wf, "--set", "3.inputs.seed"}, code: exitUsage, want: "want PATH=VALUES"},
		{args: []string{"submit", wf, "--set", "3.inputs.sede=1..2"}, code: exitUsage, want: "the workflow has no 3.inputs.sede"},
		{args: []string{"submit", wf, "--batch", "a.b"}, code: exitUsage, want: "batch id"},
		{args: []string{"submit", wf, "--lane", "fast"}, code: exitUsage, want: `lane "fast"`},
		{args: []string{"submit", wf, "--s3-prefix", "../x"}, code: exitUsage, want: "--s3-prefix"},
		{args: []string{"submit", filepath.Join(dir, "nope.json")}, code: exitUsage, want: "no such file"},
		{args: []string{"watch"}, code: exitUsage, want: "want one argument"},
		{args: []string{"status", "a", "b"}, code: exitUsage, want: "got 2"},
		{args: []string{"fleet", "x"}, code: exitUsage, want: "want no argument"},
		{args: []string{"cancel", "--help"}, code: exitOK, want: "cancels a job"},
		{args: []string{"status", "x", "--nats-url", "nats://127.0.0.1:1"}, code: exitNotAllDone, want: "NATS at nats://127.0.0.1:1 unreachable"},
		{args: []string{"status", "x", "--nats-url", "nats://127.0.0.1:1", "--nats-tls-ca", filepath.Join(dir, "no-ca.pem")}, code: exitUsage, want: "NATS_TLS_CA: open "},
		{args: []string{"fleet", "--redis-url", "redis://127.0.0.1:1/0", "--redis-tls-ca", wf}, code: exitUsage, want: "REDIS_TLS_CA: " + wf + " holds no PEM certificate"},
		{args: []string{"bench", "--nats-url", "nats://127.0.0.1:1", "--nats-tls-cert", wf}, code: exitUsage, want: "--nats-tls-key: empty while the client certificate"},
		{args: []string{"bogus"}, code: exitUsage, want: `unknown command "bogus"`},
		{args: []string{"--help"}, code: exitOK, want: "comfyfleet bench [SCENARIO…]"},
		{args: []string{"bench", "--help"}, code: exitOK, want: "a running stack: --nats-url and --api-url"},
		{args: []string{"bench", "--queued", "-1"}, code: exitUsage, want: "queued: -1 is negative"},
		{args: []string{"bench", "overhead", "speed"}, code: exitUsage, want: `scenario "speed" is unknown`},
		{args: []string{"bench", "--size", "60"}, code: exitUsage, want: "multiple of 8"},
		{args: []string{"bench", "--jobs", "many"}, code: exitUsage, want: "invalid value"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		code := run(t.Context(), tt.args, &out, &out)
		require.Equal(t, tt.code, code, "%v: %s", tt.args, out.String())
		require.Contains(t, out.String(), tt.want, tt.args)
	}
}

// TestBatchConfigurationDoc: docs/configuration.md lists every setting of
// the batch commands with its flag, variable and default.
func TestBatchConfigurationDoc(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	var sc submitConfig
	var wc watchConfig
	var shc showConfig
	var cc connConfig
	var dc dlqConfig
	for name, fs := range map[string]*flagenv.Set{
		"comfyfleet submit": submitSettings(&sc),
		"comfyfleet watch":  watchSettings(&wc),
		"comfyfleet status": statusSettings(&shc),
		"comfyfleet cancel": cancelSettings(&cc),
		"comfyfleet fleet":  fleetSettings(&shc),
		"comfyfleet dlq":    dlqSettings(&dc),
	} {
		if problems := configdoc.Check(doc, name, fs.Settings()); len(problems) > 0 {
			t.Errorf("docs/configuration.md is out of date for %s:\n\n%s", name, strings.Join(problems, "\n\n"))
		}
	}
}
