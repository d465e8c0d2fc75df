package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/metrics/metricstest"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// ckptJob is an interactive txt2img job on the given checkpoint.
func ckptJob(id, ckpt string) *proto.Job {
	nodes := fmt.Sprintf(`"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":%q}},
	"5":{"class_type":"EmptyLatentImage","inputs":{"width":64,"height":64,"batch_size":1}},
	"6":{"class_type":"CLIPTextEncode","inputs":{"text":"a cat","clip":["4",1]}},
	"7":{"class_type":"CLIPTextEncode","inputs":{"text":"blurry","clip":["4",1]}},
	"3":{"class_type":"KSampler","inputs":{"seed":1,"steps":2,"cfg":8,"sampler_name":"euler","scheduler":"normal","denoise":1,"model":["4",0],"positive":["6",0],"negative":["7",0],"latent_image":["5",0]}},
	"8":{"class_type":"VAEDecode","inputs":{"samples":["3",0],"vae":["4",2]}}`, ckpt) + save("9", id)
	return &proto.Job{ID: id, Input: json.RawMessage(input(nodes)), Source: proto.SourceAPI}
}

// worker returns a worker's heartbeat once ok holds for it.
func (b *bundle) heartbeat(id string, ok func(proto.Heartbeat) bool) proto.Heartbeat {
	b.t.Helper()
	var got proto.Heartbeat
	require.Eventually(b.t, func() bool {
		list, err := b.db.Workers(context.Background())
		if err != nil {
			return false
		}
		for _, w := range list {
			if w.ID == id && ok(w) {
				got = w
				return true
			}
		}
		return false
	}, 15*time.Second, 10*time.Millisecond, "heartbeat of %s", id)
	return got
}

// Workers report their models and their warm set, and a job whose models
// an idle worker holds warm runs there, although a cold worker is free
// too.
func TestWarmWorkerGetsTheJob(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Checkpoints: []string{"a.safetensors", "b.safetensors"}})
	b.startWorker("warm", worker.Config{})
	b.enqueueJob(ckptJob("first", "a.safetensors"))
	require.Equal(t, "warm", b.wait("first", proto.StatusCompleted).WorkerID)
	hb := b.heartbeat("warm", func(w proto.Heartbeat) bool { return w.State == proto.WorkerIdle && len(w.Warm) > 0 })
	require.Equal(t, []string{"a.safetensors"}, hb.Warm)
	require.Equal(t, []string{"a.safetensors", "b.safetensors"}, hb.Models["ckpt_name"])

	b.startWorker("cold", worker.Config{})
	b.heartbeat("cold", func(w proto.Heartbeat) bool { return w.State == proto.WorkerIdle && w.Models != nil })
	for i := range 6 {
		id := fmt.Sprintf("warm-%d", i)
		b.enqueueJob(ckptJob(id, "a.safetensors"))
		require.Equal(t, "warm", b.wait(id, proto.StatusCompleted).WorkerID, id)
		b.heartbeat("warm", func(w proto.Heartbeat) bool { return w.State == proto.WorkerIdle })
	}

	// A job on another checkpoint runs where it lands, and makes that
	// worker warm for it.
	b.enqueueJob(ckptJob("other", "b.safetensors"))
	rec := b.wait("other", proto.StatusCompleted)
	hb = b.heartbeat(rec.WorkerID, func(w proto.Heartbeat) bool { return slices.Equal(w.Warm, []string{"b.safetensors"}) })
	require.Equal(t, []string{"b.safetensors"}, hb.Warm)
}

// A warm worker that looks idle but never takes the job (its heartbeat
// outlived it) delays the job by a few hand-backs, never strands it.
func TestHandBackIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Checkpoints: []string{"a.safetensors"}})
	require.NoError(t, b.db.Beat(context.Background(), proto.Heartbeat{ID: "ghost", Pool: proto.DefaultPool, State: proto.WorkerIdle, Warm: []string{"a.safetensors"}}))
	b.startWorker("cold", worker.Config{})
	b.enqueueJob(ckptJob("next", "a.safetensors"))
	require.Equal(t, "cold", b.wait("next", proto.StatusCompleted).WorkerID)
}

// The warm set is what ComfyUI holds: a worker that frees ComfyUI's models
// after each job (REFRESH_WORKER) reports none warm after it, and the
// emulator, which keeps one job's models in VRAM, holds none either.
func TestRefreshForgetsWarm(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Checkpoints: []string{"a.safetensors"}})
	b.startWorker("fresh", worker.Config{RefreshWorker: true})
	b.enqueueJob(ckptJob("freed", "a.safetensors"))
	b.wait("freed", proto.StatusCompleted)
	done := time.Now()
	hb := b.heartbeat("fresh", func(w proto.Heartbeat) bool { return w.State == proto.WorkerIdle && w.UpdatedAt.After(done) })
	require.Empty(t, hb.Warm)
	require.Eventually(t, func() bool { return len(b.sim.Stats().LoadedModels) == 0 }, 10*time.Second, time.Millisecond)
	require.EqualValues(t, 1, b.sim.Stats().ModelLoads)
}

// modelURLJob is ckptJob that also names models by URL in input.models,
// which the worker's model cache fetches (models_test.go); no node reads
// them, so the routing is all it tests.
func modelURLJob(id, ckpt string, urls ...string) *proto.Job {
	job := ckptJob(id, ckpt)
	var refs []string
	for _, u := range urls {
		refs = append(refs, fmt.Sprintf(`{"url":%q,"folder":"loras"}`, u))
	}
	var in map[string]json.RawMessage
	if err := json.Unmarshal(job.Input, &in); err != nil {
		panic(err)
	}
	in["models"] = json.RawMessage("[" + strings.Join(refs, ",") + "]")
	job.Input, _ = json.Marshal(in)
	return job
}

// scrape parses a registry's series.
func scrape(t *testing.T, reg *metrics.Registry) metricstest.Families {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, reg.Write(context.Background(), &buf))
	return metricstest.Parse(t, &buf)
}

// counted is a counter's value, 0 while it has no series.
func counted(fams metricstest.Families, name string, labels ...string) float64 {
	if s := fams.Series(name, labels...); s != nil {
		return s.GetCounter().GetValue()
	}
	return 0
}

// A worker's heartbeat reports its model cache (Deps.Models), and
// a job naming by URL a model one idle worker has on disk runs there,
// although another, cold one is free too. Neither is warm for the LoRAs:
// each job names another one.
func TestCachedWorkerGetsURLJob(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Checkpoints: []string{"a.safetensors"}})
	const jobs = 6
	ids := make([]int, jobs)
	for i := range ids {
		ids[i] = i
	}
	m := newModels(t)
	disk := m.holding(ids...)
	reg := metrics.NewRegistry()
	b.startWorker("disk", worker.Config{}, workerOpts{deps: func(d *worker.Deps) { d.Models, d.Metrics = disk, worker.NewMetrics(reg) }})
	b.startWorker("empty", worker.Config{}, withCache(m.cache("")))
	hb := b.heartbeat("disk", func(w proto.Heartbeat) bool {
		return w.State == proto.WorkerIdle && w.Models != nil && len(w.Cached) == jobs
	})
	require.Equal(t, disk.List(), hb.Cached)
	require.Equal(t, strings.TrimSuffix(m.lora(0), "?token=s3cret"), hb.Cached[0].URL, "the heartbeat carries no token")
	b.heartbeat("empty", func(w proto.Heartbeat) bool { return w.State == proto.WorkerIdle && w.Models != nil && w.Cached == nil })

	for i := range jobs {
		id := fmt.Sprintf("url-%d", i)
		b.enqueueJob(modelURLJob(id, "a.safetensors", m.lora(i)))
		require.Equal(t, "disk", b.wait(id, proto.StatusCompleted).WorkerID, id)
		b.heartbeat("disk", func(w proto.Heartbeat) bool { return w.State == proto.WorkerIdle })
	}
	for i := range jobs {
		require.Equal(t, 1, m.srv.Gets(fmt.Sprintf("/lora-%d.safetensors", i)), "no job downloaded its LoRA again")
	}
	// The warm set holds the last job's checkpoint, its LoRA's key and
	// the cached file's name.
	key := proto.ModelURLKey(m.lora(5))
	var file string
	for _, c := range disk.List() {
		if c.URL == key {
			file = c.File
		}
	}
	require.Regexp(t, `^lora-5-[0-9a-f]{12}\.safetensors$`, file)
	hb = b.heartbeat("disk", func(w proto.Heartbeat) bool { return slices.Contains(w.Warm, file) })
	require.Equal(t, []string{"a.safetensors", key, file}, hb.Warm)
	require.Equal(t, float64(jobs), counted(scrape(t, reg), "comfyfleet_worker_routed_jobs_total", "tier", "cached"))
	require.Equal(t, float64(jobs), counted(scrape(t, reg), "comfyfleet_worker_model_fetches_total", "result", "cached"))
}

// A worker that holds a job's model by URL warm beats one that has it on
// disk only.
func TestWarmBeatsCached(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Checkpoints: []string{"a.safetensors"}})
	m := newModels(t)
	b.startWorker("warm", worker.Config{}, withCache(m.holding(7)))
	b.enqueueJob(modelURLJob("first", "a.safetensors", m.lora(7)))
	require.Equal(t, "warm", b.wait("first", proto.StatusCompleted).WorkerID)
	b.heartbeat("warm", func(w proto.Heartbeat) bool {
		return w.State == proto.WorkerIdle && slices.Contains(w.Warm, proto.ModelURLKey(m.lora(7)))
	})

	reg := metrics.NewRegistry()
	other := m.holding(7)
	b.startWorker("disk", worker.Config{}, workerOpts{deps: func(d *worker.Deps) { d.Models, d.Metrics = other, worker.NewMetrics(reg) }})
	b.heartbeat("disk", func(w proto.Heartbeat) bool {
		return w.State == proto.WorkerIdle && w.Models != nil && len(w.Cached) == 1
	})
	for i := range 6 {
		id := fmt.Sprintf("warm-%d", i)
		b.enqueueJob(modelURLJob(id, "a.safetensors", m.lora(7)))
		require.Equal(t, "warm", b.wait(id, proto.StatusCompleted).WorkerID, id)
		b.heartbeat("warm", func(w proto.Heartbeat) bool { return w.State == proto.WorkerIdle })
	}
	fams := scrape(t, reg)
	require.Zero(t, counted(fams, "comfyfleet_worker_routed_jobs_total", "tier", "cached"), "the cached worker ran none")
	require.Zero(t, counted(fams, "comfyfleet_worker_handbacks_total", "to", "cached"))
}

// With no worker holding a job's model by URL, any worker runs it at
// once: nobody hands it back.
func TestColdURLJobRunsAnywhere(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Checkpoints: []string{"a.safetensors"}})
	regs := map[string]*metrics.Registry{"one": metrics.NewRegistry(), "two": metrics.NewRegistry()}
	m := newModels(t)
	for id, reg := range regs {
		cache := m.holding(100 + len(id))
		b.startWorker(id, worker.Config{}, workerOpts{deps: func(d *worker.Deps) { d.Models, d.Metrics = cache, worker.NewMetrics(reg) }})
		b.heartbeat(id, func(w proto.Heartbeat) bool { return w.State == proto.WorkerIdle && w.Models != nil })
	}
	for i := range 4 {
		id := fmt.Sprintf("cold-%d", i)
		b.enqueueJob(modelURLJob(id, "a.safetensors", m.lora(i)))
		b.wait(id, proto.StatusCompleted)
	}
	b.requireDrained()
	var cold float64
	for id, reg := range regs {
		fams := scrape(t, reg)
		cold += counted(fams, "comfyfleet_worker_routed_jobs_total", "tier", "cold")
		require.Zero(t, counted(fams, "comfyfleet_worker_handbacks_total", "to", "cached"), id)
		require.Zero(t, counted(fams, "comfyfleet_worker_handbacks_total", "to", "warm"), id)
	}
	require.Equal(t, 4.0, cold)
}

// A worker that looks idle and has the job's model on disk but never
// takes the job (its heartbeat outlives it) costs the job the bounded
// hand-backs, then the cold worker runs it.
func TestHandBackToCachedIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Checkpoints: []string{"a.safetensors"}})
	m := newModels(t)
	ghost := proto.Heartbeat{ID: "ghost", Pool: proto.DefaultPool, State: proto.WorkerIdle, Cached: []proto.CachedModel{{
		URL: proto.ModelURLKey(m.lora(3)), Folder: "loras", File: "lora-3-000000000003.safetensors"}}}
	ctx := ctxT(t)
	require.NoError(t, b.db.Beat(ctx, ghost))
	// Keep the ghost's heartbeat alive however slow the machine is.
	go func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				_ = b.db.Beat(ctx, ghost)
			}
		}
	}()
	reg := metrics.NewRegistry()
	cache := m.cache("")
	b.startWorker("cold", worker.Config{}, workerOpts{deps: func(d *worker.Deps) { d.Models, d.Metrics = cache, worker.NewMetrics(reg) }})
	b.enqueueJob(modelURLJob("next", "a.safetensors", m.lora(3)))
	rec := b.wait("next", proto.StatusCompleted)
	require.Equal(t, "cold", rec.WorkerID)
	require.Equal(t, 1, rec.Attempt, "hand-backs count no attempt")
	fams := scrape(t, reg)
	require.Equal(t, 3.0, counted(fams, "comfyfleet_worker_handbacks_total", "to", "cached"), "handed back warmDefers times, then run")
	require.Equal(t, 1.0, counted(fams, "comfyfleet_worker_routed_jobs_total", "tier", "cold"))
}
