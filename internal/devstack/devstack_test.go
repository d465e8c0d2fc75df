package devstack_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"image"
	_ "image/jpeg" // image.DecodeConfig reads previews
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/metrics/metricstest"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

type bundle struct {
	stack *devstack.Stack
	store *rdb.DB
	js    jetstream.JetStream
	dir   string // COMFYFLEET_DIR
}

// config binds the dev stack's settings as `comfyfleet dev` does, reads
// them from env alone, and finishes them.
func config(t *testing.T, env map[string]string) devstack.Config {
	t.Helper()
	var cfg devstack.Config
	fs := flagenv.New("comfyfleet dev", "")
	cfg.Bind(fs)
	require.NoError(t, fs.Parse(nil, func(k string) string { return env[k] }))
	setting, err := cfg.Finish()
	require.NoError(t, err, setting)
	return cfg
}

// setup runs the dev stack as `comfyfleet dev` does, with its NATS on a
// random port and its records under a test prefix in the test Redis; more
// are more settings.
func setup(t *testing.T, more ...string) *bundle {
	t.Helper()
	rc, prefix := testenv.Redis(t)
	dir := t.TempDir()
	env := map[string]string{
		"COMFYFLEET_DIR": dir, "LISTEN_ADDR": "127.0.0.1:0", "COMFYFLEET_NATS_PORT": "-1", "COMFYFLEET_WORKERS": "2",
		"REDIS_URL": testenv.RedisURL(), "SHUTDOWN_GRACE": "5s",
	}
	for i := 0; i+1 < len(more); i += 2 {
		env[more[i]] = more[i+1]
	}
	cfg := config(t, env)
	cfg.Common.KeyPrefix = prefix
	cfg.Logger = zaptest.NewLogger(t)
	stack, err := devstack.Start(testenv.Context(t, time.Minute), cfg)
	require.NoError(t, err)
	t.Cleanup(stack.Stop)
	info, err := os.ReadFile(filepath.Join(dir, devstack.StackFile))
	require.NoError(t, err)
	require.Contains(t, string(info), stack.Info.APIURL, "the CLI finds the stack")
	st, err := os.Stat(filepath.Join(dir, devstack.StackFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "stack.json is its owner's alone: its URLs may carry passwords")

	nc, err := nats.Connect(stack.Info.NATSURL)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return &bundle{stack: stack, store: rdb.New(rc, rdb.Options{Prefix: prefix}), js: js, dir: dir}
}

func (b *bundle) post(t *testing.T, path, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(b.stack.Info.APIURL+path, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(data, &out), "body %s", data)
	return resp.StatusCode, out
}

func example(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../examples/txt2img.json")
	require.NoError(t, err)
	return string(data)
}

// requirePNG checks an output item is a PNG of the given size.
func requirePNG(t *testing.T, item map[string]any, w, h int) []byte {
	t.Helper()
	require.Equal(t, "base64", item["type"])
	require.Equal(t, "ComfyUI_00001_.png", item["filename"])
	data, err := base64.StdEncoding.DecodeString(item["data"].(string))
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, w, img.Bounds().Dx())
	require.Equal(t, h, img.Bounds().Dy())
	return data
}

func TestRunSyncReturnsTheImage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code, out := b.post(t, "/runsync", example(t))
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
	require.Contains(t, []any{"dev-worker-1", "dev-worker-2"}, out["workerId"])
	require.Greater(t, out["executionTime"], float64(0))
	images := out["output"].(map[string]any)["images"].([]any)
	require.Len(t, images, 1)
	requirePNG(t, images[0].(map[string]any), 512, 512)

	code, out = b.post(t, "/runsync", `{"input":{"images":[]}}`)
	require.Equal(t, http.StatusBadRequest, code)
	require.Equal(t, "Missing 'workflow' parameter", out["error"])
}

func TestRunThenStatusObservesEveryTransition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// A smaller image and a different seed: a fresh run on either worker.
	body := strings.Replace(strings.Replace(example(t), `"width": 512`, `"width": 256`, 1), `"seed": 18446744073709551615`, `"seed": 42`, 1)
	code, out := b.post(t, "/v2/local/run", body)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "IN_QUEUE", out["status"])
	id := out["id"].(string)

	// Watch the record in Redis and the events, as a client would.
	var seen []proto.Status
	deadline := time.Now().Add(30 * time.Second)
	var last map[string]any
	for time.Now().Before(deadline) {
		if rec, err := b.store.Get(context.Background(), id); err == nil {
			seen = append(seen, rec.Status)
		}
		resp, err := http.Get(b.stack.Info.APIURL + "/v2/local/status/" + id)
		require.NoError(t, err)
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&last))
		resp.Body.Close()
		if last["status"] == "COMPLETED" || last["status"] == "FAILED" {
			break
		}
	}
	require.Equal(t, "COMPLETED", last["status"], "%v", last)
	images := last["output"].(map[string]any)["images"].([]any)
	requirePNG(t, images[0].(map[string]any), 256, 512)
	rec, err := b.store.Get(context.Background(), id)
	require.NoError(t, err)
	seen = append(seen, rec.Status)
	require.Equal(t, 1, rec.Attempt)
	require.NotEmpty(t, rec.WorkerID)
	require.NotContains(t, string(rec.Output), `"data":"iVBOR`, "no image bytes in Redis")
	// Whatever we sampled follows the state machine's order.
	order := []proto.Status{proto.StatusInQueue, proto.StatusInProgress, proto.StatusCompleted}
	seen = slices.Compact(seen)
	for i := 1; i < len(seen); i++ {
		require.Less(t, slices.Index(order, seen[i-1]), slices.Index(order, seen[i]), "transitions %v", seen)
	}

	// The events stream has the whole story, in order.
	cons, err := b.js.OrderedConsumer(context.Background(), proto.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{proto.JobEventSubjects(id)},
	})
	require.NoError(t, err)
	var statuses []proto.Status
	var progress int
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(500 * time.Millisecond))
		if err != nil {
			break
		}
		ev, err := proto.DecodeEvent(m.Data())
		require.NoError(t, err)
		switch ev.Type {
		case proto.EventStatus:
			statuses = append(statuses, ev.Status)
		case proto.EventProgress:
			progress++
			require.Equal(t, "3", ev.Progress.Node)
			require.Equal(t, int64(20), ev.Progress.Max)
		}
	}
	require.Equal(t, []proto.Status{proto.StatusInQueue, proto.StatusInProgress, proto.StatusCompleted}, slices.Compact(statuses))
	require.Positive(t, progress, "progress events were published")
}

// TestDevWorkerIDs: WORKER_ID is the prefix of the workers' ids, and every
// worker announces itself under its own.
func TestDevWorkerIDs(t *testing.T) {
	t.Parallel()
	b := setup(t, "WORKER_ID", "gpu-7")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		ws, err := b.store.Workers(context.Background())
		require.NoError(c, err)
		var ids []string
		for _, w := range ws {
			ids = append(ids, w.ID)
		}
		assert.ElementsMatch(c, []string{"gpu-7-1", "gpu-7-2"}, ids)
	}, 30*time.Second, 20*time.Millisecond)
}

// TestDevRemovesInputs: each worker of the dev stack has its emulator's
// input folder (as COMFYUI_INPUT_DIR), so a job's inputs are deleted from
// disk when it ends, not only emptied.
func TestDevRemovesInputs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, image.NewRGBA(image.Rect(0, 0, 8, 8))))
	in := `{"input":{"workflow":{"1":{"class_type":"LoadImage","inputs":{"image":"in.png"}},` +
		`"2":{"class_type":"SaveImage","inputs":{"filename_prefix":"x","images":["1",0]}}},` +
		`"images":[{"name":"in.png","image":"` + base64.StdEncoding.EncodeToString(buf.Bytes()) + `"}]}}`
	code, out := b.post(t, "/runsync", in)
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)

	// The status is written after the inputs are gone.
	sims, err := filepath.Glob(filepath.Join(b.dir, "comfysim-*", "input"))
	require.NoError(t, err)
	require.Len(t, sims, 2)
	for _, dir := range sims {
		err := filepath.WalkDir(filepath.Join(dir, "comfyfleet"), func(p string, d os.DirEntry, err error) error {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			require.NoError(t, err)
			require.True(t, d.IsDir(), "%s is left", p)
			return nil
		})
		require.NoError(t, err)
	}
}

// TestDevWithoutRoles: a stack without the dispatcher, the adapter and the
// workers is NATS and Redis alone, for a caller that runs those roles
// elsewhere: it serves no API, announces no worker and admits nothing.
func TestDevWithoutRoles(t *testing.T) {
	t.Parallel()
	rc, prefix := testenv.Redis(t)
	dir := t.TempDir()
	cfg := config(t, map[string]string{"COMFYFLEET_DIR": dir, "LISTEN_ADDR": "127.0.0.1:0", "COMFYFLEET_NATS_PORT": "-1",
		"REDIS_URL": testenv.RedisURL()})
	cfg.Common.KeyPrefix, cfg.Logger = prefix, zaptest.NewLogger(t)
	cfg.NoDispatcher, cfg.NoAdapter, cfg.NoWorkers = true, true, true
	stack, err := devstack.Start(testenv.Context(t, time.Minute), cfg)
	require.NoError(t, err)
	t.Cleanup(stack.Stop)
	require.Empty(t, stack.Info.APIURL, "no adapter, no API")
	require.Empty(t, stack.Info.ComfyUIURLs, "no workers, no emulators")
	require.NotEmpty(t, stack.Info.NATSURL)
	require.Nil(t, stack.Done(), "without the API there is no listener to fail")

	nc, err := nats.Connect(stack.Info.NATSURL)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	require.NoError(t, nc.Flush(), "NATS serves")
	ws, err := rdb.New(rc, rdb.Options{Prefix: prefix}).Workers(context.Background())
	require.NoError(t, err)
	require.Empty(t, ws, "no worker announced itself")
}

// TestEveryExampleRunsInDev: each request in examples/ (one per model
// variant of the worker image, and txt2img.json) runs on the dev stack as
// shipped: its emulators offer every variant's model files and node
// classes.
func TestEveryExampleRunsInDev(t *testing.T) {
	t.Parallel()
	b := setup(t)
	files, err := filepath.Glob("../../examples/*.json")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 7, "txt2img.json and one per model variant")
	for _, f := range files {
		body, err := os.ReadFile(f)
		require.NoError(t, err)
		// Smaller pictures than shipped: rendering seven megapixel PNGs
		// under the race detector takes most of a minute.
		body = bytes.ReplaceAll(body, []byte(`"width": 1024, "height": 1024`), []byte(`"width": 256, "height": 256`))
		var req struct {
			Input struct {
				Workflow map[string]struct {
					ClassType string         `json:"class_type"`
					Inputs    map[string]any `json:"inputs"`
				} `json:"workflow"`
			} `json:"input"`
		}
		require.NoError(t, json.Unmarshal(body, &req), f)
		prefix := req.Input.Workflow["9"].Inputs["filename_prefix"].(string)
		width := int(req.Input.Workflow["5"].Inputs["width"].(float64))

		code, out := b.post(t, "/runsync", string(body))
		require.Equal(t, http.StatusOK, code, "%s: %v", f, out)
		require.Equal(t, "COMPLETED", out["status"], "%s: %v", f, out)
		images := out["output"].(map[string]any)["images"].([]any)
		require.Len(t, images, 1, f)
		item := images[0].(map[string]any)
		require.Equal(t, prefix+"_00001_.png", item["filename"], f)
		data, err := base64.StdEncoding.DecodeString(item["data"].(string))
		require.NoError(t, err)
		img, err := png.Decode(bytes.NewReader(data))
		require.NoError(t, err, f)
		require.Equal(t, width, img.Bounds().Dx(), f)
	}
}

// TestDevServesMetrics: dev's API address serves every role's series on
// /metrics, in a format Prometheus parses: after a job, the fleet-wide
// totals, the worker's and the API's counters and the Go and process
// collectors are there, and the families without labels are served.
func TestDevServesMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code, out := b.post(t, "/runsync", example(t))
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "COMPLETED", out["status"])

	fams := metricstest.Scrape(t, b.stack.Info.APIURL+"/metrics")
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_worker_jobs_total", "status", "COMPLETED"))
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_jobs_admitted_total", "pool", "default", "lane", "interactive"))
	require.Eventually(t, func() bool {
		return metricstest.Scrape(t, b.stack.Info.APIURL+"/metrics").Series("comfyfleet_jobs_total", "status", "COMPLETED").GetCounter().GetValue() == 1
	}, 10*time.Second, 50*time.Millisecond, "the fleet-wide total, read from Redis at scrape time (cached 1 s)")
	require.Positive(t, fams.Value(t, "comfyfleet_api_requests_total", "method", "POST", "code", "200"))
	require.Positive(t, fams.Value(t, "comfyfleet_worker_gpu_idle_seconds_total"))
	require.Positive(t, fams.Value(t, "go_goroutines"))
	require.Positive(t, fams.Value(t, "process_resident_memory_bytes"))
	for _, name := range []string{"comfyfleet_dlq_size", "comfyfleet_intake_depth", "comfyfleet_submissions_duplicate_total",
		"comfyfleet_worker_retries_total", "comfyfleet_worker_gpu_idle_seconds_total"} {
		require.Contains(t, b.stack.Metrics.Names(), name)
		require.Contains(t, fams, name, "a family without labels is served from the start")
	}
}

// TestStreamCarriesPreviews: a job that asks for previews ("previews":
// true) gets its preview pictures on RunPod's /stream as chunks
// {"type":"preview","node","mime","data"} beside its progress, each once,
// while it runs; a job that does not ask gets none.
func TestStreamCarriesPreviews(t *testing.T) {
	t.Parallel()
	b := setup(t, "COMFYSIM_STEP_DELAY", "40ms")
	// 30 steps of 40 ms: previews throttled to one a second reach /stream.
	job := func(previews bool) string {
		body := strings.Replace(strings.Replace(example(t), `"width": 512`, `"width": 128`, 1), `"steps": 20`, `"steps": 30`, 1)
		if previews {
			body = strings.Replace(body, `"input": {`, `"input": {"previews": true,`, 1)
		} else {
			body = strings.Replace(body, `"seed": 18446744073709551615`, `"seed": 7`, 1) // not ComfyUI's cached run
		}
		code, out := b.post(t, "/run", body)
		require.Equal(t, http.StatusOK, code, "%v", out)
		return out["id"].(string)
	}
	drain := func(id string) (previews []map[string]any, progress int) {
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			code, out := b.post(t, "/stream/"+id+"?wait=2000", "")
			require.Equal(t, http.StatusOK, code, "%v", out)
			for _, c := range out["stream"].([]any) {
				chunk, _ := c.(map[string]any)["output"].(map[string]any)
				switch chunk["type"] {
				case "preview":
					previews = append(previews, chunk)
				case "progress":
					progress++
				}
			}
			if out["status"] == "COMPLETED" {
				return previews, progress
			}
			require.NotContains(t, []any{"FAILED", "CANCELLED", "TIMED_OUT"}, out["status"], "%v", out)
		}
		require.Fail(t, "job did not finish", id)
		return nil, 0
	}

	previews, progress := drain(job(true))
	require.Positive(t, progress)
	require.NotEmpty(t, previews, "the job's previews reach /stream")
	seen := map[string]bool{}
	for _, p := range previews {
		require.Equal(t, "image/jpeg", p["mime"])
		require.Equal(t, "3", p["node"], "the sampler's")
		data, err := base64.StdEncoding.DecodeString(p["data"].(string))
		require.NoError(t, err)
		_, format, err := image.DecodeConfig(bytes.NewReader(data))
		require.NoError(t, err, "a picture")
		require.Equal(t, "jpeg", format)
		require.False(t, seen[p["data"].(string)], "each preview is handed out once")
		seen[p["data"].(string)] = true
	}

	previews, progress = drain(job(false))
	require.Positive(t, progress)
	require.Empty(t, previews, "a job that did not ask for previews gets none")
}
