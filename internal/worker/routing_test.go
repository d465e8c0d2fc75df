package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
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
