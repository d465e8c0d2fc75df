package jobtake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
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

// holder finds the claim of the job named in the path (cut at "&") and
// checks that the posting worker holds it; ok is false when it does not,
// in which case it answered with a 4xx, which makes the SDK drop the post
// (a progress update is answered 200 instead: see handleDone).
func (h *Host) holder(w http.ResponseWriter, r *http.Request, progress bool) (*lifecycle.Claim, bool) {
	id, _ := params(r, r.PathValue("job"))
	name, _ := params(r, r.PathValue("worker"))
	if err := proto.ValidID(id); err != nil {
		runpod.WriteError(w, http.StatusBadRequest, "job id: "+err.Error())
		return nil, false
	}
	cl, err := h.core.Resume(r.Context(), id)
	if err != nil && !errors.Is(err, rdb.ErrLeaseLost) {
		h.unavailable(w, "read lease", err)
		return nil, false
	}
	code, msg := 0, ""
	switch {
	case err != nil:
		// Given back (the worker went quiet too long), finished through
		// another path, or never taken here: a 4xx makes the SDK drop
		// it, which is right, since another attempt owns the job now.
		code, msg = http.StatusNotFound, fmt.Sprintf("job %s is not held by a worker here (its lease ended)", id)
	case !heldBy(cl, name):
		// The worker lost the job (it went quiet too long) and another
		// attempt holds it now: this post is fenced out.
		code, msg = http.StatusConflict, fmt.Sprintf("job %s is held by another worker now (attempt %d); this result is dropped", id, cl.Attempt)
	default:
		return cl, true
	}
	if progress {
		// The SDK's progress_update posts from a thread of its own, which
		// may land after the job's result (§A.9): it is accepted and
		// ignored, so that the worker logs no failure for it.
		h.log.Debug("progress update of a job this worker no longer holds, ignored", zap.String("job_id", id), zap.String("worker", name))
		runpod.WriteJSON(w, http.StatusOK, struct{}{})
		return nil, false
	}
	h.log.Info("post for a job this worker does not hold", zap.String("job_id", id), zap.String("worker", name), zap.Int("status", code))
	runpod.WriteError(w, code, msg)
	return nil, false
}

// heldBy reports whether a worker that names itself name in a URL holds
// the claim. A worker whose take template carried the literal
// "$RUNPOD_POD_ID" (§A.3) took the job under that name but posts under
// its real one; such a lease cannot be checked and is taken on trust.
func heldBy(cl *lifecycle.Claim, name string) bool {
	return cl.Taker == name || strings.Contains(cl.Taker, "$")
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
	cl, ok := h.holder(w, r, res.Progress)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	log := h.log.With(zap.String("job_id", cl.JobID), zap.String("worker_id", cl.WorkerID), zap.Int("attempt", cl.Attempt))
	if res.Progress {
		h.progress(ctx, log, cl, proto.EventProgressUpdate, res.Output)
		runpod.WriteJSON(w, http.StatusOK, struct{}{})
		return
	}
	if overdue(cl) {
		// The result came after the job's execution timeout: RunPod has
		// failed the job by then, and so does the host; the result is
		// dropped.
		log.Info("result after the job's execution timeout, dropped")
		if err := h.timeOut(ctx, cl); err != nil && !errors.Is(err, lifecycle.ErrEnded) && !errors.Is(err, lifecycle.ErrLeaseLost) {
			h.unavailable(w, "write job status", err)
			return
		}
		h.beatPoster(ctx, r)
		runpod.WriteJSON(w, http.StatusOK, struct{}{})
		return
	}
	result := lifecycle.Result{Status: proto.StatusCompleted, Output: res.Output, Error: res.Error}
	if res.Error != "" {
		result.Status = proto.StatusFailed
	}
	if result.Status == proto.StatusCompleted && len(result.Output) == 0 {
		result.Output = json.RawMessage("null")
	}
	if len(result.Output) > 0 {
		var err error
		if result.Output, err = storeOutput(ctx, h.blobs, cl.JobID, cl.Attempt, result.Output); err != nil {
			h.unavailable(w, "store output files", err)
			return
		}
	}
	err := h.core.Finish(ctx, cl, result)
	switch {
	case err == nil:
		log.Debug("job done", zap.String("status", string(result.Status)))
	case errors.Is(err, lifecycle.ErrEnded):
		// Cancelled (or expired) while it ran: the message is done.
		log.Info("result of a job that had already ended", zap.Error(err))
	case errors.Is(err, lifecycle.ErrLeaseLost):
		// A newer attempt holds the job; its delivery will be acked.
		log.Warn("result fenced out by a newer attempt", zap.Error(err))
	default:
		h.unavailable(w, "write job status", err)
		return
	}
	if res.StopPod {
		log.Info("the worker asked to be recycled after this job (refresh_worker); restart it to honour that")
	}
	h.beatPoster(ctx, r)
	runpod.WriteJSON(w, http.StatusOK, struct{}{})
}

// beatPoster announces the worker that posted a job's result as idle,
// under the name its post URL gives (for a template whose take URL named
// no worker, the lease's holder is not that worker's id).
func (h *Host) beatPoster(ctx context.Context, r *http.Request) {
	name, _ := params(r, r.PathValue("worker"))
	if !literal(name) {
		h.beat(ctx, h.poolOf(r), workerID(name), false, "")
	}
}

// handleStream takes one chunk of a generator handler.
func (h *Host) handleStream(w http.ResponseWriter, r *http.Request) {
	res, ok := h.readBody(w, r)
	if !ok {
		return
	}
	cl, ok := h.holder(w, r, false)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	out := res.Output
	if len(out) == 0 {
		out = json.RawMessage("null")
	}
	h.progress(ctx, h.log.With(zap.String("job_id", cl.JobID)), cl, proto.EventStream, out)
	runpod.WriteJSON(w, http.StatusOK, struct{}{})
}

// progress publishes a worker's chunk or progress value as an event,
// unless the job already ended (the SDK's progress thread may post after
// the result, §A.9), and counts it as a sign of life, unless the job ran
// past its execution timeout (its worker is being told to stop it).
func (h *Host) progress(ctx context.Context, log *zap.Logger, cl *lifecycle.Claim, typ proto.EventType, output json.RawMessage) {
	if overdue(cl) {
		log.Debug("progress after the job's execution timeout, ignored")
		return
	}
	if err := h.core.Chunk(ctx, cl, typ, output); err != nil {
		log.Warn("publish progress", zap.Error(err))
	}
	if err := h.core.Renew(ctx, cl); err != nil {
		log.Debug("renew lease", zap.Error(err))
	}
}
