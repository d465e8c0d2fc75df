package runpod

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// finalWriteTimeout bounds the writes that must land once a change was
// made, even when the client has left.
const finalWriteTimeout = 10 * time.Second

// handleCancel answers /cancel/{id}: a queued job never starts, a running
// one is interrupted by its worker (the cancel fans out on cf.ctl.cancel;
// the job-take host passes it to a RunPod worker's job-stop). A job that
// had already finished keeps its status, which the answer gives.
func (a *API) handleCancel(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	rec, err := a.records.Cancel(r.Context(), id)
	switch {
	case errors.Is(err, status.ErrNotFound):
		WriteError(w, http.StatusNotFound, fmt.Sprintf("job %s not found (unknown, or its result expired)", id))
		return
	case errors.Is(err, status.ErrTerminal):
		WriteJSON(w, http.StatusOK, JobView{ID: id, Status: rec.Status})
		return
	case err != nil:
		a.unavailable(w, "cancel job", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), finalWriteTimeout)
	defer cancel()
	a.cancelled(ctx, id, true)
	WriteJSON(w, http.StatusOK, JobView{ID: id, Status: proto.StatusCancelled})
}

// cancelled tells the fleet a job was cancelled: its workers (when it may
// be running) and whoever waits on its events.
func (a *API) cancelled(ctx context.Context, id string, running bool) {
	if running {
		if err := a.q.PublishCancel(id); err != nil {
			a.log.Warn("publish cancel", zap.String("job_id", id), zap.Error(err))
		}
	}
	if err := a.q.PublishEvent(ctx, &proto.Event{JobID: id, Type: proto.EventStatus, Status: proto.StatusCancelled}); err != nil {
		a.log.Warn("publish event", zap.String("job_id", id), zap.Error(err))
	}
}

// handleRetry answers /retry/{id}: a FAILED or TIMED_OUT job whose result
// is still kept runs again under the same id with the same input (kept in
// RequestBucket since /run), its old output and error cleared.
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
	if errors.Is(err, errNotKept) {
		WriteError(w, http.StatusNotFound, fmt.Sprintf("job %s cannot be retried: its original request is no longer kept (or it was not submitted through this API)", id))
		return
	}
	if err != nil {
		a.unavailable(w, "read the original request", err)
		return
	}
	rec, err = a.records.Retry(ctx, id)
	switch {
	case errors.Is(err, status.ErrNotFound):
		WriteError(w, http.StatusNotFound, fmt.Sprintf("job %s not found (unknown, or its result expired)", id))
		return
	case errors.Is(err, status.ErrIllegal):
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("job %s is %s; only FAILED or TIMED_OUT jobs can be retried", id, rec.Status))
		return
	case err != nil:
		a.unavailable(w, "retry job", err)
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalWriteTimeout)
	defer cancel()
	job.SubmittedAt = rec.SubmittedAt
	if err := a.streams.readmit(fctx, job, rec.Retries); err != nil {
		// Undo: the record must not wait for a message that never came.
		if _, rerr := a.records.Reject(fctx, status.ParamsFor(job), "retry could not be queued: "+err.Error()); rerr != nil {
			a.log.Error("undo retry", zap.String("job_id", id), zap.Error(rerr))
		}
		a.unavailable(w, "queue retried job", err)
		return
	}
	if err := a.q.PublishEvent(fctx, &proto.Event{JobID: id, Type: proto.EventStatus, Status: proto.StatusInQueue, Attempt: rec.Attempt}); err != nil {
		a.log.Warn("publish event", zap.String("job_id", id), zap.Error(err))
	}
	WriteJSON(w, http.StatusOK, JobView{ID: id, Status: proto.StatusInQueue})
}

// keptJob reads the job message kept at /run time.
func (a *API) keptJob(ctx context.Context, id string) (*proto.Job, error) {
	data, err := a.requests.get(ctx, id)
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

// handlePurge answers /purge-queue: every job submitted through the
// endpoint API that still waits in the queue is cancelled (it never
// starts); running jobs continue. Endpoint ids do not name separate queues
// in a fleet, so this covers the API's jobs of every endpoint id, and
// never the fleet's batch or RunPod-serverless traffic.
func (a *API) handlePurge(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	removed := 0
	err := a.streams.eachQueued(ctx, proto.SourceAPI, func(m queuedMsg) error {
		_, err := a.records.CancelQueued(ctx, m.jobID)
		switch {
		case err == nil:
			removed++
			a.cancelled(ctx, m.jobID, false)
			// The message would only be dropped by the worker that gets
			// it; removing it now keeps /health's queue depth true.
			if derr := m.stream.DeleteMsg(ctx, m.seq); derr != nil {
				a.log.Debug("delete purged message", zap.String("job_id", m.jobID), zap.Error(derr))
			}
			return nil
		case errors.Is(err, status.ErrIllegal), errors.Is(err, status.ErrTerminal), errors.Is(err, status.ErrNotFound):
			return nil // running, finished, or expired: not queued
		}
		return err
	})
	if err != nil {
		a.unavailable(w, "purge queue", err)
		return
	}
	a.log.Info("purged queue", zap.Int("removed", removed))
	WriteJSON(w, http.StatusOK, PurgeView{Removed: removed, Status: "completed"})
}
