package worker

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/queue"
)

// Giving way: with Prefetch, the worker queues the next job's prompt in
// ComfyUI behind the running one, so the GPU never waits. Were that a
// batch job, an interactive job arriving meanwhile would wait for the
// running prompt and then for the batch one. So while a batch job's prompt
// waits in ComfyUI's queue, the worker also waits on its interactive
// lanes (watchInteractive), and every interactive job, before it queues
// its own prompt, deletes the waiting batch prompts from ComfyUI's queue
// (giveWay); each of those jobs ends its attempt IN_QUEUE, its delivery
// NAKed at once, no attempt counted (the lifecycle core's Requeue). The
// interactive prompt then runs right after the running one.
//
// Durability is the claim's: a prefetched job is claimed and leased like
// the running one, from the moment it is taken. A worker that dies with it
// stops renewing its lease, and the sweeper hands it back.

// reasonGaveWay is the requeue reason of a batch job that gave way.
const reasonGaveWay = "gave way to an interactive job (it had not started in ComfyUI)"

// deleteTimeout bounds the deletion of waiting prompts from ComfyUI's
// queue.
const deleteTimeout = 5 * time.Second

// watchInteractive waits on the interactive lanes while the worker holds a
// batch job whose prompt waits in ComfyUI's queue, and runs an interactive
// job it takes there and then: one job beyond the Prefetch slots, which
// are full (the loop waits on every lane when one is free). It ends with
// pullCtx.
func (w *Worker) watchInteractive(pullCtx, jobCtx context.Context, cons *queue.Lanes) {
	bo := backoff.New(100*time.Millisecond, 5*time.Second)
	for pullCtx.Err() == nil {
		if !w.batchPending() {
			select {
			case <-pullCtx.Done():
				return
			case <-w.batchWaiting:
			}
			continue
		}
		msg, err := cons.NextInteractive(pullCtx, w.cfg.FetchWait)
		switch {
		case errors.Is(err, queue.ErrNoMessage), pullCtx.Err() != nil:
			continue
		case err != nil:
			w.log.Warn("fetch interactive job", zap.Error(err))
			bo.Wait(pullCtx)
			continue
		}
		bo.Reset()
		w.handle(jobCtx, msg)
	}
}

// queuedInComfy wakes the interactive watch when a batch job's prompt was
// queued in ComfyUI.
func (w *Worker) queuedInComfy(ex *execution) {
	w.mu.Lock()
	ref := w.active[ex.job.ID]
	yields := ref != nil && ref.yields
	w.mu.Unlock()
	if !yields || w.cfg.Prefetch == 0 {
		return
	}
	select {
	case w.batchWaiting <- struct{}{}:
	default:
	}
}

// batchPending reports whether a job that gives way waits in ComfyUI's
// queue.
func (w *Worker) batchPending() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.active {
		if r.pending() {
			return true
		}
	}
	return false
}

// pending: the job gives way and its prompt waits in ComfyUI's queue, as
// far as the worker knows. Called under Worker.mu.
func (r *jobRef) pending() bool {
	return r.yields && r.ex != nil && r.ex.accepted() && !r.ex.started.Load() && !r.ex.yielding.Load()
}

// giveWay deletes the prompts of the jobs that give way and wait in
// ComfyUI's queue, before an interactive job queues its own. Each such job
// sees its prompt removed and goes back on the queue (gaveWay); a prompt
// that started meanwhile is left running, and its job with it.
func (w *Worker) giveWay(ctx context.Context, log *zap.Logger) {
	var exs []*execution
	var ids, jobIDs []string
	w.mu.Lock()
	for _, r := range w.active {
		if r.pending() {
			r.ex.yielding.Store(true)
			exs = append(exs, r.ex)
			ids = append(ids, r.ex.promptID())
			jobIDs = append(jobIDs, r.id)
		}
	}
	w.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	err := w.comfy.DeleteFromQueue(dctx, ids...)
	cancel()
	if err != nil {
		for _, ex := range exs {
			ex.yielding.Store(false)
		}
		log.Warn("give the waiting batch jobs back", zap.Strings("batch_job_ids", jobIDs), zap.Error(err))
		return
	}
	log.Info("batch jobs waiting in comfyui give way", zap.Strings("batch_job_ids", jobIDs))
}

// gaveWay reports whether the attempt ended because giveWay removed its
// prompt from ComfyUI's queue.
func (ex *execution) gaveWay(err error) bool {
	var ierr *comfy.InterruptedError
	return ex.yielding.Load() && errors.As(err, &ierr) && ierr.Removed
}
