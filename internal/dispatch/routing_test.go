package dispatch_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
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
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, b.db.Beat(ctx, proto.Heartbeat{ID: "w1", Pool: proto.DefaultPool, State: proto.WorkerIdle,
		Models: map[string][]string{"ckpt_name": {"a.safetensors", "b.safetensors"}, "lora_name": {"detail.safetensors"}}}))
	require.NoError(t, b.db.Beat(ctx, proto.Heartbeat{ID: "w2", Pool: proto.DefaultPool, State: proto.WorkerInitializing})) // reports nothing yet
	reg := newRegistry()
	m := dispatch.NewMetrics(reg, nil)
	b.start(t, dispatch.Admission{Models: dispatch.NewModelCheck(dispatch.ModelCheckConfig{CacheFor: time.Millisecond}, b.db), Metrics: m})

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
	var buf bytes.Buffer
	require.NoError(t, reg.Write(ctx, &buf))
	require.Contains(t, buf.String(), `comfyfleet_admission_failures_total{reason="no_models"} 1`)
}

// A model named by URL is fetched where the job runs, so no worker lists
// it yet: admission admits a job that names one in a loader input or in
// input.models, and still refuses a missing model named by file.
func TestAdmissionAdmitsModelsByURL(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, b.db.Beat(ctx, proto.Heartbeat{ID: "w1", Pool: proto.DefaultPool, State: proto.WorkerIdle,
		Models: map[string][]string{"ckpt_name": {"a.safetensors"}, "lora_name": {"detail.safetensors"}}}))
	b.start(t, dispatch.Admission{Models: dispatch.NewModelCheck(dispatch.ModelCheckConfig{CacheFor: time.Millisecond}, b.db)})

	const lora = `https://hf.example/acme/styles/resolve/main/ink.safetensors?download=true`
	urlLora := `{"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"CKPT"}},` +
		`"10":{"class_type":"LoraLoader","inputs":{"lora_name":"` + lora + `","model":["4",0],"clip":["4",1]}}}`
	wf := func(ckpt string) string { return strings.Replace(urlLora, "CKPT", ckpt, 1) }
	tests := []struct {
		name, id, body string
		want           proto.Status
		wantErr        []string
		notErr         string
	}{
		{name: "lora by URL", id: "url-1", body: `{"id":"url-1","input":{"workflow":` + wf("a.safetensors") + `}}`, want: proto.StatusInQueue},
		{name: "checkpoint by URL", id: "url-2", body: `{"id":"url-2","input":{"workflow":` + strings.Replace(wf("https://civitai.example/api/download/models/9"), lora, "detail.safetensors", 1) + `}}`, want: proto.StatusInQueue},
		{name: "input.models", id: "url-3", body: `{"id":"url-3","input":{"workflow":` + ckptWorkflow("a.safetensors") +
			`,"models":[{"url":"https://hf.example/acme/x/resolve/main/pose.pth","folder":"controlnet","sha256":"00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff"}]}}`, want: proto.StatusInQueue},
		{name: "lora by URL, checkpoint missing", id: "url-bad", body: `{"id":"url-bad","input":{"workflow":` + wf("zzz.safetensors") + `}}`, want: proto.StatusFailed,
			wantErr: []string{`no worker of pool "default" has ckpt_name "zzz.safetensors".`}, notErr: "hf.example"},
	}
	for _, tt := range tests {
		b.submit(t, proto.SourceAPI, tt.body, tt.id)
		rec := b.waitRecord(t, tt.id, func(r *proto.Record) bool { return r.Status == tt.want })
		for _, w := range tt.wantErr {
			require.Contains(t, rec.Error, w, tt.name)
		}
		if tt.notErr != "" {
			require.NotContains(t, rec.Error, tt.notErr, tt.name)
		}
	}
	require.Eventually(t, func() bool { return b.streamMsgs(t, proto.JobsStream) == 3 }, 5*time.Second, 10*time.Millisecond, "the admitted jobs reach the pool's lane")
}

// The submission that made a job's record, read by a dispatcher once a
// worker already runs the job (the adapter recorded it at once, or the
// dispatcher died after admitting it and the submission came back), is
// not refused, even though the fleet no longer has its models: that would
// fail a running job.
func TestModelCheckLeavesRunningJobAlone(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, b.db.Beat(ctx, proto.Heartbeat{ID: "w1", Pool: proto.DefaultPool, State: proto.WorkerRunning,
		Models: map[string][]string{"ckpt_name": {"a.safetensors"}}}))
	job := &proto.Job{ID: "running-1", Source: proto.SourceAPI, Input: json.RawMessage(`{"workflow":` + ckptWorkflow("gone.safetensors") + `}`)}
	job.Place(proto.DefaultPool, time.Now())
	require.NoError(t, b.core.Submit(ctx, proto.SourceAPI, job, true))
	_, err := b.db.Claim(ctx, rdb.ClaimParams{ID: "running-1", WorkerID: "w0", LeaseTTL: time.Minute})
	require.NoError(t, err)

	b.start(t, dispatch.Admission{Models: dispatch.NewModelCheck(dispatch.ModelCheckConfig{}, b.db)})
	require.Eventually(t, func() bool { return b.streamMsgs(t, proto.SubmitStream) == 0 }, 10*time.Second, 10*time.Millisecond)
	rec, err := b.db.Get(ctx, "running-1")
	require.NoError(t, err)
	require.Equal(t, proto.StatusInProgress, rec.Status)
	require.Equal(t, 1, rec.Attempt)
	require.Empty(t, rec.Error)
}

func TestModelCheckCachesTheFleet(t *testing.T) {
	t.Parallel()
	calls := 0
	c := dispatch.NewModelCheck(dispatch.ModelCheckConfig{CacheFor: time.Hour}, listerFunc(func(context.Context) ([]proto.Heartbeat, error) {
		calls++
		return []proto.Heartbeat{{ID: "w", Pool: "p", Models: map[string][]string{"ckpt_name": {"a"}}}}, nil
	}))
	job := &proto.Job{Pool: "p"}
	in := &proto.Input{Workflow: []byte(ckptWorkflow("a"))}
	for range 3 {
		reject, err := c.Check(context.Background(), job, in)
		require.NoError(t, err)
		require.Contains(t, reject, "lora_name") // detail.safetensors is nowhere
	}
	require.Equal(t, 1, calls)
}

type listerFunc func(context.Context) ([]proto.Heartbeat, error)

func (f listerFunc) Workers(ctx context.Context) ([]proto.Heartbeat, error) { return f(ctx) }
