package jobtake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/proto"
)

// workerJob is a job as a RunPod worker receives it (§A.6): id and input,
// plus s3Config and webhook when the request had them. The input's images
// come back inline: a RunPod worker knows no blob store.
type workerJob struct {
	ID       string          `json:"id"`
	Input    json.RawMessage `json:"input"`
	S3Config *proto.S3Config `json:"s3Config,omitempty"`
	Webhook  string          `json:"webhook,omitempty"`
}

// handleTake serves job-take (one job, as an object) and job-take-batch
// (up to batch_size, as an array). An empty take is held up to TakeHold,
// then answered 204 with no body.
func (h *Host) handleTake(w http.ResponseWriter, r *http.Request) {
	batch := strings.Contains(r.URL.Path, "/job-take-batch/")
	raw, q := params(r, r.PathValue("worker"))
	wid := workerID(raw)
	n := 1
	if batch {
		if v, err := strconv.Atoi(q.Get("batch_size")); err == nil && v > 0 {
			n = min(v, h.cfg.MaxBatch)
		}
	}
	ctx := r.Context()
	pool := h.poolOf(r)
	h.mu.Lock()
	lanes := h.lanes[pool]
	h.mu.Unlock()
	if lanes == nil {
		runpod.WriteError(w, http.StatusServiceUnavailable, "the job-take host is not started")
		return
	}
	var jobs []workerJob
	var claims []*lifecycle.Claim
	deadline := time.Now().Add(h.cfg.TakeHold)
	for len(jobs) == 0 && ctx.Err() == nil && time.Now().Before(deadline) {
		msgs, err := lanes.Take(ctx, n, time.Until(deadline))
		if err != nil && !errors.Is(err, queue.ErrNoMessage) && ctx.Err() == nil {
			h.log.Warn("fetch job", zap.Error(err))
		}
		for _, m := range msgs {
			if ctx.Err() != nil {
				_ = m.Nak(0)
				continue
			}
			if j, cl := h.take(ctx, m, wid, raw); cl != nil {
				jobs, claims = append(jobs, *j), append(claims, cl)
			}
		}
	}
	if ctx.Err() != nil {
		// The worker left while the jobs were being leased to it.
		for _, cl := range claims {
			h.giveBack(context.WithoutCancel(ctx), cl, "the RunPod worker left before it got the job")
		}
		return
	}
	if literal(raw) {
		h.warnLiteral(raw)
	} else {
		h.beat(ctx, pool, wid, len(jobs) > 0 || q.Get("job_in_progress") == "1", "")
		if len(jobs) > 0 {
			h.trustRepoll(ctx, wid)
		}
	}
	if len(jobs) == 0 {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	for _, j := range jobs {
		h.log.Debug("job taken", zap.String("job_id", j.ID), zap.String("worker_id", wid))
	}
	if batch {
		runpod.WriteJSON(w, http.StatusOK, jobs)
		return
	}
	runpod.WriteJSON(w, http.StatusOK, jobs[0])
}

// take claims a delivered job for worker wid (a new attempt under a lease
// that names the delivery) and makes the job a RunPod worker sees. A
// delivery that cannot be taken is settled by the core and gives nil.
func (h *Host) take(ctx context.Context, m *queue.Message, wid, taker string) (*workerJob, *lifecycle.Claim) {
	job, err := proto.DecodeJob(m.Data())
	if err != nil {
		h.core.Discard(ctx, m, err.Error())
		return nil, nil
	}
	log := h.log.With(zap.String("job_id", job.ID), zap.String("worker_id", wid))
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	cl, err := h.core.Claim(fctx, m, job, lifecycle.Holder{WorkerID: wid, Taker: taker, LeaseTTL: h.cfg.LeaseTimeout, ExecTimeout: h.execTimeout(job)})
	if err != nil {
		log.Debug("job not taken", zap.Error(err))
		return nil, nil
	}
	input, err := runpod.InlineImages(fctx, h.blobs, job.Input)
	if err != nil {
		log.Warn("read the job's input images", zap.Error(err))
		h.giveBack(fctx, cl, "could not read the job's input images: "+err.Error())
		return nil, nil
	}
	return &workerJob{ID: job.ID, Input: input, S3Config: job.S3Config, Webhook: job.Webhook}, cl
}

// execTimeout is a job's execution bound: its policy's, or the host's.
func (h *Host) execTimeout(job *proto.Job) time.Duration {
	if p := job.Policy.ExecutionTimeout; p > 0 {
		return proto.Millis(p)
	}
	return h.cfg.ExecutionTimeout
}

// overdue reports whether a claim's job ran past its execution timeout.
// The deadline is by Redis's clock, compared with the host's: replicas
// and Redis are expected to keep their clocks in step (NTP), as the
// sweeper's own deadline check does within its grace.
func overdue(cl *lifecycle.Claim) bool {
	return !cl.Deadline.IsZero() && time.Now().After(cl.Deadline)
}

// timeOut ends a job that ran past its execution timeout TIMED_OUT, as
// RunPod fails it; the worker is told on job-stop when it polls.
func (h *Host) timeOut(ctx context.Context, cl *lifecycle.Claim) error {
	limit := "its execution timeout"
	if cl.Record != nil && !cl.Record.StartedAt.IsZero() {
		limit = cl.Deadline.Sub(cl.Record.StartedAt).Round(time.Millisecond).String()
	}
	msg := fmt.Sprintf("Job execution timed out after %s (policy.executionTimeout); the RunPod worker was told to stop it.", limit)
	err := h.core.Finish(ctx, cl, lifecycle.Result{Status: proto.StatusTimedOut, Error: msg})
	if err == nil {
		h.log.Info("job timed out on its RunPod worker", zap.String("job_id", cl.JobID), zap.String("worker_id", cl.WorkerID), zap.Int("attempt", cl.Attempt))
	}
	return err
}

// After the host answers a worker's job-stop poll, the SDK polls again
// at once, or after a second when the answer named no job. repollGrace
// covers that; blockedTrust is how far ahead the mark is put when the
// worker's next poll may be held back for as long as a synchronous
// handler blocks the SDK's event loop: a job taken in that second, or
// jobs still held after a stop.
const (
	repollGrace  = 2 * time.Second
	blockedTrust = 12 * time.Hour
)

// markAlive records the state of a worker's job-stop poll (see
// handleStop): at is the time from which its pings count down
// LivenessTimeout.
func (h *Host) markAlive(ctx context.Context, wid string, at time.Time) {
	if h.fleet == nil {
		return
	}
	if err := h.fleet.MarkAlive(context.WithoutCancel(ctx), wid, at, true); err != nil {
		h.log.Debug("mark RunPod worker alive", zap.String("worker_id", wid), zap.Error(err))
	}
}

// trustRepoll keeps a worker alive until its next job-stop poll when the
// SDK is between polls (the host answered the last one): a job it just
// took may block its event loop at once.
func (h *Host) trustRepoll(ctx context.Context, wid string) {
	if h.fleet == nil {
		return
	}
	at, ok, err := h.fleet.LastAlive(ctx, wid)
	if err == nil && ok && at.After(time.Now()) {
		h.markAlive(ctx, wid, time.Now().Add(blockedTrust))
	}
}

// liveness reports whether a worker's main process is taken to be alive
// (live): its job-stop poll is open, or was answered by the host and not
// followed by another yet, or was given up by the worker less than
// LivenessTimeout ago; and whether it polls job-stop at all (polls). A
// worker that never polled job-stop (an older SDK, whose pings are all
// there is) counts as live. On a Redis error it answers live: a lease is
// kept rather than lost to an outage.
func (h *Host) liveness(ctx context.Context, wid string) (live, polls bool) {
	if h.fleet == nil {
		return true, false
	}
	at, ok, err := h.fleet.LastAlive(ctx, wid)
	if err != nil {
		h.log.Debug("read mark of RunPod worker", zap.String("worker_id", wid), zap.Error(err))
		return true, false
	}
	return !ok || time.Since(at) <= h.cfg.LivenessTimeout, ok
}

// giveBack puts a taken job back on the queue at once, uncounted.
func (h *Host) giveBack(ctx context.Context, cl *lifecycle.Claim, reason string) {
	if err := h.core.Requeue(ctx, cl, lifecycle.Requeue{Reason: reason}); err != nil {
		h.log.Warn("give the job back", zap.String("job_id", cl.JobID), zap.Error(err))
	}
}

// beat announces a RunPod worker in the fleet registry, in the pool of
// its endpoint.
func (h *Host) beat(ctx context.Context, pool, wid string, busy bool, jobID string) {
	if h.fleet == nil {
		return
	}
	state := proto.WorkerIdle
	if busy {
		state = proto.WorkerRunning
	}
	if err := h.fleet.Beat(context.WithoutCancel(ctx), proto.Heartbeat{ID: wid, Pool: pool, State: state, JobID: jobID}); err != nil {
		h.log.Debug("heartbeat of RunPod worker", zap.String("worker_id", wid), zap.Error(err))
	}
}
