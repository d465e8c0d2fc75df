package jobtake

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/proto"
)

// handlePing takes a worker's heartbeat (§A.12): job_id is one
// comma-joined value (repeated values are accepted too). Every named job
// still leased keeps its lease and its message, as long as the worker's
// main process shows life (Config.LivenessTimeout) and the job is within
// its execution timeout; a job the worker stops naming runs out of lease
// and goes back on the queue. A fitness report
// (status=unhealthy) marks the worker unhealthy in the fleet registry.
func (h *Host) handlePing(w http.ResponseWriter, r *http.Request) {
	raw, q := params(r, r.PathValue("worker"))
	wid := workerID(raw)
	ctx := r.Context()
	var ids []string
	for _, v := range q["job_id"] {
		for _, id := range strings.Split(v, ",") {
			if id = strings.TrimSpace(id); id != "" {
				ids = append(ids, id)
			}
		}
	}
	for _, id := range ids {
		cl, err := h.core.Resume(ctx, id)
		if errors.Is(err, rdb.ErrLeaseLost) {
			continue // given back already; the worker learns on its post
		}
		if err != nil {
			h.log.Warn("read lease", zap.String("job_id", id), zap.Error(err))
			continue
		}
		if !heldBy(cl, raw) {
			continue // a worker that lost the job keeps nothing alive
		}
		log := h.log.With(zap.String("job_id", id), zap.String("worker_id", cl.WorkerID))
		live, polls := h.liveness(ctx, cl.WorkerID)
		switch {
		case overdue(cl) && live && polls:
			// Past its execution timeout: not renewed; the worker's
			// job-stop poll ends it and tells the worker.
		case overdue(cl):
			if err := h.timeOut(context.WithoutCancel(ctx), cl); err != nil {
				log.Debug("time out job", zap.Error(err))
			}
		case !live:
			// The pings come from the SDK's ping process, which outlives
			// a killed main process: without a sign of life of the main
			// process they keep nothing, and the lease runs out.
			log.Info("ping for a job whose RunPod worker shows no other sign of life; the lease is not renewed")
		default:
			if err := h.core.Renew(ctx, cl); err != nil {
				log.Debug("renew lease", zap.Error(err))
			}
		}
	}
	if q.Get("status") == "unhealthy" {
		h.log.Warn("RunPod worker reports it is unfit", zap.String("worker_id", wid),
			zap.String("check", q.Get("check")), zap.String("reason", q.Get("reason")))
		if h.fleet != nil {
			_ = h.fleet.Beat(ctx, proto.Heartbeat{ID: wid, Pool: h.poolOf(r), State: proto.WorkerUnhealthy})
		}
	} else {
		first := ""
		if len(ids) > 0 {
			first = ids[0]
		}
		h.beat(ctx, h.poolOf(r), wid, len(ids) > 0, first)
	}
	runpod.WriteJSON(w, http.StatusOK, struct{}{})
}
