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
// /object_info), the ones of the last job it ran (warm: most likely still
// in VRAM), and the files its model cache holds, fetched by URL (cached:
// on disk, no download; Deps.Models). The dispatcher refuses at
// admission a job whose models by file name no worker has; a model named
// by URL is fetched where the job runs, so admission does not judge it.
//
// A job goes first to the readiest idle worker of the pool (fleet.Tier):
// one that holds all its models warm, then one that has all the models it
// names by URL on disk, then any. A worker that takes a job while another,
// idle worker of the pool ranks better for it hands it back (a NAK: at
// once, then after WarmDefer, then after twice that) up to warmDefers
// times, and the readier worker, whose pull already waits on the same
// lane, takes it; a cached worker that takes it hands it on in turn to a
// warm one, within the same warmDefers deliveries. On the interactive
// lane, where idle workers long-poll, that is nearly always the readier
// worker; on the batch lane, which idle workers poll, it is best effort.
// After that, or when no readier idle worker is in the registry, any
// worker runs it. The cost is bounded (warmDefers redeliveries, 3 ×
// WarmDefer of wait, only when a readier worker looked idle), needs no
// per-worker subjects or stream changes, and a readier worker that died
// mid-way only delays the job, never strands it. (The alternative, a
// per-worker subject the dispatcher publishes on, needs a second consumer
// per worker and a timer in the dispatcher to move unclaimed jobs back to
// the pool lane: more moving parts for the same effect.)
//
// The warm set is recorded when the job is claimed, from the job as sent:
// its files, the keys (proto.ModelURLKey) of its models by URL, and the
// cached file names of those the cache already holds. A worker whose warm
// set was recorded from the rewritten workflow instead (the cached names
// only) is judged warm all the same: a model by URL is warm on a worker
// whose Cached entry for it names a file of its warm set.

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

// jobNeed lists the models a job names.
func jobNeed(job *proto.Job) fleet.Need {
	return fleet.JobNeed(job.Input)
}

// cachedModels lists the files of the worker's model cache.
func (w *Worker) cachedModels() []proto.CachedModel {
	if w.models == nil {
		return nil
	}
	return w.models.List()
}

// noteWarm records the models of the job the worker runs as its warm set.
func (w *Worker) noteWarm(need fleet.Need) {
	var warm []string
	for _, files := range need.Files {
		warm = append(warm, files...)
	}
	if len(need.URLs) > 0 {
		cached := w.cachedModels()
		for _, m := range need.URLs {
			warm = append(warm, m.Key)
			for _, c := range cached {
				if m.Matches(c) && c.File != "" {
					warm = append(warm, c.File)
				}
			}
		}
	}
	if len(warm) == 0 {
		return // e.g. an image-only workflow: whatever was loaded stays
	}
	slices.Sort(warm)
	warm = slices.Compact(warm)
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

// route ranks the worker for a job it took and hands the job back when
// another idle worker of the pool ranks better (see the comment at the top
// of the file). It returns the worker's tier for the job, and whether the
// job was handed back.
func (w *Worker) route(ctx context.Context, job *proto.Job, need fleet.Need, msg *queue.Message) (fleet.Tier, bool) {
	if need.Empty() {
		return fleet.TierWarm, false
	}
	w.mu.Lock()
	me := w.self
	w.mu.Unlock()
	me.Cached = w.cachedModels()
	mine := need.Tier(me)
	if mine == fleet.TierWarm || w.cfg.WarmDefer < 0 || msg.Delivered() > warmDefers || w.fleet == nil {
		return mine, false
	}
	// Read afresh: a stale view would hand jobs to a worker that is no
	// longer idle. One Redis read per job, only for a worker not warm.
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	list, err := w.fleet.Workers(lctx)
	cancel()
	if err != nil {
		return mine, false
	}
	for _, o := range list {
		if o.ID == me.ID || o.Pool != me.Pool || o.State != proto.WorkerIdle {
			continue
		}
		if t := need.Tier(o); t < mine {
			w.log.Debug("handing job to a readier worker", zap.String("job_id", job.ID), zap.String("worker", o.ID),
				zap.Stringer("tier", t), zap.Stringer("own_tier", mine))
			// At once the first time; later ones wait longer, so a readier
			// worker between two pulls has time to ask again.
			step := w.cfg.WarmDefer
			if step == 0 {
				step = defaultWarmDefer
			}
			_ = msg.Nak(step * time.Duration(msg.Delivered()-1))
			w.metrics.handedBack(t)
			return mine, true
		}
	}
	return mine, false
}
