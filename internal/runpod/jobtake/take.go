package jobtake

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/status"
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
		n = 1
		if v, err := strconv.Atoi(q.Get("batch_size")); err == nil && v > 0 {
			n = min(v, h.cfg.MaxBatch)
		}
	}
	ctx := r.Context()
	var jobs []workerJob
	var leased []*lease
	deadline := time.Now().Add(h.cfg.TakeHold)
	for len(jobs) == 0 && ctx.Err() == nil && time.Now().Before(deadline) {
		msgs := h.fetch(ctx, n, time.Until(deadline))
		for _, m := range msgs {
			if ctx.Err() != nil {
				h.nak(m.Reply())
				continue
			}
			j, l := h.lease(ctx, m, wid, raw)
			if l != nil {
				jobs, leased = append(jobs, *j), append(leased, l)
			}
		}
	}
	if ctx.Err() != nil {
		// The worker left while the jobs were being leased to it.
		for _, l := range leased {
			h.giveBack(context.WithoutCancel(ctx), l, "the RunPod worker left before it got the job")
		}
		return
	}
	h.beat(ctx, wid, len(jobs) > 0 || q.Get("job_in_progress") == "1", "")
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

// fetch returns up to n deliveries, interactive lane first, waiting on
// the interactive lane (and looking at the batch lane between waits) for
// at most hold.
func (h *Host) fetch(ctx context.Context, n int, hold time.Duration) []jetstream.Msg {
	const lanePoll = 100 * time.Millisecond
	deadline := time.Now().Add(hold)
	for {
		var got []jetstream.Msg
		for _, c := range h.lanes {
			if len(got) >= n {
				break
			}
			b, err := c.FetchNoWait(n - len(got))
			if err != nil {
				h.log.Warn("fetch job", zap.Error(err))
				continue
			}
			for m := range b.Messages() {
				got = append(got, m)
			}
		}
		if len(got) > 0 {
			return got
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return nil
		}
		fctx, cancel := context.WithTimeout(ctx, min(left, lanePoll))
		m, err := h.lanes[0].Next(jetstream.FetchContext(fctx))
		cancel()
		if err == nil {
			return []jetstream.Msg{m}
		}
	}
}

// lease claims a delivered job for worker wid: a new attempt in Redis, a
// lease with the delivery's ack subject, an IN_PROGRESS event. Deliveries
// that cannot be leased are settled here and give nil.
func (h *Host) lease(ctx context.Context, m jetstream.Msg, wid, taker string) (*workerJob, *lease) {
	job, err := proto.DecodeJob(m.Data())
	if err != nil {
		h.log.Error("undecodable job message, terminating it", zap.Error(err))
		_ = m.Term()
		return nil, nil
	}
	log := h.log.With(zap.String("job_id", job.ID), zap.String("worker_id", wid))
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	attempt, _, err := h.records.Claim(fctx, job.ID, wid)
	switch {
	case errors.Is(err, status.ErrTerminal), errors.Is(err, status.ErrNotFound):
		// Cancelled or expired while queued: it never starts.
		_ = m.DoubleAck(fctx)
		return nil, nil
	case err != nil:
		log.Warn("claim job", zap.Error(err))
		_ = m.NakWithDelay(time.Second)
		return nil, nil
	}
	l := &lease{JobID: job.ID, Attempt: attempt, WorkerID: wid, Taker: taker, Reply: m.Reply()}
	input, err := runpod.InlineImages(fctx, h.blobs, job.Input)
	if err == nil {
		err = h.leases.put(fctx, *l, time.Now().Add(h.cfg.LeaseTimeout))
	}
	if err != nil {
		log.Warn("lease job", zap.Error(err))
		h.giveBack(fctx, l, "could not lease the job: "+err.Error())
		return nil, nil
	}
	h.event(fctx, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusInProgress, Attempt: attempt, WorkerID: wid})
	return &workerJob{ID: job.ID, Input: input, S3Config: job.S3Config, Webhook: job.Webhook}, l
}

// giveBack puts a leased job back on the queue at once.
func (h *Host) giveBack(ctx context.Context, l *lease, reason string) {
	if _, err := h.records.Requeue(ctx, l.JobID, l.Attempt, reason); err != nil {
		h.log.Warn("requeue job", zap.String("job_id", l.JobID), zap.Error(err))
	} else {
		h.event(ctx, &proto.Event{JobID: l.JobID, Type: proto.EventStatus, Status: proto.StatusInQueue, Attempt: l.Attempt, WorkerID: l.WorkerID, Error: reason})
	}
	h.nak(l.Reply)
	if err := h.leases.drop(ctx, l); err != nil {
		h.log.Warn("drop lease", zap.String("job_id", l.JobID), zap.Error(err))
	}
}

// beat announces a RunPod worker in the fleet registry.
func (h *Host) beat(ctx context.Context, wid string, busy bool, jobID string) {
	if h.fleet == nil {
		return
	}
	state := fleet.StateIdle
	if busy {
		state = fleet.StateRunning
	}
	if err := h.fleet.Beat(context.WithoutCancel(ctx), fleet.Worker{ID: wid, Pool: h.cfg.Pool, State: state, JobID: jobID}); err != nil {
		h.log.Debug("heartbeat of RunPod worker", zap.String("worker_id", wid), zap.Error(err))
	}
}
