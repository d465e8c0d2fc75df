package worker_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

type bundle struct {
	t    *testing.T
	nats *testenv.NATS
	q    *queue.Client
	db   *rdb.DB
	// core is the lifecycle core of the test's own hand (cancels,
	// takeovers); every worker gets its own on its own connection.
	core   *lifecycle.Core
	blobs  blob.Store
	sim    *simtest.Sim
	rdb    redis.UniversalClient
	prefix string
	// inputTLS, when set, is given to workers for input URLs.
	inputTLS *tls.Config
}

// setup gives a test real NATS, Redis and a ComfyUI emulator (1 ms steps
// unless simCfg says otherwise); workers are started with startWorker.
func setup(t *testing.T, simCfg ...comfysim.Config) *bundle {
	t.Helper()
	rc, prefix := testenv.Redis(t)
	return setupOn(t, rc, prefix, simCfg...)
}

// setupOn is setup on a Redis of the test's choosing.
func setupOn(t *testing.T, rc redis.UniversalClient, prefix string, simCfg ...comfysim.Config) *bundle {
	t.Helper()
	n := testenv.StartNATS(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	ctx := testenv.Context(t, time.Minute)
	require.NoError(t, q.Ensure(ctx, queue.Config{}))
	sc := comfysim.Config{StepDelay: time.Millisecond}
	if len(simCfg) > 0 {
		sc = simCfg[0]
	}
	db := rdb.New(rc, rdb.Options{Prefix: prefix, WorkerTTL: 3 * time.Second})
	return &bundle{
		t: t, nats: n, q: q, blobs: q.Blobs(), rdb: rc, prefix: prefix,
		db:   db,
		core: lifecycle.New(db, q, zaptest.NewLogger(t)),
		sim:  simtest.Start(t, sc),
	}
}

// workerOpts tune startWorker.
type workerOpts struct {
	sim    *simtest.Sim        // default: the bundle's emulator
	comfy  func(*comfy.Config) // tweaks the ComfyUI client
	deps   func(*worker.Deps)  // tweaks the dependencies
	logger *zap.Logger         // default: zaptest
	// s3, when set, is the worker's S3 store for outputs (BUCKET_*).
	s3 *s3.Config
	// db, when set, is the worker's own Redis (its core's and its
	// heartbeat's); default: the bundle's.
	db *rdb.DB
}

// startWorker runs a worker against the emulator, as role.NewWorker
// builds one: its own NATS connection and lifecycle core. Its cleanup
// stops it.
func (b *bundle) startWorker(id string, cfg worker.Config, opts ...workerOpts) *worker.Worker {
	t := b.t
	t.Helper()
	var o workerOpts
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.sim == nil {
		o.sim = b.sim
	}
	if o.db == nil {
		o.db = b.db
	}
	log := o.logger
	if log == nil {
		log = zaptest.NewLogger(t)
	}
	ccfg := comfy.Config{BaseURL: o.sim.URL, ReconnectAttempts: 3, ReconnectDelay: 20 * time.Millisecond, Logger: log}
	if o.comfy != nil {
		o.comfy(&ccfg)
	}
	cc, err := comfy.New(ccfg)
	require.NoError(t, err)
	t.Cleanup(func() { cc.Close() })
	cfg.ID = id
	if cfg.Grace == 0 {
		cfg.Grace = 5 * time.Second
	}
	if cfg.ReadyPoll == 0 {
		cfg.ReadyPoll = 20 * time.Millisecond
	}
	nc, _ := b.nats.Connect(t)
	wq, err := queue.New(nc)
	require.NoError(t, err)
	deps := worker.Deps{Queue: wq, Core: lifecycle.New(o.db, wq, log), Blobs: b.blobs, ComfyUI: cc, Fleet: o.db, Logger: log, InputTLS: b.inputTLS}
	if o.s3 != nil {
		deps.S3, err = s3.New(*o.s3)
		require.NoError(t, err)
	}
	if o.deps != nil {
		o.deps(&deps)
	}
	w, err := worker.New(cfg, deps)
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(w.Stop)
	return w
}

// enqueue does what the dispatcher does: record the job and admit it.
func (b *bundle) enqueue(id string, input string) {
	b.t.Helper()
	b.enqueueJob(&proto.Job{ID: id, Input: json.RawMessage(input), Source: proto.SourceBatch})
}

// enqueueJob records and admits a job with its policy, s3Config, …: an
// IN_QUEUE record, then the job on its pool's lane, as lifecycle's Admit
// does.
func (b *bundle) enqueueJob(job *proto.Job) {
	t := b.t
	t.Helper()
	ctx := testenv.Context(t, 10*time.Second)
	if job.Source == "" {
		job.Source = proto.SourceBatch
	}
	job.Place(proto.DefaultPool, time.Now())
	rec, created, err := b.db.Create(ctx, rdb.ParamsFor(job), time.Time{}, false)
	require.NoError(t, err)
	require.True(t, created, "job %s has a record already", job.ID)
	job.SubmittedAt = rec.SubmittedAt
	require.NoError(t, b.q.PublishJob(ctx, job, job.ID))
}

// wait polls the record until it has the wanted status.
func (b *bundle) wait(id string, want proto.Status) *proto.Record {
	t := b.t
	t.Helper()
	var rec *proto.Record
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r, err := b.db.Get(context.Background(), id); err == nil {
			rec = r
			if r.Status == want {
				return r
			}
		}
		if time.Now().After(deadline) {
			if rec != nil {
				t.Fatalf("job %s never reached %s; last: %s error=%q output=%s", id, want, rec.Status, rec.Error, rec.Output)
			}
			t.Fatalf("job %s never reached %s; no record", id, want)
		}
		pause := time.NewTimer(10 * time.Millisecond)
		<-pause.C
	}
}

// requireDrained waits until every job message was acked: the status is
// written before the ack, so a terminal status alone does not prove it.
func (b *bundle) requireDrained() {
	b.t.Helper()
	require.Eventually(b.t, func() bool {
		s, err := b.nats.JS.Stream(context.Background(), proto.JobsStream)
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	}, 10*time.Second, 5*time.Millisecond, "job messages left unacked")
}

func txt2img(seed string, width, height int, extraNodes string) string {
	return fmt.Sprintf(`{"workflow":{
	"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"v1-5-pruned-emaonly.safetensors"}},
	"5":{"class_type":"EmptyLatentImage","inputs":{"width":%d,"height":%d,"batch_size":1}},
	"6":{"class_type":"CLIPTextEncode","inputs":{"text":"a cat","clip":["4",1]}},
	"7":{"class_type":"CLIPTextEncode","inputs":{"text":"blurry","clip":["4",1]}},
	"3":{"class_type":"KSampler","inputs":{"seed":%s,"steps":10,"cfg":8,"sampler_name":"euler","scheduler":"normal","denoise":1,"model":["4",0],"positive":["6",0],"negative":["7",0],"latent_image":["5",0]}},
	"8":{"class_type":"VAEDecode","inputs":{"samples":["3",0],"vae":["4",2]}},
	"9":{"class_type":"SaveImage","inputs":{"filename_prefix":"ComfyUI","images":["8",0]}}%s}}`, width, height, seed, extraNodes)
}

func (b *bundle) output(rec *proto.Record) proto.Output {
	var out proto.Output
	require.NoError(b.t, json.Unmarshal(rec.Output, &out))
	return out
}

func (b *bundle) blobBytes(key string) []byte {
	r, _, err := b.blobs.Get(context.Background(), key)
	require.NoError(b.t, err)
	defer r.Close()
	data, err := io.ReadAll(r)
	require.NoError(b.t, err)
	return data
}

func TestRunsJobToCompletion(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startWorker("w1", worker.Config{})
	b.enqueue("j1", txt2img("18446744073709551615", 320, 192, ""))

	rec := b.wait("j1", proto.StatusCompleted)
	require.Equal(t, 1, rec.Attempt)
	require.Equal(t, "w1", rec.WorkerID)
	out := b.output(rec)
	require.Len(t, out.Images, 1)
	item := out.Images[0]
	require.Equal(t, "ComfyUI_00001_.png", item.Filename)
	require.Equal(t, proto.ItemBase64, item.Type)
	require.Equal(t, "9", item.NodeID)
	require.Equal(t, "image/png", item.Mime)
	require.Empty(t, item.Data, "no bytes in Redis")
	img, err := png.Decode(bytes.NewReader(b.blobBytes(item.Blob)))
	require.NoError(t, err)
	require.Equal(t, image.Rect(0, 0, 320, 192), img.Bounds())
	require.EqualValues(t, len(b.blobBytes(item.Blob)), item.Size)
	b.requireDrained()

	// The seed reached ComfyUI unchanged.
	resp, err := http.Get(b.sim.URL + "/history")
	require.NoError(t, err)
	hist, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Contains(t, string(hist), `"seed": 18446744073709551615`)
}

func TestOutputKinds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startWorker("w1", worker.Config{})
	extra := `,"10":{"class_type":"PreviewImage","inputs":{"images":["8",0]}},
	"11":{"class_type":"PreviewAny","inputs":{"source":"hello"}}`
	b.enqueue("kinds", txt2img("7", 64, 64, extra))
	rec := b.wait("kinds", proto.StatusCompleted)
	out := b.output(rec)
	require.Len(t, out.Images, 1, "the temp preview is skipped")
	require.Equal(t, []proto.OutputItem{{Type: proto.ItemText, Data: "hello", NodeID: "11", Mime: "text/plain"}}, out.Text)
}

func TestValidationErrorFailsAtOnceWithTheOptions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startWorker("w1", worker.Config{})
	b.enqueue("bad-model", strings.Replace(txt2img("1", 64, 64, ""), "v1-5-pruned-emaonly.safetensors", "missing.safetensors", 1))
	rec := b.wait("bad-model", proto.StatusFailed)
	require.True(t, strings.HasPrefix(rec.Error, "Workflow validation failed:\n• Node 4"), rec.Error)
	require.Contains(t, rec.Error, "missing.safetensors")
	require.Contains(t, rec.Error, "v1-5-pruned-emaonly.safetensors", "names what is available")
	require.Equal(t, 1, rec.Attempt, "no retry")
	b.requireDrained()
}

func TestNodeFailure(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.Server.SetFault(comfysim.Fault{FailClass: "KSampler", FailMessage: "boom"})
	b.startWorker("w1", worker.Config{})
	b.enqueue("boom", txt2img("1", 64, 64, ""))
	rec := b.wait("boom", proto.StatusFailed)
	require.Equal(t, "Job processing failed", rec.Error)
	var f proto.Failure
	require.NoError(t, json.Unmarshal(rec.Output, &f))
	require.Len(t, f.Details, 1)
	require.True(t, strings.HasPrefix(f.Details[0], "Workflow execution error: Node Type: KSampler, Node ID: 3, Message: boom"), f.Details[0])
}

func pngBase64(t *testing.T) string {
	img := image.NewRGBA(image.Rect(0, 0, 8, 8))
	img.Set(1, 1, color.RGBA{R: 255, A: 255})
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

func TestInputImages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startWorker("w1", worker.Config{})
	wf := `{"workflow":{"1":{"class_type":"LoadImage","inputs":{"image":"in.png"}},
		"2":{"class_type":"SaveImage","inputs":{"filename_prefix":"out","images":["1",0]}}},
		"images":[{"name":"in.png","image":"data:image/png;base64,` + pngBase64(t) + `"}]}`
	b.enqueue("img", wf)
	rec := b.wait("img", proto.StatusCompleted)
	out := b.output(rec)
	require.Len(t, out.Images, 1)
	require.Equal(t, "out_00001_.png", out.Images[0].Filename)

	b.enqueue("bad-b64", `{"workflow":{"2":{"class_type":"SaveImage","inputs":{}}},"images":[{"name":"x.png","image":"abc"}]}`)
	rec = b.wait("bad-b64", proto.StatusFailed)
	require.Equal(t, "Failed to upload one or more input images", rec.Error)
	var f proto.Failure
	require.NoError(t, json.Unmarshal(rec.Output, &f))
	require.Equal(t, []string{"Error decoding base64 for x.png: Incorrect padding"}, f.Details)
}

func TestCancelledWhileQueuedNeverStarts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.enqueue("c1", txt2img("1", 64, 64, ""))
	_, err := b.core.Cancel(context.Background(), "c1")
	require.NoError(t, err)
	b.enqueue("after", txt2img("2", 64, 64, ""))
	b.startWorker("w1", worker.Config{})
	b.wait("after", proto.StatusCompleted)
	rec, err := b.db.Get(context.Background(), "c1")
	require.NoError(t, err)
	require.Equal(t, proto.StatusCancelled, rec.Status)
	require.EqualValues(t, 1, b.sim.Server.Stats().PromptsQueued, "only the second job reached ComfyUI")
	b.requireDrained()
}

func TestStopGivesTheJobBackAndAnotherWorkerFinishesIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.Server.SetFault(comfysim.Fault{HangAtStep: 2})
	w1 := b.startWorker("w1", worker.Config{Grace: 200 * time.Millisecond})
	b.enqueue("long", txt2img("1", 64, 64, ""))
	b.wait("long", proto.StatusInProgress)
	require.Eventually(t, func() bool { return b.sim.Server.Stats().Running != "" }, 10*time.Second, 5*time.Millisecond)

	w1.Stop() // grace runs out: the job goes back on the queue
	rec := b.wait("long", proto.StatusInQueue)
	require.Equal(t, 1, rec.Retries)
	require.Eventually(t, func() bool { return b.sim.Server.Stats().Running == "" }, 10*time.Second, 5*time.Millisecond, "the prompt was interrupted in ComfyUI")

	b.sim.Server.SetFault(comfysim.Fault{})
	b.startWorker("w2", worker.Config{})
	rec = b.wait("long", proto.StatusCompleted)
	require.Equal(t, 2, rec.Attempt)
	require.Equal(t, "w2", rec.WorkerID)
	b.requireDrained()
}

func TestComfyUIDownRequeuesAndResumes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.Server.SetFault(comfysim.Fault{HangAtStep: 3})
	b.startWorker("w1", worker.Config{})
	b.enqueue("down", txt2img("1", 64, 64, ""))
	b.wait("down", proto.StatusInProgress)
	require.Eventually(t, func() bool { return b.sim.Server.Stats().Running != "" }, 10*time.Second, 5*time.Millisecond)

	// ComfyUI dies mid-prompt: the job goes back on the queue...
	b.sim.Server.Restart()
	b.sim.Server.SetDown(true)
	rec := b.wait("down", proto.StatusInQueue)
	require.Equal(t, 1, rec.Retries)
	// ...and runs again once ComfyUI is back.
	b.sim.Server.SetFault(comfysim.Fault{})
	b.sim.Server.SetDown(false)
	rec = b.wait("down", proto.StatusCompleted)
	require.Equal(t, 2, rec.Attempt)
	b.requireDrained()
}

func TestHeartbeatInFleetRegistry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w := b.startWorker("w1", worker.Config{})
	require.Eventually(t, func() bool {
		list, err := b.db.Workers(context.Background())
		return err == nil && len(list) == 1 && list[0].State == proto.WorkerIdle && list[0].ComfyUIVersion != ""
	}, 10*time.Second, 10*time.Millisecond)
	w.Stop()
	list, err := b.db.Workers(context.Background())
	require.NoError(t, err)
	require.Empty(t, list, "a stopped worker removes its heartbeat")
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     worker.Config
		wantErr string
	}{
		{name: "no id", cfg: worker.Config{}, wantErr: "worker id: id is empty"},
		{name: "bad pool", cfg: worker.Config{ID: "w", Pool: "a b"}, wantErr: "pool"},
		{name: "negative grace", cfg: worker.Config{ID: "w", Grace: -time.Second}, wantErr: "grace -1s is negative"},
		{name: "negative prefetch", cfg: worker.Config{ID: "w", Prefetch: -1}, wantErr: "prefetch -1 is negative"},
		{name: "bad allow list", cfg: worker.Config{ID: "w", InputURLAllow: []string{"10.0.0.0/40"}}, wantErr: "input URL allow list"},
		{name: "bad warm-up", cfg: worker.Config{ID: "w", WarmupWorkflow: []byte(`[1]`)}, wantErr: "warm-up workflow: not a JSON object"},
		{name: "warm-up input without workflow", cfg: worker.Config{ID: "w", WarmupWorkflow: []byte(`{"workflow":null}`)}, wantErr: "Missing 'workflow' parameter"},
		{name: "stall detection off", cfg: worker.Config{ID: "w", StallTimeout: -1}},
		{name: "ok", cfg: worker.Config{ID: "w"}},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if tt.wantErr == "" {
			require.NoError(t, err, tt.name)
			continue
		}
		require.ErrorContains(t, err, tt.wantErr, tt.name)
	}
}

func TestServesSeveralPools(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startWorker("w1", worker.Config{Pool: "sdxl", MorePools: []string{"flux"}})
	for _, pool := range []string{"sdxl", "flux"} {
		b.enqueueJob(&proto.Job{ID: "in-" + pool, Pool: pool, Input: json.RawMessage(txt2img("1", 64, 64, ""))})
	}
	for _, pool := range []string{"sdxl", "flux"} {
		rec := b.wait("in-"+pool, proto.StatusCompleted)
		require.Equal(t, pool, rec.Pool)
		require.Equal(t, "w1", rec.WorkerID)
	}
	b.requireDrained()
}
