package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/modelcache"
	"github.com/comfyfleet/comfyfleet/internal/modelcache/modeltest"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// models is a loopback model file server and what a worker's model cache
// needs to reach it: the guard's settings allow it, as MODEL_URL_ALLOW
// and MODEL_URL_ALLOW_HTTP would.
type models struct {
	t   *testing.T
	srv *modeltest.Server
}

func newModels(t *testing.T) *models { return &models{t: t, srv: modeltest.New(t)} }

// lora serves the i-th test LoRA and returns its URL, with a token in the
// query that nothing the fleet stores or publishes may carry.
func (m *models) lora(i int) string {
	return m.srv.Put(fmt.Sprintf("/lora-%d.safetensors", i), modeltest.File(fmt.Sprintf("lora-%d", i), 64<<10)) + "?token=s3cret"
}

// cache opens a model cache over dir (a new folder when ""), closed at
// the test's end.
func (m *models) cache(dir string, edit ...func(*modelcache.Config)) *modelcache.Cache {
	m.t.Helper()
	if dir == "" {
		dir = m.t.TempDir()
	}
	g, err := ssrf.New(ssrf.Config{Use: "model URL", Allow: []string{m.srv.Hostport()}, AllowHTTP: true,
		AllowSetting: "MODEL_URL_ALLOW", HTTPSetting: "MODEL_URL_ALLOW_HTTP"})
	require.NoError(m.t, err)
	m.t.Cleanup(g.Close)
	cfg := modelcache.Config{ModelsDir: dir, Guard: g, Logger: zaptest.NewLogger(m.t), ProgressEvery: time.Millisecond}
	for _, e := range edit {
		e(&cfg)
	}
	c, err := modelcache.Open(cfg)
	require.NoError(m.t, err)
	m.t.Cleanup(c.Close)
	return c
}

// holding opens a cache that already holds the given LoRAs, as a worker
// that ran jobs naming them would.
func (m *models) holding(ids ...int) *modelcache.Cache {
	c := m.cache("")
	for _, i := range ids {
		h, err := c.Fetch(context.Background(), modelcache.Request{URL: m.lora(i), Folder: "loras"}, nil)
		require.NoError(m.t, err)
		h.Release()
	}
	return c
}

// withCache gives a worker the model cache c.
func withCache(c *modelcache.Cache) workerOpts {
	return workerOpts{deps: func(d *worker.Deps) { d.Models = c }}
}

// urlJob is a txt2img job whose checkpoint and LoRA are named by URL in
// their loader inputs, with more top-level input fields.
func byURLJob(id, ckpt, lora string, fields ...string) *proto.Job {
	nodes := fmt.Sprintf(`"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":%q}},
	"10":{"class_type":"LoraLoader","inputs":{"model":["4",0],"clip":["4",1],"lora_name":%q,"strength_model":0.8,"strength_clip":1}},
	"5":{"class_type":"EmptyLatentImage","inputs":{"width":64,"height":64,"batch_size":1}},
	"6":{"class_type":"CLIPTextEncode","inputs":{"text":"a cat","clip":["10",1]}},
	"7":{"class_type":"CLIPTextEncode","inputs":{"text":"blurry","clip":["10",1]}},
	"3":{"class_type":"KSampler","inputs":{"seed":18446744073709551615,"steps":2,"cfg":8,"sampler_name":"euler","scheduler":"normal","denoise":1,"model":["10",0],"positive":["6",0],"negative":["7",0],"latent_image":["5",0]}},
	"8":{"class_type":"VAEDecode","inputs":{"samples":["3",0],"vae":["4",2]}}`, ckpt, lora) + save("9", id)
	return &proto.Job{ID: id, Input: json.RawMessage(input(nodes, fields...)), Source: proto.SourceAPI}
}

// A LoRA and a checkpoint named by URL are fetched into the folders
// ComfyUI reads (the emulator's models folder), the workflow is rewritten
// to their cached names, and the job completes; its events carry the
// download's progress, and no token reaches the events, the record or
// the heartbeat.
func TestLoraAndCheckpointByURL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, ModelsDir: dir})
	m := newModels(t)
	ckptData := modeltest.File("ckpt", 3<<20)
	ckpt := m.srv.Put("/models/sd15 tuned.safetensors", ckptData) + "?X-Amz-Signature=s3cret"
	lora := m.lora(1)
	cache := m.cache(dir)
	b.startWorker("w", worker.Config{}, withCache(cache))
	events := b.watch("by-url")
	b.enqueueJob(byURLJob("by-url", ckpt, lora, `"models":[{"url":"`+lora+`","folder":"loras","headers":{"X-Api-Key":"hdr-s3cret"}}]`))
	rec := b.wait("by-url", proto.StatusCompleted)
	require.Equal(t, 1, rec.Attempt)

	ckptFile := "sd15_tuned-" + modeltest.SHA256(ckptData)[:12] + ".safetensors"
	got, err := os.ReadFile(filepath.Join(dir, "checkpoints", ckptFile))
	require.NoError(t, err)
	require.Equal(t, ckptData, got)
	prompts := promptIDs(b.sim)
	require.Len(t, prompts, 1)
	wf := b.storedPrompt(prompts[0])
	require.Equal(t, ckptFile, wf["4"].(map[string]any)["inputs"].(map[string]any)["ckpt_name"])
	loraFile := wf["10"].(map[string]any)["inputs"].(map[string]any)["lora_name"].(string)
	require.Regexp(t, `^lora-1-[0-9a-f]{12}\.safetensors$`, loraFile)
	require.FileExists(t, filepath.Join(dir, "loras", loraFile))
	require.Equal(t, 1, m.srv.Gets("/lora-1.safetensors"), "one download for the loader input and the input.models entry")
	sent := 0
	for _, h := range m.srv.Headers() {
		if h.Get("X-Api-Key") == "hdr-s3cret" {
			sent++
		}
	}
	require.Equal(t, 1, sent, "the entry's headers go with its own URL only")

	// Progress of phase download, by URL key, up to the file's size.
	var last map[string]any
	for _, ev := range events.ofType(string(proto.EventProgress)) {
		if p, ok := ev["progress"].(map[string]any); ok && p["phase"] == proto.PhaseDownload && p["node"] == "4" {
			last = p
		}
	}
	require.NotNil(t, last, "download progress events: %s", events.raw())
	require.Equal(t, proto.ModelURLKey(ckpt), last["url"])
	require.EqualValues(t, len(ckptData), last["value"])
	require.EqualValues(t, 100, last["percent"])

	hb := b.heartbeat("w", func(w proto.Heartbeat) bool { return len(w.Cached) == 2 })
	raw, _ := json.Marshal(hb)
	for _, where := range []string{events.raw(), string(raw), fmt.Sprint(rec)} {
		require.NotContains(t, where, "s3cret", "no secret of the URL or the headers")
	}
}

// Ten jobs in hand at once that name one URL cause one download; a job
// after them causes none.
func TestConcurrentJobsShareOneDownload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, ModelsDir: dir})
	m := newModels(t)
	lora := m.lora(2)
	reg := metrics.NewRegistry()
	cache := m.cache(dir)
	b.startWorker("w", worker.Config{Prefetch: 9}, workerOpts{deps: func(d *worker.Deps) { d.Models, d.Metrics = cache, worker.NewMetrics(reg) }})
	release := m.srv.Hold()
	defer release()
	ids := make([]string, 10)
	for i := range ids {
		ids[i] = fmt.Sprintf("many-%d", i)
		b.enqueueJob(byURLJob(ids[i], comfysim.DefaultCheckpoint, lora))
	}
	// All ten wait on the one download, which waits on the server.
	require.Eventually(t, func() bool { return cache.Downloading()[proto.ModelURLKey(lora)] == 10 }, 20*time.Second, time.Millisecond)
	require.Equal(t, 1, m.srv.Gets("/lora-2.safetensors"))
	release()
	for _, id := range ids {
		b.wait(id, proto.StatusCompleted)
	}
	require.Equal(t, 1, m.srv.Gets("/lora-2.safetensors"), "one download for ten jobs")
	require.Equal(t, 10.0, counted(scrape(t, reg), "comfyfleet_worker_model_fetches_total", "result", "downloaded"))

	b.enqueueJob(byURLJob("again", comfysim.DefaultCheckpoint, lora))
	b.wait("again", proto.StatusCompleted)
	require.Equal(t, 1, m.srv.Gets("/lora-2.safetensors"), "the second job on the worker downloads nothing")
	require.Equal(t, 1.0, counted(scrape(t, reg), "comfyfleet_worker_model_fetches_total", "result", "cached"))
}

// Under a budget for one LoRA, the LoRA of the prompt ComfyUI runs is
// not evicted for the next job's; once the jobs end, the least recently
// used one goes.
func TestEvictionSparesModelsInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := setup(t, comfysim.Config{StepDelay: 20 * time.Millisecond, ModelsDir: dir})
	m := newModels(t)
	cache := m.cache(dir, func(c *modelcache.Config) { c.Budget = 100 << 10 }) // one 64 KiB LoRA
	b.startWorker("w", worker.Config{Prefetch: 1}, withCache(cache))
	slow := byURLJob("slow", comfysim.DefaultCheckpoint, m.lora(3))
	slow.Input = json.RawMessage(strings.Replace(string(slow.Input), `"steps":2`, `"steps":40`, 1))
	b.enqueueJob(slow)
	b.wait("slow", proto.StatusInProgress)
	require.Eventually(t, func() bool { return b.sim.Stats().Running != "" }, 10*time.Second, time.Millisecond)
	b.enqueueJob(byURLJob("next", comfysim.DefaultCheckpoint, m.lora(4)))
	// The second LoRA arrives while the first one's prompt runs: both
	// stay, over the budget.
	require.Eventually(t, func() bool { return len(cache.List()) == 2 }, 20*time.Second, time.Millisecond)
	require.Equal(t, proto.StatusInProgress, b.wait("slow", proto.StatusInProgress).Status)
	b.wait("slow", proto.StatusCompleted)
	b.wait("next", proto.StatusCompleted)
	// Both released: back within the budget, the older one gone.
	require.Eventually(t, func() bool { return len(cache.List()) == 1 }, 10*time.Second, time.Millisecond)
	require.Equal(t, proto.ModelURLKey(m.lora(4)), cache.List()[0].URL)
	require.LessOrEqual(t, cache.Size(), int64(100<<10))
}

// A download that cannot succeed fails the job at once, naming the URL
// (without its secrets) and why; it is not retried.
func TestModelFailuresAreFinal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, ModelsDir: dir})
	m := newModels(t)
	good := m.lora(5)
	host := m.srv.Hostport()
	b.startWorker("w", worker.Config{RetryDelay: time.Millisecond}, withCache(m.cache(dir)))
	for _, tc := range []struct {
		id, lora, fields, want string
	}{
		{"mismatch", good, `"models":[{"url":"` + good + `","folder":"loras","sha256":"` + strings.Repeat("0", 64) + `"}]`,
			"Failed to fetch model http://" + host + "/lora-5.safetensors?…: sha256 mismatch"},
		{"missing", "http://" + host + "/gone.safetensors?token=s3cret", "", "Failed to fetch model http://" + host + "/gone.safetensors?…: not found (HTTP 404 Not Found)"},
		{"refused", "http://10.9.8.7/x.safetensors?token=s3cret", "", "10.9.8.7:80 is a private address (MODEL_URL_ALLOW lists exceptions)"},
	} {
		var fields []string
		if tc.fields != "" {
			fields = append(fields, tc.fields)
		}
		b.enqueueJob(byURLJob(tc.id, comfysim.DefaultCheckpoint, tc.lora, fields...))
		rec := b.wait(tc.id, proto.StatusFailed)
		require.Equal(t, 1, rec.Attempt, "%s: not retried", tc.id)
		require.Contains(t, rec.Error, tc.want)
		require.NotContains(t, rec.Error+string(rec.Output), "s3cret")
	}
	require.Empty(t, promptIDs(b.sim), "no prompt was queued")
	ents, _ := os.ReadDir(filepath.Join(dir, "loras"))
	require.Empty(t, ents, "nothing of the failed downloads is visible")
}

// A worker without a model cache fails a job naming a model by URL with
// a message saying what to set.
func TestNoModelCache(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startWorker("w", worker.Config{})
	b.enqueueJob(byURLJob("nocache", comfysim.DefaultCheckpoint, "https://models.example/l.safetensors?token=s3cret"))
	rec := b.wait("nocache", proto.StatusFailed)
	require.Contains(t, rec.Error, "COMFYUI_MODELS_DIR")
	require.Contains(t, string(rec.Output), "https://models.example/l.safetensors?…")
	require.NotContains(t, string(rec.Output), "s3cret")
}

// The cache outlives the worker: a new worker process over the same
// folders downloads nothing for a model the last one fetched.
func TestWorkerRestartKeepsTheCache(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, ModelsDir: dir})
	m := newModels(t)
	lora := m.lora(6)
	first := m.cache(dir)
	w := b.startWorker("before", worker.Config{}, withCache(first))
	b.enqueueJob(byURLJob("one", comfysim.DefaultCheckpoint, lora))
	b.wait("one", proto.StatusCompleted)
	w.Stop()
	first.Close()

	b.startWorker("after", worker.Config{}, withCache(m.cache(dir)))
	b.heartbeat("after", func(h proto.Heartbeat) bool { return len(h.Cached) == 1 && h.State == proto.WorkerIdle })
	b.enqueueJob(byURLJob("two", comfysim.DefaultCheckpoint, lora))
	require.Equal(t, "after", b.wait("two", proto.StatusCompleted).WorkerID)
	require.Equal(t, 1, m.srv.Gets("/lora-6.safetensors"))
}

// A download cut midway leaves no file ComfyUI lists; the job is retried
// and the next attempt resumes the download where it stopped.
func TestKilledModelDownloadResumes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, ModelsDir: dir})
	m := newModels(t)
	data := modeltest.File("big", 4<<20)
	u := m.srv.Put("/big.safetensors", data)
	m.srv.CutAfter("/big.safetensors", 1<<20)
	b.startWorker("w", worker.Config{RetryDelay: time.Millisecond}, withCache(m.cache(dir)))
	b.enqueueJob(&proto.Job{ID: "cut", Source: proto.SourceAPI, Input: json.RawMessage(input(sampler("1", 2)+save("9", "cut"),
		`"models":[{"url":"`+u+`","folder":"checkpoints","sha256":"`+modeltest.SHA256(data)+`"}]`))})
	rec := b.wait("cut", proto.StatusCompleted)
	require.Equal(t, 2, rec.Attempt, "the cut download failed the first attempt as transient")
	require.Equal(t, 1, m.srv.Ranges("/big.safetensors"), "the second attempt resumed it")
	name := "big-" + modeltest.SHA256(data)[:12] + ".safetensors"
	got, err := os.ReadFile(filepath.Join(dir, "checkpoints", name))
	require.NoError(t, err)
	require.Equal(t, data, got)
	ents, err := os.ReadDir(filepath.Join(dir, "checkpoints"))
	require.NoError(t, err)
	require.Len(t, ents, 1, "only the finished file is in the folder")
}
