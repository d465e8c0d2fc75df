package jobtake

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
)

// stopPoll is how often a held job-stop poll looks at its jobs besides
// waking on every fleet cancel.
const stopPoll = time.Second

// A job-stop poll under a shared name hears the fleet cancels of the
// sharedLookback before it, after it has been open for sharedRetell.
const (
	sharedLookback = 3 * time.Second
	sharedRetell   = 500 * time.Millisecond
)

// handleStop serves the worker's job-stop long-poll (§A.11): it answers
// {"jobsToStop": [...]} with the jobs leased to the worker that ended in
// the fleet meanwhile (cancelled) or ran past their execution timeout
// (then ended TIMED_OUT here), or 204 after StopHold. A poll under a
// shared name (see literal) hears every stop of the jobs taken under it.
//
// The poll is the SDK's main process asking, so while it is open the
// worker's main process is alive, and the poll marks it so (see
// Config.LivenessTimeout); while the worker holds jobs it is held past
// StopHold, until a stop, the host's Drain, or until the worker gives it
// up (the SDK at 90 s, then it polls again at once; or when its process
// dies: the connection closes). A synchronous handler blocks the SDK's
// event loop, so that no new poll can come while it runs: a poll the
// host answered keeps the worker alive until its next one when the
// worker still holds jobs (or takes one before it polls again), else for
// the SDK's second between polls. A poll the worker gave up starts
// LivenessTimeout: without a new poll, the worker's pings keep nothing
// after it.
func (h *Host) handleStop(w http.ResponseWriter, r *http.Request) {
	raw, _ := params(r, r.PathValue("worker"))
	wid := workerID(raw)
	shared := literal(raw)
	if shared {
		h.warnLiteral(raw)
	}
	ctx := r.Context()
	marked := time.Now()
	h.markAlive(ctx, wid, marked)
	// trust is how long the worker counts as alive after the host
	// answered; 0 while unanswered.
	var trust time.Duration
	defer func() {
		if trust > 0 {
			h.markAlive(ctx, wid, time.Now().Add(trust))
		} else {
			h.markAlive(ctx, wid, time.Now()) // given up by the worker
		}
	}()
	drain := h.drainSignal()
	hold := time.NewTimer(h.cfg.StopHold)
	defer hold.Stop()
	held := false // StopHold ran out
	poll := time.NewTicker(min(stopPoll, h.cfg.LivenessTimeout/3, sharedRetell))
	defer poll.Stop()
	start := time.Now()
	// A poll under a shared name also hears the cancels of the moments
	// before it began: the worker that runs the job may be between polls
	// when it is cancelled, and another poll may settle the job first.
	seen := h.cancelsFrom(start.Add(-sharedLookback))
	var early []heardCancel
	for {
		signal, _ := h.cancelSignal()
		ids, holding, err := h.ended(ctx, wid)
		if err != nil {
			h.unavailable(w, "read held jobs", err)
			return
		}
		if shared {
			var recent []heardCancel
			recent, seen = h.cancelsSince(seen)
			recent = append(early, recent...)
			early = nil
			if time.Since(start) < sharedRetell {
				// Heard before this poll: told after a pause, so that a
				// worker told already, which polls again at once, is not
				// told again and again.
				var now []heardCancel
				for _, c := range recent {
					if c.at.Before(start) {
						early = append(early, c)
					} else {
						now = append(now, c)
					}
				}
				recent = now
			}
			ids = h.sharedStops(ctx, wid, ids, recent)
		}
		if len(ids) > 0 {
			trust = repollGrace
			if holding > 0 {
				trust = blockedTrust
			}
			runpod.WriteJSON(w, http.StatusOK, map[string][]string{"jobsToStop": ids})
			return
		}
		if held && holding == 0 {
			trust = repollGrace
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if time.Since(marked) >= h.cfg.LivenessTimeout/3 {
			marked = time.Now()
			h.markAlive(ctx, wid, marked)
		}
		select {
		case <-signal:
		case <-poll.C:
		case <-hold.C:
			held = true
		case <-drain:
			trust = blockedTrust
			w.WriteHeader(http.StatusNoContent)
			return
		case <-ctx.Done():
			return
		}
	}
}

// sharedStops adds to ids the jobs of the fleet cancels heard during the
// poll of a shared name (a template's unreplaced variable: every worker
// of that template polls under it) that were taken under that name:
// another poll under the name may have settled them first, and every
// worker under it must hear the stop, so that the one that runs the job
// stops it (the SDK ignores the ids it does not run).
func (h *Host) sharedStops(ctx context.Context, wid string, ids []string, recent []heardCancel) []string {
	for _, c := range recent {
		id := c.jobID
		if slices.Contains(ids, id) {
			continue
		}
		rec, err := h.core.Get(ctx, id)
		if err == nil && rec.WorkerID == wid && rec.Status.Terminal() {
			ids = append(ids, id)
		}
	}
	return ids
}

// ended lists the jobs leased to a worker whose records went terminal
// (cancelled while it ran them) or that ran past their execution timeout
// (those end TIMED_OUT here), and settles them: their deliveries acked,
// their leases released. holding is how many jobs the worker still holds.
func (h *Host) ended(ctx context.Context, wid string) (ids []string, holding int, err error) {
	held, err := h.core.Held(ctx, wid)
	if err != nil {
		return nil, 0, err
	}
	ids = []string{}
	for _, id := range held {
		cl, err := h.core.Resume(ctx, id)
		if errors.Is(err, rdb.ErrLeaseLost) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		if cl.WorkerID != wid {
			continue
		}
		rec, err := h.core.Get(ctx, id)
		if err != nil || rec.Attempt != cl.Attempt {
			continue
		}
		log := h.log.With(zap.String("job_id", id), zap.String("worker_id", wid), zap.Int("attempt", cl.Attempt))
		switch {
		case rec.Status.Terminal():
			h.core.Cancelled(ctx, cl)
			log.Info("stopping job on its RunPod worker", zap.String("status", string(rec.Status)))
			ids = append(ids, id)
		case overdue(cl):
			err := h.timeOut(context.WithoutCancel(ctx), cl)
			if err != nil && !errors.Is(err, lifecycle.ErrEnded) {
				log.Warn("time out job", zap.Error(err))
				holding++
				continue
			}
			if literal(cl.Taker) {
				// Every poll under the shared name hears it as a cancel.
				if err := h.q.PublishCancel(id); err != nil {
					log.Warn("tell the stop of a timed-out job", zap.Error(err))
				}
			}
			ids = append(ids, id)
		default:
			holding++
		}
	}
	return ids, holding, nil
}
