package serverless

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/jobview"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/proto"
)

// chunkBuffer bounds the progress chunks waiting to be posted for one job;
// past it the oldest progress is dropped (the next one supersedes it).
const chunkBuffer = 256

// run carries one RunPod job to its end: its result posted to job-done,
// or nothing when the platform stopped it or the worker gave it up.
func (w *Worker) run(ctx context.Context, h *heldJob) {
	defer w.release(h)
	log := w.log.With(zap.String("job_id", h.job.ID), zap.String("fleet_job_id", h.fleetID))
	body, report := w.execute(ctx, log, h)
	if !report {
		return
	}
	if w.cfg.RefreshWorker {
		body = withStopPod(body)
		w.mu.Lock()
		w.refreshing = true
		w.mu.Unlock()
	}
	if err := w.plat.post(ctx, w.u.doneURL(h.job.ID, false), h.job.ID, body); err != nil {
		// As in the SDK, the result is lost to RunPod now; the fleet
		// keeps it for its retention.
		log.Error("post job result", zap.Error(err))
		return
	}
	log.Debug("job reported")
}

// execute submits the job to the fleet and waits for its end, streaming
// its progress meanwhile. It returns the job-done body, or report=false
// when nothing must be posted.
func (w *Worker) execute(ctx context.Context, log *zap.Logger, h *heldJob) (body []byte, report bool) {
	in, err := proto.DecodeInput(h.job.Input)
	if err == nil {
		err = in.CheckBlobs(w.cfg.Tenant)
	}
	if err != nil {
		return errorBody(err.Error()), true
	}
	fj := &proto.Job{
		V:        proto.Version,
		ID:       h.fleetID,
		Input:    h.job.Input,
		S3Config: h.job.S3Config,
		Pool:     w.cfg.Pool,
		Source:   proto.SourceRunPod,
		Tenant:   w.cfg.Tenant,
	}
	fj.Place(w.cfg.Pool, time.Now())

	// Subscribe before submitting so no event is missed.
	wake := make(chan struct{}, 1)
	var stopEvents func()
	bo := backoff.New(200*time.Millisecond, 10*time.Second)
	for {
		if stopEvents, err = w.d.Queue.SubscribeEvents(h.fleetID, func(*proto.Event) {
			select {
			case wake <- struct{}{}:
			default:
			}
		}); err == nil {
			break
		}
		log.Warn("subscribe to job events", zap.Error(err))
		if !w.pause(ctx, h, bo) {
			return nil, false
		}
	}
	defer stopEvents()
	// Chunks from before this worker took the job (a job RunPod handed out
	// again) were streamed by the worker that had it.
	var cursor uint64
	if last, err := w.d.Queue.LastEvent(ctx, h.fleetID); err == nil && last != nil {
		cursor = last.Seq
	}
	for first := true; ; first = false {
		if !first {
			// The images a try moved are marked in in; start again from
			// the input as it came.
			in, _ = proto.DecodeInput(h.job.Input)
		}
		if fj.Input, err = runpod.OffloadImages(ctx, w.d.Blobs, w.cfg.Tenant, h.fleetID, h.job.Input, in, w.cfg.InlineBlobMax); err == nil {
			if _, err = runpod.FitMessage(ctx, w.d.Blobs, fj, in, w.d.Queue.MaxJobMessage()); err == nil {
				// Recorded at once, so the job's status is there to poll.
				err = w.d.Core.Submit(ctx, proto.SourceRunPod, fj, true)
			}
		}
		var ie *proto.InputError
		var tl *queue.TooLargeError
		switch {
		case err == nil, errors.Is(err, queue.ErrDuplicate):
		case errors.As(err, &ie):
			return errorBody(ie.Error()), true
		case errors.As(err, &tl):
			// No try can fit it: the RunPod job ends FAILED with the
			// reason instead of being tried again for ever.
			return errorBody(runpod.TooLargeMessage(tl)), true
		default:
			log.Warn("submit job to the fleet", zap.Error(err))
			if !w.pause(ctx, h, bo) {
				return nil, false
			}
			continue
		}
		break
	}
	chunks := make(chan json.RawMessage, chunkBuffer)
	streamed := make(chan struct{})
	go w.streamChunks(ctx, log, h.job.ID, chunks, streamed)
	forward := func() {
		evs, last, err := w.d.Queue.ReadEvents(ctx, h.fleetID, cursor, 1000)
		if err != nil {
			log.Debug("read job events", zap.Error(err))
			return
		}
		cursor = last
		for _, ev := range evs {
			c, ok := jobview.Chunk(&ev.Event)
			if !ok {
				continue
			}
			select {
			case chunks <- c:
			default: // the platform is slower than the progress
			}
		}
	}
	finish := func() { close(chunks); <-streamed }

	poll := time.NewTicker(w.cfg.PollInterval)
	defer poll.Stop()
	for {
		rec, err := w.d.Core.Get(ctx, h.fleetID)
		if err != nil && !errors.Is(err, rdb.ErrNotFound) && ctx.Err() == nil {
			log.Debug("read job status", zap.Error(err))
		}
		if err == nil && rec.Status.Terminal() {
			forward()
			finish()
			if h.isStopped() {
				return nil, false
			}
			return w.resultBody(ctx, rec), true
		}
		forward()
		select {
		case <-wake:
		case <-poll.C:
		case <-h.stop:
			finish()
			w.cancelFleetJob(ctx, log, h.fleetID)
			log.Info("job stopped by the platform")
			return nil, false
		case <-ctx.Done():
			finish()
			return nil, false
		}
	}
}

func (h *heldJob) isStopped() bool {
	select {
	case <-h.stop:
		return true
	default:
		return false
	}
}

// pause waits out a backoff step; false when the job must be given up.
func (w *Worker) pause(ctx context.Context, h *heldJob, bo *backoff.Backoff) bool {
	t := time.NewTimer(bo.Next())
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-h.stop:
		return false
	case <-ctx.Done():
		return false
	}
}

// cancelFleetJob cancels the fleet job of a job the platform stopped.
func (w *Worker) cancelFleetJob(ctx context.Context, log *zap.Logger, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := w.d.Core.Cancel(ctx, id); err != nil && !errors.Is(err, rdb.ErrTerminal) && !errors.Is(err, rdb.ErrNotFound) {
		log.Warn("cancel fleet job", zap.Error(err))
	}
}

// streamChunks posts each chunk to job-stream in order, each awaited
// before the next, until chunks is closed.
func (w *Worker) streamChunks(ctx context.Context, log *zap.Logger, jobID string, chunks <-chan json.RawMessage, done chan<- struct{}) {
	defer close(done)
	for c := range chunks {
		if w.cfg.PostStreamURL == "" || ctx.Err() != nil {
			continue
		}
		body, _ := json.Marshal(struct {
			Output json.RawMessage `json:"output"`
		}{c})
		if err := w.plat.post(ctx, w.u.streamURL(jobID), jobID, body); err != nil {
			log.Warn("post stream chunk", zap.Error(err))
		}
	}
}

// resultBody is the job-done body for a finished fleet job, shaped as the
// SDK shapes a handler's return (§A.7): {"output": …} on success;
// {"error": "…"} on failure, with "output" holding whatever else the
// failure carried (worker-comfyui's "details").
func (w *Worker) resultBody(ctx context.Context, rec *proto.Record) []byte {
	view, err := jobview.Build(ctx, w.d.Blobs, rec)
	if err != nil {
		return errorBody("read the job's output: " + err.Error())
	}
	switch rec.Status {
	case proto.StatusCompleted:
		out := view.Output
		if len(out) == 0 {
			out = json.RawMessage("null")
		}
		body, _ := json.Marshal(struct {
			Output json.RawMessage `json:"output"`
		}{out})
		return body
	case proto.StatusCancelled:
		return errorBody("the job was cancelled in the fleet")
	}
	msg := rec.Error
	if msg == "" {
		msg = "job " + string(rec.Status)
	}
	var rest map[string]json.RawMessage
	if json.Unmarshal(view.Output, &rest) == nil {
		delete(rest, "error")
	}
	if len(rest) == 0 {
		return errorBody(msg)
	}
	out, _ := json.Marshal(rest)
	body, _ := json.Marshal(struct {
		Output json.RawMessage `json:"output"`
		Error  string          `json:"error"`
	}{out, msg})
	return body
}

func errorBody(msg string) []byte {
	body, _ := json.Marshal(map[string]string{"error": msg})
	return body
}

// withStopPod adds "stopPod": true to a result body (refresh_worker).
func withStopPod(body []byte) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return body
	}
	m["stopPod"] = json.RawMessage("true")
	out, err := json.Marshal(m)
	if err != nil {
		return body
	}
	return out
}
