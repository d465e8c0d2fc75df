package jobtake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Result is a job-done body as RunPod's SDK posts it (§A.7–A.9): a final
// result ({"output"}, {"error"}, both, plus "stopPod"), or a progress
// update ({"status": "IN_PROGRESS", "output"}).
type Result struct {
	// Progress is set for a progress update.
	Progress bool
	// Output is the "output" value as sent (nil when absent).
	Output json.RawMessage
	// Error is the "error" value as a string: a string as it is, any
	// other JSON as its text; "" when absent, null, false or empty (the
	// SDK drops a falsy error).
	Error string
	// StopPod asks the platform to recycle the worker after this job.
	StopPod bool
}

// DecodeResult reads a job-done or job-stream body. The body is JSON
// whatever the Content-Type says (the SDK labels it form-encoded), and it
// must be a JSON object.
func DecodeResult(body []byte) (*Result, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("the body is not a JSON object")
	}
	r := &Result{}
	if v, ok := fields["output"]; ok {
		r.Output = bytes.TrimSpace(v)
	}
	if v, ok := fields["status"]; ok {
		var s string
		if json.Unmarshal(v, &s) == nil && s == string(proto.StatusInProgress) {
			r.Progress = true
		}
	}
	if v, ok := fields["error"]; ok {
		v = bytes.TrimSpace(v)
		var s string
		switch {
		case json.Unmarshal(v, &s) == nil:
			r.Error = s
		case bytes.Equal(v, []byte("null")), bytes.Equal(v, []byte("false")):
		default:
			r.Error = string(v)
		}
	}
	if v, ok := fields["stopPod"]; ok {
		_ = json.Unmarshal(v, &r.StopPod)
	}
	return r, nil
}

// readBody reads a worker's post, answering 413 or 400 itself on failure.
func (h *Host) readBody(w http.ResponseWriter, r *http.Request) (*Result, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxResult))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		runpod.WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the result is larger than %d bytes; put large outputs in S3", h.cfg.MaxResult))
		return nil, false
	}
	if err != nil {
		runpod.WriteError(w, http.StatusBadRequest, "read body: "+err.Error())
		return nil, false
	}
	res, err := DecodeResult(body)
	if err != nil {
		runpod.WriteError(w, http.StatusBadRequest, err.Error())
		return nil, false
	}
	return res, true
}

// holder finds the lease of the job named in the path (cut at "&") and
// checks that the posting worker holds it; ok is false when it does not,
// in which case it answered with a 4xx, which makes the SDK drop the post.
func (h *Host) holder(w http.ResponseWriter, r *http.Request) (*lease, bool) {
	id, _ := params(r, r.PathValue("job"))
	name, _ := params(r, r.PathValue("worker"))
	if err := proto.ValidID(id); err != nil {
		runpod.WriteError(w, http.StatusBadRequest, "job id: "+err.Error())
		return nil, false
	}
	l, err := h.leases.get(r.Context(), id)
	if errors.Is(err, errNoLease) {
		// Given back (the worker went quiet too long), finished through
		// another path, or never taken here: a 4xx makes the SDK drop
		// it, which is right, since another attempt owns the job now.
		h.log.Info("post for a job this worker no longer holds", zap.String("job_id", id), zap.String("worker", r.PathValue("worker")))
		runpod.WriteError(w, http.StatusNotFound, fmt.Sprintf("job %s is not held by a worker here (its lease ended)", id))
		return nil, false
	}
	if err != nil {
		h.unavailable(w, "read lease", err)
		return nil, false
	}
	if !l.heldBy(name) {
		// The worker lost the job (it went quiet too long) and another
		// attempt holds it now: this post is fenced out.
		h.log.Info("post from a worker that lost the job", zap.String("job_id", id), zap.String("worker", name), zap.Int("attempt", l.Attempt))
		runpod.WriteError(w, http.StatusConflict, fmt.Sprintf("job %s is held by another worker now (attempt %d); this result is dropped", id, l.Attempt))
		return nil, false
	}
	return l, true
}

func (h *Host) unavailable(w http.ResponseWriter, what string, err error) {
	h.log.Warn(what, zap.Error(err))
	// 5xx: the SDK retries it.
	runpod.WriteError(w, http.StatusServiceUnavailable, what+": the fleet's backend is unavailable, try again")
}

// handleDone takes a worker's final result or progress update.
func (h *Host) handleDone(w http.ResponseWriter, r *http.Request) {
	res, ok := h.readBody(w, r)
	if !ok {
		return
	}
	l, ok := h.holder(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	log := h.log.With(zap.String("job_id", l.JobID), zap.String("worker_id", l.WorkerID), zap.Int("attempt", l.Attempt))
	if res.Progress {
		h.progress(ctx, log, l, proto.EventProgressUpdate, res.Output)
		runpod.WriteJSON(w, http.StatusOK, struct{}{})
		return
	}
	to, errMsg := proto.StatusCompleted, res.Error
	if errMsg != "" {
		to = proto.StatusFailed
	}
	output := res.Output
	if to == proto.StatusCompleted && len(output) == 0 {
		output = json.RawMessage("null")
	}
	if len(output) > 0 {
		var err error
		if output, err = storeOutput(ctx, h.blobs, l.JobID, l.Attempt, output); err != nil {
			h.unavailable(w, "store output files", err)
			return
		}
	}
	_, err := h.records.Finish(ctx, l.JobID, l.Attempt, to, output, errMsg)
	switch {
	case err == nil:
		h.event(ctx, &proto.Event{JobID: l.JobID, Type: proto.EventStatus, Status: to, Attempt: l.Attempt, WorkerID: l.WorkerID, Error: errMsg})
		h.ack(ctx, l.Reply)
		log.Debug("job done", zap.String("status", string(to)))
	case errors.Is(err, status.ErrTerminal), errors.Is(err, status.ErrNotFound):
		// Cancelled (or expired) while it ran: the message is done.
		h.ack(ctx, l.Reply)
		log.Info("result of a job that had already ended", zap.Error(err))
	case errors.Is(err, status.ErrStale):
		// A newer attempt holds the job; its delivery will be acked.
		log.Warn("result fenced out by a newer attempt", zap.Error(err))
	default:
		h.unavailable(w, "write job status", err)
		return
	}
	if res.StopPod {
		log.Info("the worker asked to be recycled after this job (refresh_worker); restart it to honour that")
	}
	if err := h.leases.drop(ctx, l); err != nil {
		log.Warn("drop lease", zap.Error(err))
	}
	h.beat(ctx, l.WorkerID, false, "")
	runpod.WriteJSON(w, http.StatusOK, struct{}{})
}

// handleStream takes one chunk of a generator handler.
func (h *Host) handleStream(w http.ResponseWriter, r *http.Request) {
	res, ok := h.readBody(w, r)
	if !ok {
		return
	}
	l, ok := h.holder(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	out := res.Output
	if len(out) == 0 {
		out = json.RawMessage("null")
	}
	h.progress(ctx, h.log.With(zap.String("job_id", l.JobID)), l, proto.EventStream, out)
	runpod.WriteJSON(w, http.StatusOK, struct{}{})
}

// progress publishes a worker's chunk or progress value as an event,
// unless the job already ended (the SDK's progress thread may post after
// the result, §A.9), and counts it as a sign of life.
func (h *Host) progress(ctx context.Context, log *zap.Logger, l *lease, typ proto.EventType, output json.RawMessage) {
	rec, err := h.records.Get(ctx, l.JobID)
	if err == nil && (rec.Status.Terminal() || rec.Attempt != l.Attempt) {
		return
	}
	if err := h.events.Publish(ctx, &proto.Event{
		JobID: l.JobID, Type: typ, Attempt: l.Attempt, WorkerID: l.WorkerID, Output: output,
	}); err != nil {
		log.Warn("publish progress", zap.Error(err))
	}
	h.alive(ctx, l)
}

// alive renews a lease and keeps its message from being redelivered.
func (h *Host) alive(ctx context.Context, l *lease) {
	if ok, err := h.leases.renew(ctx, l.JobID, time.Now().Add(h.cfg.LeaseTimeout)); err != nil || !ok {
		return
	}
	h.inProgress(l.Reply)
}
