package worker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/modelcache"
	"github.com/comfyfleet/comfyfleet/proto"
)

// execution is one attempt of one job: inputs, prompt, outputs, and what
// the heartbeat and the stall watch need to know about its progress.
type execution struct {
	w       *Worker
	log     *zap.Logger
	job     *proto.Job
	claim   *lifecycle.Claim
	attempt int

	mu     sync.Mutex
	pid    string // the prompt's id, set before it is posted
	queued bool   // ComfyUI accepted the prompt

	// inputs are the files the attempt uploaded, set before the uploads
	// start; removeInputs removes them when the attempt ends.
	inputs *inputFiles
	// models are the files of the model cache the attempt holds (under
	// mu); releaseModels lets them go when it ends (models.go).
	models []*modelcache.Handle

	last    atomic.Int64 // last sign of progress, Unix nanoseconds
	waiting atomic.Bool  // the prompt is in ComfyUI's hands
	// started: ComfyUI sent progress of the prompt, so it left the queue;
	// yielding: its prompt was deleted from ComfyUI's queue to give way to
	// an interactive job (giveway.go).
	started, yielding atomic.Bool

	progressMu   sync.Mutex
	lastProgress time.Time
	lastPreview  time.Time
}

func newExecution(w *Worker, log *zap.Logger, job *proto.Job, cl *lifecycle.Claim) *execution {
	ex := &execution{w: w, log: log, job: job, claim: cl, attempt: cl.Attempt}
	ex.touch()
	return ex
}

// touch records progress.
func (ex *execution) touch() { ex.last.Store(time.Now().UnixNano()) }

// idle is how long ago the last progress was.
func (ex *execution) idle() time.Duration { return time.Since(time.Unix(0, ex.last.Load())) }

// promptID is the prompt's id once the worker posted (or began to post)
// it, "" before.
func (ex *execution) promptID() string {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.pid
}

// accepted reports whether ComfyUI queued the prompt.
func (ex *execution) accepted() bool {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.queued
}

// options are the input fields beyond worker-comfyui's that steer a job.
type options struct {
	// previews is the preview method ("auto", "latent2rgb", "taesd") when
	// the job asks for preview events ("previews": true or a method).
	previews string
	// includeTemp returns temp outputs (PreviewImage and the like) too.
	includeTemp bool
}

func decodeOptions(raw json.RawMessage) (options, error) {
	var o options
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return o, nil // DecodeInput reports it
		}
		raw = []byte(s)
	}
	var f struct {
		Previews    json.RawMessage `json:"previews"`
		IncludeTemp *bool           `json:"include_temp"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field == "include_temp" {
			return o, errors.New("'include_temp' must be true or false")
		}
		return o, nil
	}
	if f.IncludeTemp != nil {
		o.includeTemp = *f.IncludeTemp
	}
	switch p := string(bytes.TrimSpace(f.Previews)); p {
	case "", "null", "false":
	case "true":
		o.previews = "auto"
	case `"auto"`, `"latent2rgb"`, `"taesd"`:
		o.previews = p[1 : len(p)-1]
	default:
		return o, errors.New(`'previews' must be true, false, "auto", "latent2rgb" or "taesd"`)
	}
	return o, nil
}

// execute uploads the job's inputs, runs its workflow and stores its
// outputs. ctx ends when the job is cancelled, times out, stalls, loses
// its ComfyUI or the worker stops; run reads why.
func (ex *execution) execute(ctx context.Context) (*proto.Output, error) {
	in, err := proto.DecodeInput(ex.job.Input)
	if err != nil {
		return nil, &failure{msg: err.Error()}
	}
	opts, err := decodeOptions(ex.job.Input)
	if err != nil {
		return nil, &failure{msg: err.Error()}
	}
	sink, err := ex.w.sinkFor(ex.job)
	if err != nil {
		return nil, err
	}
	workflow := []byte(in.Workflow)
	if !ex.w.cfg.SharedFiles {
		if err := checkFileRefs(workflow, ex.job.ID); err != nil {
			return nil, err
		}
	}
	if workflow, err = ex.fetchModels(ctx, in, workflow); err != nil {
		return nil, err
	}
	if len(in.Images) > 0 {
		if workflow, err = ex.uploadInputs(ctx, in.Images, workflow); err != nil {
			return nil, err
		}
	}

	ro := comfy.RunOptions{PromptID: uuid.NewString(), OnProgress: ex.onProgress}
	extra := map[string]any{}
	key := in.ComfyOrgAPIKey
	if key == "" {
		key = ex.w.cfg.ComfyOrgAPIKey
	}
	if key != "" {
		extra["api_key_comfy_org"] = key
	}
	if opts.previews != "" {
		extra["preview_method"] = opts.previews
		ro.OnPreview = ex.onPreview
	}
	if len(extra) > 0 {
		ro.ExtraData = extra
	}
	ex.mu.Lock()
	ex.pid = ro.PromptID
	ex.mu.Unlock()
	ex.touch()
	ex.waiting.Store(true)
	if ex.job.Lane == proto.LaneInteractive {
		ex.w.giveWay(ctx, ex.log)
	}
	sub, err := ex.w.comfy.Submit(ctx, workflow, ro)
	if err != nil {
		ex.waiting.Store(false)
		return nil, err
	}
	ex.mu.Lock()
	ex.pid, ex.queued = sub.PromptID, true
	ex.mu.Unlock()
	ex.w.queuedInComfy(ex)
	res, err := ex.w.comfy.Wait(ctx, sub.PromptID)
	ex.waiting.Store(false)
	ex.touch()
	if err != nil {
		// A node failed, but other branches may have saved outputs:
		// worker-comfyui returns them with the failure in errors.
		var xerr *comfy.ExecutionError
		if errors.As(err, &xerr) && !xerr.IsOOM() && res != nil && ctx.Err() == nil {
			out, n, cerr := ex.collect(ctx, sink, opts, res)
			if cerr == nil && n > 0 {
				out.Errors = append([]string{xerr.Detail()}, out.Errors...)
				return out, nil
			}
			if cerr != nil && ctx.Err() != nil {
				return nil, cerr
			}
		}
		return nil, err
	}
	out, _, err := ex.collect(ctx, sink, opts, res)
	return out, err
}

// watchStall ends the job with errStalled when its prompt runs without
// progress for StallTimeout. A prompt still pending behind another one is
// waiting, not stalled.
func (ex *execution) watchStall(ctx context.Context, stall context.CancelCauseFunc) (stop func()) {
	limit := ex.w.cfg.StallTimeout
	every := min(limit/4, time.Second)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if !ex.waiting.Load() || !ex.accepted() || ex.idle() < limit {
				continue
			}
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			q, err := ex.w.comfy.Queue(qctx)
			cancel()
			if err != nil {
				continue // an unreachable ComfyUI is the liveness probe's call
			}
			if q.IsPending(ex.promptID()) {
				ex.touch()
				continue
			}
			ex.log.Warn("job stalled: no progress from comfyui", zap.Duration("idle", ex.idle()), zap.String("prompt_id", ex.promptID()))
			stall(errStalled)
			return
		}
	}()
	return func() { close(done); <-finished }
}

// onProgress records progress and publishes throttled progress events:
// the first tick of a node, then at most one every ProgressEvery, and
// always the last (value = max).
func (ex *execution) onProgress(p comfy.Progress) {
	ex.touch()
	ex.started.Store(true)
	if p.State != "" {
		return // a node started or finished; the ticks carry the numbers
	}
	ex.progressMu.Lock()
	now := time.Now()
	if now.Sub(ex.lastProgress) < ex.w.cfg.ProgressEvery && p.Value < p.Max {
		ex.progressMu.Unlock()
		return
	}
	ex.lastProgress = now
	ex.progressMu.Unlock()
	pct := 0.0
	if p.Max > 0 {
		pct = p.Value * 100 / p.Max
	}
	ex.w.setProgress(pct / 100)
	ex.w.core.Progress(ex.claim, proto.Progress{Node: p.Node, Value: int64(p.Value), Max: int64(p.Max), Percent: pct})
}

// maxPreviewBytes keeps a preview event under NATS's 1 MB message limit.
const maxPreviewBytes = 640 << 10

// onPreview publishes a throttled preview event.
func (ex *execution) onPreview(p comfy.Preview) {
	ex.touch()
	ex.started.Store(true)
	if len(p.Data) > maxPreviewBytes || len(p.Data) == 0 {
		return // e.g. SaveImageWebsocket's full-size PNGs
	}
	ex.progressMu.Lock()
	now := time.Now()
	if now.Sub(ex.lastPreview) < ex.w.cfg.PreviewEvery {
		ex.progressMu.Unlock()
		return
	}
	ex.lastPreview = now
	ex.progressMu.Unlock()
	mt := p.MediaType
	if mt == "" {
		mt = "application/octet-stream"
	}
	ex.w.core.Preview(ex.claim, proto.Preview{Node: p.NodeID, Mime: mt, Data: base64.StdEncoding.EncodeToString(p.Data)})
}
