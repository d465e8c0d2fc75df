package dispatch_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func ckptWorkflow(ckpt string) string {
	return `{"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"` + ckpt + `"}},` +
		`"10":{"class_type":"LoraLoader","inputs":{"lora_name":"detail.safetensors","model":["4",0],"clip":["4",1]}}}`
}

func TestAdmissionRefusesJobWhoseModelsNoWorkerHas(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	rdb, prefix := testenv.Redis(t)
	reg := fleet.NewRegistry(rdb, prefix, time.Minute)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, reg.Beat(ctx, fleet.Worker{ID: "w1", Pool: proto.DefaultPool, State: fleet.StateIdle,
		Models: map[string][]string{"ckpt_name": {"a.safetensors", "b.safetensors"}, "lora_name": {"detail.safetensors"}}}))
	require.NoError(t, reg.Beat(ctx, fleet.Worker{ID: "w2", Pool: proto.DefaultPool, State: fleet.StateInitializing})) // reports nothing yet
	nc, _ := b.nats.Connect(t)
	q, err := queue.New(nc)
	require.NoError(t, err)
	m := dispatch.NewMetrics(newRegistry(), nil)
	d, err := dispatch.New(dispatch.Config{FetchWait: 200 * time.Millisecond}, q, b.store, zaptest.NewLogger(t))
	require.NoError(t, err)
	d.SetAdmission(dispatch.Admission{Models: dispatch.NewModelCheck(dispatch.ModelCheckConfig{CacheFor: time.Millisecond}, reg, b.store), Metrics: m})
	require.NoError(t, d.Start(ctx))
	t.Cleanup(d.Stop)

	tests := []struct {
		name, id, body string
		want           proto.Status
		wantErr        []string
	}{
		{name: "models present", id: "ok-1", body: `{"id":"ok-1","input":{"workflow":` + ckptWorkflow("b.safetensors") + `}}`, want: proto.StatusInQueue},
		{name: "no model loaders", id: "ok-2", body: `{"id":"ok-2","input":{"workflow":{"1":{"class_type":"LoadImage","inputs":{"image":"x.png"}}}}}`, want: proto.StatusInQueue},
		{name: "pool without reporting workers", id: "ok-3", body: `{"id":"ok-3","pool":"other","input":{"workflow":` + ckptWorkflow("zzz.safetensors") + `}}`, want: proto.StatusInQueue},
		{name: "missing checkpoint", id: "bad-1", body: `{"id":"bad-1","input":{"workflow":` + ckptWorkflow("zzz.safetensors") + `}}`, want: proto.StatusFailed,
			wantErr: []string{`no worker of pool "default" has ckpt_name "zzz.safetensors"`, "Available checkpoint models: a.safetensors, b.safetensors", "Available lora_name models: detail.safetensors"}},
	}
	for _, tt := range tests {
		b.submit(t, proto.SourceAPI, tt.body, tt.id)
		rec := b.waitRecord(t, tt.id, func(r *proto.Record) bool { return r.Status == tt.want })
		for _, w := range tt.wantErr {
			require.Contains(t, rec.Error, w, tt.name)
		}
	}
	require.Eventually(t, func() bool { return b.streamMsgs(t, proto.JobsStream) == 3 }, 5*time.Second, 10*time.Millisecond, "the refused job never reaches a worker")
}

// A redelivered submission of a job a worker already runs is not refused,
// even though the fleet no longer has its models: that would fail a
// running job.
func TestModelCheckLeavesRunningJobAlone(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	rdb, prefix := testenv.Redis(t)
	reg := fleet.NewRegistry(rdb, prefix, time.Minute)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, reg.Beat(ctx, fleet.Worker{ID: "w1", Pool: proto.DefaultPool, State: fleet.StateRunning,
		Models: map[string][]string{"ckpt_name": {"a.safetensors"}}}))
	job := &proto.Job{ID: "running-1", Source: proto.SourceAPI}
	job.Place(proto.DefaultPool, time.Now())
	_, _, err := b.store.Create(ctx, status.ParamsFor(job))
	require.NoError(t, err)
	_, _, err = b.store.Claim(ctx, "running-1", "w0")
	require.NoError(t, err)

	d, err := dispatch.New(dispatch.Config{FetchWait: 200 * time.Millisecond}, b.q, b.store, zaptest.NewLogger(t))
	require.NoError(t, err)
	d.SetAdmission(dispatch.Admission{Models: dispatch.NewModelCheck(dispatch.ModelCheckConfig{}, reg, b.store)})
	require.NoError(t, d.Start(ctx))
	t.Cleanup(d.Stop)
	b.submit(t, proto.SourceAPI, `{"id":"running-1","input":{"workflow":`+ckptWorkflow("gone.safetensors")+`}}`, "running-1")
	require.Eventually(t, func() bool { return b.streamMsgs(t, proto.SubmitStream) == 0 }, 10*time.Second, 10*time.Millisecond)
	rec, err := b.store.Get(ctx, "running-1")
	require.NoError(t, err)
	require.Equal(t, proto.StatusInProgress, rec.Status)
}

func TestModelCheckCachesTheFleet(t *testing.T) {
	t.Parallel()
	calls := 0
	c := dispatch.NewModelCheck(dispatch.ModelCheckConfig{CacheFor: time.Hour}, listerFunc(func(context.Context) ([]fleet.Worker, error) {
		calls++
		return []fleet.Worker{{ID: "w", Pool: "p", Models: map[string][]string{"ckpt_name": {"a"}}}}, nil
	}), nil)
	job := &proto.Job{Pool: "p"}
	in := &proto.Input{Workflow: []byte(ckptWorkflow("a"))}
	for range 3 {
		reject, err := c.Check(context.Background(), job, in)
		require.NoError(t, err)
		require.Contains(t, reject, "lora_name") // detail.safetensors is nowhere
	}
	require.Equal(t, 1, calls)
}

type listerFunc func(context.Context) ([]fleet.Worker, error)

func (f listerFunc) List(ctx context.Context) ([]fleet.Worker, error) { return f(ctx) }
