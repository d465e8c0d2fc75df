package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Holder says who claims a job and on what terms.
type Holder struct {
	// WorkerID is the fleet's id of the worker.
	WorkerID string
	// Taker is the name a RunPod worker used in its take URL; "" for
	// gpuworkers.
	Taker string
	// LeaseTTL is how long the lease lasts without a renewal; renew it
	// every third of it.
	LeaseTTL time.Duration
	// ExecTimeout bounds the attempt: a job whose worker goes silent past
	// it (plus the sweeper's grace) ends TIMED_OUT. Zero: no deadline.
	ExecTimeout time.Duration
	// MaxAttempts bounds the attempts that may fail in a way worth
	// retrying; 0 means no bound.
	MaxAttempts int
}

// Claim is one attempt of a job, held by one worker under a lease. Every
// later operation of the attempt names it.
type Claim struct {
	rdb.Lease
	// Job is the job message, decoded; nil for a claim resumed from its
	// lease alone (Resume).
	Job *proto.Job
	// Record is the record as the claim left it.
	Record *proto.Record
	// Failures is how many earlier attempts failed.
	Failures int

	data        []byte // the job message, for its dead letter
	maxAttempts int
}

// Tenant is the tenant that owns the claim's job.
func (cl *Claim) Tenant() string {
	switch {
	case cl.Record != nil:
		return cl.Record.Tenant
	case cl.Job != nil:
		return cl.Job.Tenant
	}
	return ""
}

// Claim gives a delivered job to a worker: a new attempt, IN_PROGRESS,
// under a lease that names the delivery, and the IN_PROGRESS event. When
// the job cannot be run it settles the delivery and says why: ErrEnded
// (acked; a dead letter still owed by the job's last attempt is written
// first), ErrHeld (given back until the live holder's lease would lapse),
// ErrUsedUp (the attempt log is full: FAILED, dead-lettered, acked). A job
// message whose record is missing (lost with a Redis that kept no data,
// or expired) gets its record made again from the message, and counted.
// Any other error leaves the delivery NAKed for a later try.
func (c *Core) Claim(ctx context.Context, msg *queue.Message, job *proto.Job, h Holder) (*Claim, error) {
	p := rdb.ClaimParams{ID: job.ID, WorkerID: h.WorkerID, Taker: h.Taker, Reply: msg.Reply(),
		LeaseTTL: h.LeaseTTL, ExecTimeout: h.ExecTimeout}
	log := c.log.With(zap.String("job_id", job.ID), zap.String("worker_id", h.WorkerID))
	got, err := c.db.Claim(ctx, p)
	if errors.Is(err, rdb.ErrNotFound) {
		if _, _, err = c.db.Create(ctx, rdb.ParamsFor(job), job.SubmittedAt, true); err == nil {
			log.Warn("job message had no status record (lost or expired); recorded it again")
			got, err = c.db.Claim(ctx, p)
		}
	}
	var held *rdb.HeldError
	switch {
	case err == nil:
	case errors.Is(err, rdb.ErrTerminal):
		if rdb.DeadLetterOwed(err) {
			var te *rdb.TransitionError
			errors.As(err, &te)
			if derr := c.deadLetter(ctx, job, msg.Data(), te.Current); derr != nil {
				c.nak(job.ID, msg.Reply(), time.Second)
				return nil, derr
			}
		}
		c.ack(ctx, job.ID, msg.Reply())
		return nil, wrap("claim", job.ID, ErrEnded)
	case errors.Is(err, rdb.ErrExpired):
		log.Info("job expired in the queue")
		c.status(ctx, &proto.Event{JobID: job.ID, Tenant: job.Tenant, Status: proto.StatusTimedOut, Error: proto.MsgTTLExpired})
		c.ack(ctx, job.ID, msg.Reply())
		return nil, wrap("claim", job.ID, ErrEnded)
	case errors.As(err, &held):
		c.nak(job.ID, msg.Reply(), held.Left+50*time.Millisecond)
		return nil, wrap("claim", job.ID, ErrHeld)
	default:
		c.nak(job.ID, msg.Reply(), time.Second)
		return nil, err
	}
	cl := &Claim{Lease: got.Lease, Job: job, Record: got.Record, Failures: got.Failures, data: msg.Data(), maxAttempts: h.MaxAttempts}
	if h.MaxAttempts > 0 && got.Failures >= h.MaxAttempts {
		// Its earlier attempts all failed (their workers died, or their
		// ComfyUI did) before this one could start.
		errs, _ := c.db.AttemptErrors(ctx, job.ID)
		msgText := fmt.Sprintf("Job failed after %d attempts; the last: %s", got.Failures, last(errs))
		out, _ := json.Marshal(proto.Failure{Error: msgText, Details: errs})
		log.Warn("job used up its attempts before this one", zap.Int("max_attempts", h.MaxAttempts))
		if err := c.Finish(ctx, cl, Result{Status: proto.StatusFailed, Output: out, Error: msgText, DeadLetter: true}); err != nil {
			return nil, err
		}
		return nil, wrap("claim", job.ID, ErrUsedUp)
	}
	c.status(ctx, &proto.Event{JobID: job.ID, Tenant: cl.Tenant(), Status: proto.StatusInProgress, Attempt: cl.Attempt, WorkerID: h.WorkerID})
	return cl, nil
}

func last(errs []string) string {
	if len(errs) == 0 {
		return ""
	}
	return errs[len(errs)-1]
}

// Resume rebuilds the claim of a job from its lease, for a holder whose
// result reaches another process than the one that claimed it (a RunPod
// worker's job-done reaching any adapter replica). rdb.ErrLeaseLost when
// the job has no lease.
func (c *Core) Resume(ctx context.Context, jobID string) (*Claim, error) {
	l, err := c.db.Lease(ctx, jobID)
	if err != nil {
		return nil, err
	}
	rec, err := c.db.Get(ctx, jobID)
	if err != nil {
		return nil, err
	}
	return &Claim{Lease: *l, Record: rec}, nil
}

// Held lists the jobs leased to a worker.
func (c *Core) Held(ctx context.Context, workerID string) ([]string, error) {
	return c.db.Held(ctx, workerID)
}

// Renew extends the claim's lease by its TTL and keeps its delivery from
// being redelivered. ErrLeaseLost: the job went to another attempt; stop
// and write nothing. ErrEnded: the job was cancelled while it ran; stop
// (the delivery is acked and the lease released here). Other errors (Redis
// unreachable) leave the lease as it is, and the delivery is kept all the
// same: redelivered to another worker, its claim could take the lease that
// lapsed meanwhile as soon as Redis is back, before this renewal revives
// it. Try again at the next renewal.
func (c *Core) Renew(ctx context.Context, cl *Claim) error {
	err := c.db.Renew(ctx, cl.JobID, cl.Attempt, cl.TTL)
	switch {
	case errors.Is(err, rdb.ErrLeaseLost):
		return wrap("renew lease of", cl.JobID, ErrLeaseLost)
	case errors.Is(err, rdb.ErrTerminal):
		c.settleEnded(ctx, cl)
		return wrap("renew lease of", cl.JobID, ErrEnded)
	}
	if cl.Reply != "" {
		if err := c.q.InProgress(cl.Reply); err != nil {
			c.log.Debug("heartbeat job message", zap.String("job_id", cl.JobID), zap.Error(err))
		}
	}
	return err
}

// settleEnded acks the delivery of a claim whose job ended elsewhere (a
// cancel) and releases its lease.
func (c *Core) settleEnded(ctx context.Context, cl *Claim) {
	c.ack(ctx, cl.JobID, cl.Reply)
	if err := retry(ctx, tryTimeout, func(ctx context.Context) error { return c.db.Release(ctx, cl.JobID, cl.Attempt) }); err != nil {
		c.log.Warn("release lease", zap.String("job_id", cl.JobID), zap.Error(err))
	}
}

// Cancelled settles a claim whose job its worker stopped on a cancel: the
// record is made CANCELLED if the canceller's write did not land (a
// terminal record is left as it is), the delivery acked and the lease
// released.
func (c *Core) Cancelled(ctx context.Context, cl *Claim) {
	_, _, err := c.db.Cancel(context.WithoutCancel(ctx), cl.JobID)
	if err == nil {
		c.status(ctx, &proto.Event{JobID: cl.JobID, Tenant: cl.Tenant(), Status: proto.StatusCancelled, Attempt: cl.Attempt, WorkerID: cl.WorkerID})
	} else if !errors.Is(err, rdb.ErrTerminal) && !errors.Is(err, rdb.ErrNotFound) {
		c.log.Warn("mark cancelled job", zap.String("job_id", cl.JobID), zap.Error(err))
	}
	c.settleEnded(ctx, cl)
}

// Requeue says how an attempt gives its job back.
type Requeue struct {
	// Reason is why, for the record and the event.
	Reason string
	// Delay is the wait before the job is redelivered. For a counted
	// requeue it is the base of an exponential backoff over the failed
	// attempts (RetryDelay).
	Delay time.Duration
	// Counted makes the attempt a failure in the job's attempt log; when
	// that uses up the holder's MaxAttempts the job ends with Final
	// instead, dead-lettered. An uncounted requeue (the worker is stopping,
	// the job waits for a warm worker) costs the job nothing but a retry.
	Counted bool
	// Final is the job's ending when the attempts are used up.
	Final Result
}

// Requeue gives the claim's job back to the queue: IN_QUEUE, its delivery
// NAKed (after the delay), the IN_QUEUE event. ErrLeaseLost and ErrEnded
// as for Renew.
func (c *Core) Requeue(ctx context.Context, cl *Claim, r Requeue) error {
	var failures int
	err := retry(ctx, tryTimeout, func(ctx context.Context) error {
		var err error
		failures, _, err = c.db.Requeue(ctx, cl.JobID, cl.Attempt, r.Reason, r.Counted, cl.maxAttempts)
		return err
	})
	log := c.log.With(zap.String("job_id", cl.JobID), zap.Int("attempt", cl.Attempt))
	switch {
	case errors.Is(err, rdb.ErrExhausted):
		log.Warn("job failed on its last attempt", zap.String("reason", r.Reason), zap.Int("max_attempts", cl.maxAttempts))
		final := r.Final
		final.DeadLetter = true
		return c.Finish(ctx, cl, final)
	case errors.Is(err, rdb.ErrTerminal):
		c.settleEnded(ctx, cl)
		return wrap("requeue", cl.JobID, ErrEnded)
	case errors.Is(err, rdb.ErrStale):
		return wrap("requeue", cl.JobID, ErrLeaseLost)
	case err != nil:
		// Redis stayed away: the delivery comes back, and once this
		// attempt's lease lapses the next claim takes over.
		c.nak(cl.JobID, cl.Reply, time.Second)
		return wrap("requeue", cl.JobID, err)
	}
	delay := r.Delay
	if r.Counted {
		delay = RetryDelay(r.Delay, failures)
	}
	c.status(ctx, &proto.Event{JobID: cl.JobID, Tenant: cl.Tenant(), Status: proto.StatusInQueue, Attempt: cl.Attempt, WorkerID: cl.WorkerID, Error: r.Reason})
	c.nak(cl.JobID, cl.Reply, delay)
	log.Info("job back on the queue", zap.String("reason", r.Reason), zap.Duration("delay", delay))
	return nil
}

// Result is how an attempt ends its job.
type Result struct {
	// Status is COMPLETED, FAILED or TIMED_OUT.
	Status proto.Status
	// Output is the record's output JSON: a proto.Output, or a
	// proto.Failure.
	Output json.RawMessage
	// Error is the failure message of FAILED and TIMED_OUT.
	Error string
	// DeadLetter puts the job on its pool's dead-letter stream.
	DeadLetter bool
}

// Finish ends the claim's job: the fenced terminal write (tried again for
// a while when Redis is away), the dead letter when asked, durable before
// the delivery is acked (a failed publish leaves the delivery to come
// back, and whoever gets it writes the dead letter), the final event, the
// ack. ErrLeaseLost and ErrEnded as for Renew.
func (c *Core) Finish(ctx context.Context, cl *Claim, res Result) error {
	if len(res.Output) == 0 && res.Status != proto.StatusCompleted {
		res.Output, _ = json.Marshal(proto.Failure{Error: res.Error})
	}
	err := retry(ctx, tryTimeout, func(ctx context.Context) error {
		if cl.Reply != "" {
			_ = c.q.InProgress(cl.Reply) // keep the delivery while Redis is away
		}
		_, err := c.db.Finish(ctx, cl.JobID, cl.Attempt, res.Status, res.Output, res.Error, res.DeadLetter)
		return err
	})
	switch {
	case errors.Is(err, rdb.ErrStale):
		return wrap("finish", cl.JobID, ErrLeaseLost)
	case errors.Is(err, rdb.ErrTerminal):
		c.settleEnded(ctx, cl)
		return wrap("finish", cl.JobID, ErrEnded)
	case err != nil:
		c.nak(cl.JobID, cl.Reply, time.Second)
		return wrap("finish", cl.JobID, err)
	}
	if res.DeadLetter && cl.Job != nil {
		if err := c.deadLetter(ctx, cl.Job, cl.data, cl.Attempt); err != nil {
			c.nak(cl.JobID, cl.Reply, time.Second)
			return err
		}
	}
	c.status(ctx, &proto.Event{JobID: cl.JobID, Tenant: cl.Tenant(), Status: res.Status, Attempt: cl.Attempt, WorkerID: cl.WorkerID, Error: res.Error})
	c.ack(ctx, cl.JobID, cl.Reply)
	return nil
}

// deadLetterReason is a dead letter's last error: the record's, with the
// details of its failure when it has any, since worker-comfyui's
// "Job processing failed" says nothing of the cause alone.
func deadLetterReason(rec *proto.Record) string {
	var f proto.Failure
	if len(rec.Output) == 0 || json.Unmarshal(rec.Output, &f) != nil || len(f.Details) == 0 {
		return rec.Error
	}
	return rec.Error + ": " + strings.Join(f.Details, "; ")
}

// deadLetter writes the dead letter owed by attempt's ending of the job:
// the job message without its secrets (they live as long as the job, and
// a dead letter outlives it: a replay gives them again or runs with the
// worker's own settings), with its last error, every attempt's and the
// names of the secrets removed; then clears the debt. Published under an
// id of the job and the attempt, a repeat stores it once.
func (c *Core) deadLetter(ctx context.Context, job *proto.Job, data []byte, attempt int) error {
	data, removed, err := stripSecrets(job, data)
	if err != nil {
		return wrap("dead-letter", job.ID, err)
	}
	rec, err := c.db.Get(ctx, job.ID)
	if err != nil {
		return wrap("dead-letter", job.ID, err)
	}
	attempts, err := c.db.AttemptErrors(ctx, job.ID)
	if err != nil {
		return wrap("dead-letter", job.ID, err)
	}
	if len(attempts) == 0 {
		attempts = []string{rec.Error}
	}
	pool := job.Pool
	if pool == "" {
		pool = proto.DefaultPool
	}
	err = retry(ctx, tryTimeout, func(ctx context.Context) error {
		return c.q.PublishDeadLetter(ctx, pool, job.ID, attempt, data, deadLetterReason(rec), attempts, removed)
	})
	if err != nil {
		return wrap("dead-letter", job.ID, err)
	}
	if err := c.db.DeadLettered(ctx, job.ID, attempt); err != nil {
		// A repeat publishes under the same id, which JetStream drops.
		c.log.Warn("clear the dead letter's debt", zap.String("job_id", job.ID), zap.Error(err))
	}
	c.log.Info("job dead-lettered", zap.String("job_id", job.ID), zap.String("pool", pool), zap.String("reason", deadLetterReason(rec)),
		zap.Strings("secrets_removed", removed))
	return nil
}

// stripSecrets is the job message data without its secrets. data is the
// message job was decoded from, which is a JSON object; should it not be
// one, the job re-encoded is stripped instead (its input kept as raw
// bytes).
func stripSecrets(job *proto.Job, data []byte) ([]byte, []string, error) {
	out, removed, err := proto.StripSecrets(data)
	if err == nil {
		return out, removed, nil
	}
	if data, err = json.Marshal(job); err != nil {
		return nil, nil, fmt.Errorf("encode job without its secrets: %w", err)
	}
	return proto.StripSecrets(data)
}

// Progress publishes an attempt's progress, without waiting.
func (c *Core) Progress(cl *Claim, p proto.Progress) {
	if err := c.q.PublishEventNoWait(&proto.Event{JobID: cl.JobID, Tenant: cl.Tenant(), Type: proto.EventProgress, Attempt: cl.Attempt,
		WorkerID: cl.WorkerID, Progress: &p}); err != nil {
		c.log.Debug("publish progress", zap.String("job_id", cl.JobID), zap.Error(err))
	}
}

// Preview publishes an attempt's preview picture, without waiting, to the
// preview stream, which keeps each job's latest only.
func (c *Core) Preview(cl *Claim, p proto.Preview) {
	if err := c.q.PublishEventNoWait(&proto.Event{JobID: cl.JobID, Tenant: cl.Tenant(), Type: proto.EventPreview, Attempt: cl.Attempt,
		WorkerID: cl.WorkerID, Preview: &p}); err != nil {
		c.log.Debug("publish preview", zap.String("job_id", cl.JobID), zap.Error(err))
	}
}

// Chunk publishes what a RunPod worker posted for its running job (a
// generator's chunk, typ proto.EventStream, or a progress_update) and
// waits for the stream to store it: /stream hands these out. Nothing is
// published once the attempt no longer holds the job (the SDK's progress
// thread may post after the result).
func (c *Core) Chunk(ctx context.Context, cl *Claim, typ proto.EventType, output json.RawMessage) error {
	rec, err := c.db.Get(ctx, cl.JobID)
	if err == nil && (rec.Status.Terminal() || rec.Attempt != cl.Attempt) {
		return nil
	}
	return c.q.PublishEvent(ctx, &proto.Event{JobID: cl.JobID, Tenant: cl.Tenant(), Type: typ, Attempt: cl.Attempt, WorkerID: cl.WorkerID, Output: output})
}
