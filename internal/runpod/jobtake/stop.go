package jobtake

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/runpod"
)

// stopPoll is how often a held job-stop poll looks at its jobs besides
// waking on every fleet cancel.
const stopPoll = time.Second

// handleStop serves the worker's job-stop long-poll (§A.11): it answers
// {"jobsToStop": [...]} with the jobs leased to the worker that ended in
// the fleet meanwhile (cancelled, timed out), or 204 after StopHold. A
// stopped job posts nothing more, so the host settles it here.
func (h *Host) handleStop(w http.ResponseWriter, r *http.Request) {
	raw, _ := params(r, r.PathValue("worker"))
	wid := workerID(raw)
	ctx := r.Context()
	deadline := time.NewTimer(h.cfg.StopHold)
	defer deadline.Stop()
	poll := time.NewTicker(stopPoll)
	defer poll.Stop()
	for {
		signal := h.cancelSignal()
		ids, err := h.ended(ctx, wid)
		if err != nil {
			h.unavailable(w, "read held jobs", err)
			return
		}
		if len(ids) > 0 {
			runpod.WriteJSON(w, http.StatusOK, map[string][]string{"jobsToStop": ids})
			return
		}
		select {
		case <-signal:
		case <-poll.C:
		case <-deadline.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-ctx.Done():
			return
		}
	}
}

// ended lists the jobs leased to a worker whose records went terminal,
// acks their messages and drops their leases.
func (h *Host) ended(ctx context.Context, wid string) ([]string, error) {
	held, err := h.leases.held(ctx, wid)
	if err != nil {
		return nil, err
	}
	ids := []string{}
	for _, id := range held {
		l, err := h.leases.get(ctx, id)
		if errors.Is(err, errNoLease) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if l.WorkerID != wid {
			continue
		}
		rec, err := h.records.Get(ctx, id)
		if err != nil || !rec.Status.Terminal() {
			continue
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		h.ack(fctx, l.Reply)
		if err := h.leases.drop(fctx, l); err != nil {
			h.log.Warn("drop lease", zap.String("job_id", id), zap.Error(err))
		}
		cancel()
		h.log.Info("stopping job on its RunPod worker", zap.String("job_id", id), zap.String("worker_id", wid), zap.String("status", string(rec.Status)))
		ids = append(ids, id)
	}
	return ids, nil
}
