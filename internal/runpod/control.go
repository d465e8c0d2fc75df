package runpod

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/jobview"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// finalWriteTimeout bounds the writes that must land once a change was
// made, even when the client has left.
const finalWriteTimeout = 10 * time.Second

// handleCancel answers /cancel/{id}: a queued job never starts, a running
// one is interrupted by its worker (the job-take host passes the cancel to
// a RunPod worker's job-stop). A job that had already finished keeps its
// status, which the answer gives.
func (a *API) handleCancel(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	if _, ok := a.record(w, r, id); !ok {
		return // unknown, or another tenant's
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), finalWriteTimeout)
	defer cancel()
	rec, err := a.core.Cancel(ctx, id)
	switch {
	case errors.Is(err, rdb.ErrNotFound):
		notFound(w, id)
		return
	case errors.Is(err, rdb.ErrTerminal):
		WriteJSON(w, http.StatusOK, jobview.JobView{ID: id, Status: rec.Status})
		return
	case err != nil:
		a.unavailable(w, "cancel job", err)
		return
	}
	WriteJSON(w, http.StatusOK, jobview.JobView{ID: id, Status: proto.StatusCancelled})
}

// handleRetry answers /retry/{id}: a FAILED or TIMED_OUT job whose result
// is still kept runs again under the same id with the same input (kept in
// proto.RequestBucket since /run), its old output and error cleared.
func (a *API) handleRetry(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	rec, ok := a.record(w, r, id)
	if !ok {
		return
	}
	if rec.Status != proto.StatusFailed && rec.Status != proto.StatusTimedOut {
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("job %s is %s; only FAILED or TIMED_OUT jobs can be retried", id, rec.Status))
		return
	}
	job, err := a.keptJob(ctx, id)
	if errors.Is(err, queue.ErrNotKept) {
		WriteError(w, http.StatusNotFound, fmt.Sprintf("job %s cannot be retried: its original request is no longer kept (or it was not submitted through this API)", id))
		return
	}
	if err != nil {
		a.unavailable(w, "read the original request", err)
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalWriteTimeout)
	defer cancel()
	rec, err = a.core.Retry(fctx, job)
	var tl *queue.TooLargeError
	switch {
	case errors.As(err, &tl):
		// The server's max_payload was lowered since: the job failed
		// again with the reason, and no retry can fit.
		WriteError(w, http.StatusRequestEntityTooLarge, TooLargeMessage(tl))
		return
	case errors.Is(err, rdb.ErrNotFound):
		notFound(w, id)
		return
	case errors.Is(err, rdb.ErrIllegal):
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("job %s is %s; only FAILED or TIMED_OUT jobs can be retried", id, rec.Status))
		return
	case err != nil:
		a.unavailable(w, "retry job", err)
		return
	}
	WriteJSON(w, http.StatusOK, jobview.JobView{ID: id, Status: proto.StatusInQueue})
}

// keptJob reads the job message kept at /run time.
func (a *API) keptJob(ctx context.Context, id string) (*proto.Job, error) {
	data, err := a.q.KeptRequest(ctx, id)
	if err != nil {
		return nil, err
	}
	job, err := proto.DecodeJob(data)
	if err != nil {
		return nil, fmt.Errorf("decode kept job %s: %w", id, err)
	}
	if job.ID != id {
		return nil, fmt.Errorf("kept job %s names job %s", id, job.ID)
	}
	return job, nil
}

// PurgeView is RunPod's /purge-queue answer.
type PurgeView struct {
	Removed int    `json:"removed"`
	Status  string `json:"status"`
}

// handlePurge answers /purge-queue: every job the caller's tenant
// submitted through the endpoint API that still waits in the queue is
// cancelled (it never starts); running jobs continue. An admin purges
// every tenant's. With Endpoints, /v2/{id}/purge-queue covers the jobs of
// id's pool alone; without them (and on the bare route) an endpoint id
// names no queue of its own, so this covers the API's jobs of every
// pool. It never covers the fleet's batch or RunPod-serverless traffic.
func (a *API) handlePurge(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sc := a.scopeOf(r)
	removed := 0
	p := principal(r)
	tenant := p.Tenant
	if p.All() {
		tenant = ""
	}
	err := a.q.EachQueued(ctx, proto.SourceAPI, tenant, func(m queue.Queued) error {
		if !sc.holds(m.Pool) {
			return nil // another endpoint's
		}
		_, err := a.core.CancelQueued(ctx, m.JobID)
		switch {
		case err == nil:
			removed++
			// The message would only be dropped by the worker that gets
			// it; removing it now keeps /health's queue depth true.
			if derr := a.q.DeleteQueued(ctx, m); derr != nil {
				a.log.Debug("delete purged message", zap.String("job_id", m.JobID), zap.Error(derr))
			}
			return nil
		case errors.Is(err, rdb.ErrIllegal), errors.Is(err, rdb.ErrTerminal), errors.Is(err, rdb.ErrNotFound):
			return nil // running, finished, or expired: not queued
		}
		return err
	})
	if err != nil {
		a.unavailable(w, "purge queue", err)
		return
	}
	a.log.Info("purged queue", zap.String("tenant", tenant), zap.String("pool", sc.pool), zap.Bool("pool_only", sc.scoped), zap.Int("removed", removed))
	WriteJSON(w, http.StatusOK, PurgeView{Removed: removed, Status: "completed"})
}
