package rdb_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestBeatListRemove(t *testing.T) {
	t.Parallel()
	client, prefix := testenv.Redis(t)
	r := rdb.New(client, rdb.Options{Prefix: prefix, WorkerTTL: time.Minute})
	ctx := testenv.Context(t, 10*time.Second)
	w := proto.Heartbeat{ID: "w1", Pool: "p", State: proto.WorkerRunning, JobID: "j", ComfyUIVersion: "0.3.40",
		Device: "cuda:0", VRAMTotal: 100, VRAMFree: 40, Progress: 0.25,
		Models: map[string][]string{"ckpt_name": {"a.safetensors", "b.safetensors"}}, Warm: []string{"a.safetensors"},
		Cached:    []proto.CachedModel{{URL: "https://hf.example/x/lora.safetensors", SHA256: "ab12", Folder: "loras", File: "lora-ab12.safetensors"}},
		LastError: "boom", Paused: []string{"p/batch"},
		UpdatedAt: time.UnixMilli(time.Now().UnixMilli())}
	require.NoError(t, r.Beat(ctx, w))
	list, err := r.Workers(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, w.UpdatedAt.UnixMilli(), list[0].UpdatedAt.UnixMilli())
	list[0].UpdatedAt = w.UpdatedAt
	require.Equal(t, w, list[0])

	// A beat without models clears them.
	require.NoError(t, r.Beat(ctx, proto.Heartbeat{ID: "w1", Pool: "p", State: proto.WorkerIdle}))
	list, err = r.Workers(ctx)
	require.NoError(t, err)
	require.Nil(t, list[0].Models)
	require.NoError(t, r.RemoveWorker(ctx, "w1"))
	list, err = r.Workers(ctx)
	require.NoError(t, err)
	require.Empty(t, list)
}

func TestExpiredWorkerDisappears(t *testing.T) {
	t.Parallel()
	client, prefix := testenv.Redis(t)
	r := rdb.New(client, rdb.Options{Prefix: prefix, WorkerTTL: 50 * time.Millisecond})
	require.NoError(t, r.Beat(context.Background(), proto.Heartbeat{ID: "gone", State: proto.WorkerIdle}))
	require.Eventually(t, func() bool {
		list, err := r.Workers(context.Background())
		return err == nil && len(list) == 0
	}, 5*time.Second, 10*time.Millisecond)
}
