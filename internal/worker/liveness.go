package worker

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Liveness is what the worker needs of the status store for the
// dispatcher's safety nets: a lease on each running job (so the job of a
// worker that dies is handed back at once), the TTL check at claim time,
// and the attempt log a dead letter carries. *status.Store has it; a store
// without it (a test fake) runs jobs without these, and counts attempts by
// their number.
type Liveness interface {
	Expire(ctx context.Context, id, errMsg string) (*proto.Record, error)
	Lease(ctx context.Context, l status.Lease, ttl time.Duration) error
	Renew(ctx context.Context, id string, attempt int, ttl time.Duration) error
	Release(ctx context.Context, id string, attempt int) error
	AddAttemptError(ctx context.Context, id string, attempt int, msg string) (int, error)
	AttemptErrors(ctx context.Context, id string) ([]string, error)
}

var _ Liveness = (*status.Store)(nil)

// ttlExpiredMessage is the error of a job whose TTL ran out in the queue.
const ttlExpiredMessage = "Job expired: it was still queued when its TTL (policy.ttl) ran out."

// expired reports whether the job's TTL ran out before this delivery.
func expired(job *proto.Job, now time.Time) bool {
	if job.SubmittedAt.IsZero() {
		return false
	}
	ttl := status.DefaultTTL
	if job.Policy.TTL > 0 {
		ttl = time.Duration(job.Policy.TTL) * time.Millisecond
	}
	return now.After(job.SubmittedAt.Add(ttl))
}

// leaseTTL is how long a job's lease lasts without renewal.
func (w *Worker) leaseTTL() time.Duration {
	if w.cfg.LeaseTTL > 0 {
		return w.cfg.LeaseTTL
	}
	if w.fleet != nil {
		return w.fleet.TTL()
	}
	return w.cfg.AckWait
}

// heldLease is the worker's lease on a delivery it holds. It is taken as
// soon as the job arrives, with attempt 0 (so a worker that dies before it
// claims the job still has its delivery handed back), and rewritten with
// the attempt once claimed. Renewal follows the process, not the job's
// progress: a stuck prompt is the stall timeout's business.
type heldLease struct {
	w     *Worker
	l     status.Lease
	ttl   time.Duration
	log   *zap.Logger
	mu    sync.Mutex
	done  chan struct{}
	ended chan struct{}
}

// takeLease leases the delivery and renews it every third of its TTL
// until release.
func (w *Worker) takeLease(msg *queue.Message, job *proto.Job, log *zap.Logger) *heldLease {
	if w.live == nil {
		return nil
	}
	h := &heldLease{w: w, ttl: w.leaseTTL(), log: log, done: make(chan struct{}), ended: make(chan struct{}),
		l: status.Lease{JobID: job.ID, WorkerID: w.cfg.ID, Reply: msg.Reply()}}
	h.write()
	go h.renew()
	return h
}

func (h *heldLease) write() {
	h.mu.Lock()
	l := h.l
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), finalWriteTimeout)
	defer cancel()
	if err := h.w.live.Lease(ctx, l, h.ttl); err != nil {
		h.log.Warn("take job lease", zap.Error(err))
	}
}

func (h *heldLease) renew() {
	defer close(h.ended)
	t := time.NewTicker(h.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-t.C:
			h.mu.Lock()
			id, attempt := h.l.JobID, h.l.Attempt
			h.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), h.ttl/3)
			if err := h.w.live.Renew(ctx, id, attempt, h.ttl); err != nil {
				h.log.Warn("renew job lease", zap.Error(err))
			}
			cancel()
		}
	}
}

// claimed rewrites the lease with the claimed attempt and its deadline.
func (h *heldLease) claimed(attempt int, deadline time.Time) {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.l.Attempt, h.l.Deadline = attempt, deadline
	h.mu.Unlock()
	h.write()
}

// release stops the renewals and ends the lease.
func (h *heldLease) release() {
	if h == nil {
		return
	}
	close(h.done)
	<-h.ended
	ctx, cancel := context.WithTimeout(context.Background(), finalWriteTimeout)
	defer cancel()
	if err := h.w.live.Release(ctx, h.l.JobID, h.l.Attempt); err != nil {
		h.log.Warn("release job lease", zap.Error(err))
	}
}

// failedAttempts logs this attempt's error and returns how many attempts
// of the job failed so far; without an attempt log it is the attempt
// number.
func (w *Worker) failedAttempts(ctx context.Context, id string, attempt int, reason string, log *zap.Logger) int {
	if w.live == nil {
		return attempt
	}
	n, err := w.live.AddAttemptError(ctx, id, attempt, reason)
	if err != nil {
		log.Warn("log failed attempt", zap.Error(err))
		return attempt
	}
	return n
}

// attemptErrors returns the job's attempt log, or just last without one.
func (w *Worker) attemptErrors(ctx context.Context, id, last string) []string {
	if w.live != nil {
		if errs, err := w.live.AttemptErrors(ctx, id); err == nil && len(errs) > 0 {
			return errs
		}
	}
	return []string{last}
}

// retryDelay grows base exponentially with the failed attempts, with
// jitter (drawn from the upper half), capped at 16×base.
func retryDelay(base time.Duration, failures int) time.Duration {
	if base <= 0 {
		return 0
	}
	d := base << min(max(failures-1, 0), 4)
	return d/2 + rand.N(d/2+1)
}

// ackFinished acks the delivery of a job whose final status is written,
// retrying with backoff for a while: an ack lost while NATS restarts would
// otherwise leave the message to come back only after AckWait.
func (w *Worker) ackFinished(ctx context.Context, msg *queue.Message, log *zap.Logger) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*finalWriteTimeout)
	defer cancel()
	bo := backoff.New(100*time.Millisecond, 2*time.Second)
	for {
		tctx, tcancel := context.WithTimeout(actx, 2*time.Second)
		err := msg.Ack(tctx)
		tcancel()
		if err == nil {
			return
		}
		if !bo.Wait(actx) {
			log.Warn("ack job", zap.Error(err))
			return
		}
	}
}
