package jobtake

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
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

// ended lists the jobs leased to a worker whose records went terminal
// (cancelled while it ran them), and settles them: their deliveries acked,
// their leases released.
func (h *Host) ended(ctx context.Context, wid string) ([]string, error) {
	held, err := h.core.Held(ctx, wid)
	if err != nil {
		return nil, err
	}
	ids := []string{}
	for _, id := range held {
		cl, err := h.core.Resume(ctx, id)
		if errors.Is(err, rdb.ErrLeaseLost) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if cl.WorkerID != wid {
			continue
		}
		rec, err := h.core.Get(ctx, id)
		if err != nil || !rec.Status.Terminal() || rec.Attempt != cl.Attempt {
			continue
		}
		h.core.Cancelled(ctx, cl)
		h.log.Info("stopping job on its RunPod worker", zap.String("job_id", id), zap.String("worker_id", wid), zap.String("status", string(rec.Status)))
		ids = append(ids, id)
	}
	return ids, nil
}
