package runpod

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/jobview"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

func (a *API) handleRun(w http.ResponseWriter, r *http.Request) {
	job, ok := a.accept(w, r, a.cfg.MaxRunBody, a.cfg.RunRetention, "")
	if !ok {
		return
	}
	WriteJSON(w, http.StatusOK, jobview.JobView{ID: job.ID, Status: proto.StatusInQueue})
}

func (a *API) handleRunSync(w http.ResponseWriter, r *http.Request) {
	wait, err := parseWait(r, a.cfg.DefaultWait, time.Second)
	if err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Subscribe before submitting so the terminal event cannot be missed:
	// the submission follows on the same connection.
	id := "sync-" + uuid.NewString()
	wake, err := a.q.WakeOnFinalOfNew(id)
	if err != nil {
		a.unavailable(w, "subscribe to job events", err)
		return
	}
	defer wake.Stop()
	job, ok := a.accept(w, r, a.cfg.MaxRunSyncBody, a.cfg.SyncRetention, id)
	if !ok {
		return
	}
	a.writeWhenDone(w, r, job.ID, wake, wait)
}

// accept decodes, validates and submits a job; on failure it has already
// answered the request.
func (a *API) accept(w http.ResponseWriter, r *http.Request, maxBody int64, retention time.Duration, id string) (*proto.Job, bool) {
	ctx := r.Context()
	if n, full := a.overloaded(ctx); full {
		w.Header().Set("Retry-After", "1")
		WriteError(w, http.StatusTooManyRequests, fmt.Sprintf("the queue is full: %d jobs are waiting, the limit is %d; try again shortly", n, a.cfg.MaxQueued))
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than the %d-byte limit of %s", maxBody, r.URL.Path))
		return nil, false
	case err != nil:
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("read request body: %v", err))
		return nil, false
	}
	req, in, err := DecodeRunRequest(body)
	if err == nil {
		err = in.CheckBlobs(principal(r).Tenant)
	}
	if err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return nil, false
	}
	if id == "" {
		id = uuid.NewString()
	}
	job := &proto.Job{
		V:         proto.Version,
		ID:        id,
		Input:     req.Input,
		Webhook:   req.Webhook,
		Policy:    req.Policy,
		S3Config:  req.S3Config,
		Pool:      a.scopeOf(r).pool,
		Source:    proto.SourceAPI,
		Tenant:    principal(r).Tenant,
		Retention: retention.Milliseconds(),
	}
	job.Place(job.Pool, time.Now())
	if n, full := a.laneFull(ctx, job.Pool, job.Lane); full {
		w.Header().Set("Retry-After", "1")
		WriteError(w, http.StatusTooManyRequests, fmt.Sprintf("the %s lane of pool %s is full: %d jobs are waiting, the limit is %d per lane; try again shortly", job.Lane, job.Pool, n, a.cfg.MaxQueuedPerLane))
		return nil, false
	}
	job.Input, err = OffloadImages(ctx, a.blobs, job.Tenant, id, req.Input, in, a.cfg.InlineBlobMax)
	if err == nil {
		_, err = FitMessage(ctx, a.blobs, job, in, a.q.MaxJobMessage())
	}
	var ie *proto.InputError
	var tl *queue.TooLargeError
	switch {
	case errors.As(err, &ie):
		WriteError(w, http.StatusBadRequest, err.Error())
		return nil, false
	case errors.As(err, &tl):
		WriteError(w, http.StatusRequestEntityTooLarge, TooLargeMessage(tl))
		return nil, false
	case err != nil:
		a.unavailable(w, "store input images", err)
		return nil, false
	}
	// Recorded at once, so /status finds the job before a dispatcher
	// reads it; the core keeps its message for /retry as long as the job
	// lives.
	err = a.core.Submit(ctx, proto.SourceAPI, job, true)
	if errors.As(err, &tl) { // the server's limit changed under us
		WriteError(w, http.StatusRequestEntityTooLarge, TooLargeMessage(tl))
		return nil, false
	}
	if err != nil {
		a.unavailable(w, "queue job", err)
		return nil, false
	}
	return job, true
}

// overloaded reports whether the queue is at MaxQueued. The depth is read
// at most once a second per replica, so the check stays cheap under load.
func (a *API) overloaded(ctx context.Context) (uint64, bool) {
	if a.cfg.MaxQueued <= 0 {
		return 0, false
	}
	a.depthMu.Lock()
	defer a.depthMu.Unlock()
	if time.Since(a.depthAt) > time.Second {
		queued, _, err := a.q.Depth(ctx)
		if err != nil {
			a.log.Warn("read queue depth", zap.Error(err))
			return 0, false // the submit itself will tell
		}
		a.depthSeen, a.depthAt = queued, time.Now()
	}
	return a.depthSeen, a.depthSeen >= uint64(a.cfg.MaxQueued)
}

// writeWhenDone waits for the job's terminal state up to wait, then
// answers with the job view (the in-flight view when it is not done). It
// reads the record when it starts, at each wake-up (the final event, or a
// reconnection to NATS) and once at the end; in between a held request
// costs nothing. The terminal record is written before the final event is
// published, so a wake-up finds it.
func (a *API) writeWhenDone(w http.ResponseWriter, r *http.Request, id string, wake *queue.Wake, wait time.Duration) {
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		rec, err := a.core.Get(context.WithoutCancel(ctx), id)
		if err == nil && (rec.Status.Terminal() || ctx.Err() != nil) {
			a.writeView(w, r.Context(), rec)
			return
		}
		if ctx.Err() != nil {
			switch {
			case r.Context().Err() != nil:
				// The client left.
			case errors.Is(err, rdb.ErrNotFound):
				WriteJSON(w, http.StatusOK, jobview.JobView{ID: id, Status: proto.StatusInQueue})
			default:
				a.unavailable(w, "read job status", err)
			}
			return
		}
		_ = wake.Wait(ctx) // at its end, read once more and answer
	}
}

// writeView answers with the record's view. A job in progress shows its
// latest progress as its output, as RunPod does.
func (a *API) writeView(w http.ResponseWriter, ctx context.Context, rec *proto.Record) {
	v, err := jobview.Build(ctx, a.blobs, rec)
	if err != nil {
		a.unavailable(w, "read job output", err)
		return
	}
	if rec.Status == proto.StatusInProgress && len(v.Output) == 0 {
		if ev, err := a.q.LastEvent(ctx, rec.ID); err != nil {
			a.log.Debug("read latest progress", zap.String("job_id", rec.ID), zap.Error(err))
		} else if ev != nil && ev.Attempt >= rec.Attempt {
			if c, ok := jobview.Chunk(&ev.Event); ok {
				v.Output = c
			}
		}
	}
	WriteJSON(w, http.StatusOK, v)
}
