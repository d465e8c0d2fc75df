package worker

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Model-aware routing, the worker's half. The worker reports in its
// heartbeat the model files its ComfyUI offers (loader inputs read from
// /object_info) and the ones of the last workflow it ran (warm: most
// likely still in VRAM). The dispatcher refuses at admission a job whose
// models no worker has.
//
// A job whose models another, idle worker of the pool holds warm goes to
// that worker first: a worker that takes such a job without holding its
// models warm hands it back (a NAK: at once, then after WarmDefer, then
// after twice that) up to warmDefers times, and the warm worker, whose pull already waits on the same lane,
// takes it. On the interactive lane, where idle workers long-poll, that is
// nearly always the warm worker; on the batch lane, which idle workers
// poll, it is best effort. After that, or
// when no idle warm worker is in the registry, any worker runs it. The
// cost is bounded (warmDefers redeliveries, 3 × WarmDefer of wait, only
// when a warm worker looked idle), needs no per-worker subjects or stream changes, and
// a warm worker that died mid-way only delays the job, never strands it.
// (The alternative, a per-worker subject the dispatcher publishes on,
// needs a second consumer per worker and a timer in the dispatcher to move
// unclaimed jobs back to the pool lane: more moving parts for the same
// effect.)

// modelsRefresh is how often a worker re-reads its ComfyUI's model lists.
const modelsRefresh = 5 * time.Minute

// warmDefers bounds how often one job is handed back for a warm worker.
const warmDefers = 3

// defaultWarmDefer is the step by which hand-back delays grow.
const defaultWarmDefer = 25 * time.Millisecond

// routing is the worker's model state.
type routing struct {
	mu       sync.Mutex
	modelsAt time.Time // last read of /object_info; zero: read at next probe
}

// objectInfoReader is the part of the ComfyUI client that lists node
// classes; optional, so the worker's ComfyUI seam stays small.
type objectInfoReader interface {
	ObjectInfo(ctx context.Context, class string) (map[string]comfy.NodeInfo, error)
}

var _ objectInfoReader = (*comfy.Client)(nil)

// refreshModels reads the loaders' model lists from ComfyUI when they are
// older than modelsRefresh, and puts them in the heartbeat. It runs on the
// probe loop while ComfyUI answers.
func (w *Worker) refreshModels(ctx context.Context) {
	w.routing.mu.Lock()
	due := time.Since(w.routing.modelsAt) >= modelsRefresh
	if due {
		w.routing.modelsAt = time.Now()
	}
	w.routing.mu.Unlock()
	if !due {
		return
	}
	oi, ok := w.comfy.(objectInfoReader)
	if !ok {
		return
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	infos, err := oi.ObjectInfo(octx, "")
	if err != nil {
		w.log.Warn("read models from object_info", zap.Error(err))
		w.routing.mu.Lock()
		w.routing.modelsAt = time.Time{} // try again at the next probe
		w.routing.mu.Unlock()
		return
	}
	models := map[string][]string{}
	for class, info := range infos {
		for _, inputs := range []map[string]json.RawMessage{info.Required, info.Optional} {
			for input := range inputs {
				if !fleet.IsModelInput(class, input) {
					continue
				}
				opts, ok := info.Options(input)
				if !ok {
					continue
				}
				for _, o := range opts {
					if !slices.Contains(models[input], o) {
						models[input] = append(models[input], o)
					}
				}
			}
		}
	}
	for _, files := range models {
		slices.Sort(files)
	}
	w.mu.Lock()
	w.self.Models = models
	w.mu.Unlock()
}

// forgetModels makes the next probe re-read the model lists (ComfyUI
// restarted, or went down), and forgets the warm set: a ComfyUI that
// comes back starts with empty VRAM.
func (w *Worker) forgetModels() {
	w.routing.mu.Lock()
	w.routing.modelsAt = time.Time{}
	w.routing.mu.Unlock()
	w.forgetWarm()
}

// forgetWarm empties the warm set: ComfyUI holds no model of ours.
func (w *Worker) forgetWarm() {
	w.mu.Lock()
	w.self.Warm = nil
	w.mu.Unlock()
}

// jobModels lists the models a job's workflow names.
func jobModels(job *proto.Job) map[string][]string {
	var in struct {
		Workflow json.RawMessage `json:"workflow"`
	}
	if json.Unmarshal(job.Input, &in) != nil {
		return nil
	}
	return fleet.WorkflowModels(in.Workflow)
}

// noteWarm records the models of the job the worker runs as its warm set.
func (w *Worker) noteWarm(job *proto.Job) {
	need := jobModels(job)
	var warm []string
	for _, files := range need {
		warm = append(warm, files...)
	}
	if len(warm) == 0 {
		return // e.g. an image-only workflow: whatever was loaded stays
	}
	slices.Sort(warm)
	w.mu.Lock()
	w.self.Warm = warm
	w.mu.Unlock()
}

// setProgress records the current job's progress (0 to 1) for the
// heartbeat.
func (w *Worker) setProgress(p float64) {
	w.mu.Lock()
	w.self.Progress = p
	w.mu.Unlock()
}

// deferToWarm hands the job back when another idle worker of the pool
// holds its models warm and this one does not; see the comment at the top
// of the file.
func (w *Worker) deferToWarm(ctx context.Context, job *proto.Job, msg *queue.Message) bool {
	if w.cfg.WarmDefer < 0 || msg.Delivered() > warmDefers {
		return false
	}
	if w.fleet == nil {
		return false
	}
	need := jobModels(job)
	if len(need) == 0 {
		return false
	}
	w.mu.Lock()
	me := w.self
	w.mu.Unlock()
	if fleet.HasWarm(me, need) {
		return false
	}
	// Read afresh: a stale view would hand jobs to a worker that is no
	// longer idle. One Redis read per job, only for a worker not warm.
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	list, err := w.fleet.Workers(lctx)
	cancel()
	if err != nil {
		return false
	}
	for _, o := range list {
		if o.ID != me.ID && o.Pool == me.Pool && o.State == proto.WorkerIdle && fleet.HasWarm(o, need) {
			w.log.Debug("handing job to a warm worker", zap.String("job_id", job.ID), zap.String("warm_worker", o.ID))
			// At once the first time; later ones wait longer, so a warm
			// worker between two pulls has time to ask again.
			step := w.cfg.WarmDefer
			if step == 0 {
				step = defaultWarmDefer
			}
			_ = msg.Nak(step * time.Duration(msg.Delivered()-1))
			return true
		}
	}
	return false
}
