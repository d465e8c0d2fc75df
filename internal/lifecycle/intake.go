package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Submit publishes a job on cf.submit.<source> (Nats-Msg-Id = job id) and
// waits for the PubAck, the durable receipt. With record, it also makes
// the job's IN_QUEUE record at once, tagged as made by this submission,
// so that /status finds the job before a dispatcher reads it; the
// dispatcher's admission of the same submission then goes on from that
// record. A failure to record is logged, not returned: the job is queued
// durably and the dispatcher records it. queue.ErrDuplicate (wrapped)
// means the id was submitted within the dedupe window; nothing changed.
// A *queue.TooLargeError (queue.ErrTooLarge) means the message is larger
// than the NATS server takes; nothing was queued, and no try will be.
//
// A job that is kept for /retry ([proto.Job.KeptForRetry]: the endpoint
// API's) has its message kept too, beside the publish, for as long as the
// job may live (keepRequest); a copy that cannot be kept is logged, and
// the job runs all the same: only its /retry will say it cannot.
func (c *Core) Submit(ctx context.Context, source string, job *proto.Job, record bool) error {
	var kept chan error
	if job.KeptForRetry() {
		msg, ttl, err := c.requestCopy(job)
		if err != nil {
			return err
		}
		kept = make(chan error, 1)
		go func() { kept <- c.q.KeepRequest(context.WithoutCancel(ctx), job.ID, msg, ttl) }()
	}
	seq, err := c.q.Submit(ctx, source, job)
	if kept != nil {
		if kerr := <-kept; kerr != nil {
			c.log.Warn("keep job message for retry", zap.String("job_id", job.ID), zap.Error(kerr))
		} else if err != nil && !errors.Is(err, queue.ErrDuplicate) {
			// Nothing was queued: its secrets go with it.
			if _, derr := c.q.DropRequests(context.WithoutCancel(ctx), []string{job.ID}); derr != nil {
				c.log.Warn("remove the copy of a job not queued", zap.String("job_id", job.ID), zap.Error(derr))
			}
		}
	}
	if err != nil {
		return err
	}
	if !record {
		return nil
	}
	if _, _, err := c.db.Admit(ctx, strconv.FormatUint(seq, 10), rdb.ParamsFor(job), ""); err != nil {
		c.log.Warn("record new job", zap.String("job_id", job.ID), zap.Error(err))
	}
	return nil
}

// Admitted says what Admit did with a submission.
type Admitted int

// The outcomes of Admit.
const (
	// Queued: the job is recorded IN_QUEUE and on its pool's lane.
	Queued Admitted = iota
	// Failed: the job is recorded FAILED with the reason.
	Failed
	// Duplicate: another submission made the job's record; this one was
	// dropped and changed nothing.
	Duplicate
	// Redelivered: the submission had been admitted already.
	Redelivered
	// Unidentified: the submission has no usable id; it went to
	// cf.rejects.
	Unidentified
)

// AdmitOptions are the dispatcher's part in admission.
type AdmitOptions struct {
	// DefaultPool is the pool of jobs that name none.
	DefaultPool string
	// Check runs the admission checks of a new, valid job: a reason to fail
	// it, or an error to try the submission again later.
	Check func(ctx context.Context, job *proto.Job, input *proto.Input) (reject string, err error)
}

// decode reads an intake message: the job, placed and owned by the
// tenant its subject names, and the reason to fail it when it does not
// decode (a job is nil when the message names no usable id).
// proto.DecodeJob reads the id before anything else, so every message
// with a usable id, however malformed the rest, is failed under it with
// the reason naming the field.
func decode(msg *queue.Message, defaultPool string, now time.Time) (job *proto.Job, input *proto.Input, reject string) {
	source, tenant, err := proto.ParseSubmitSubject(msg.Subject())
	if err != nil {
		// The stream takes only cf.submit.>, whose tokens NATS checked;
		// a subject that still does not parse names no job of anyone's.
		return nil, nil, err.Error()
	}
	job, err = proto.DecodeJob(msg.Data())
	if job == nil || (err != nil && proto.ValidID(job.ID) != nil) {
		// No id to record a status under.
		return nil, nil, fmt.Sprint(err)
	}
	if err == nil {
		err = job.CheckTenant(tenant)
	}
	if err == nil {
		// Only here, at intake, by this dispatcher's clock: an admitted
		// job message is never refused for it later.
		err = proto.CheckSubmittedAt(job.SubmittedAt, now)
	}
	job.Source, job.Tenant = source, tenant
	if err != nil {
		// Recorded under the id (and its batch, which DecodeJob keeps only
		// when valid), with nothing of the rest.
		return &proto.Job{ID: job.ID, Source: source, Tenant: tenant, Pool: defaultPool, BatchID: job.BatchID}, nil, err.Error()
	}
	job.Place(defaultPool, now)
	input, err = proto.DecodeInput(job.Input)
	if err == nil {
		err = input.CheckBlobs(tenant)
	}
	if err != nil {
		return job, nil, err.Error()
	}
	return job, input, ""
}

// Admit takes one intake message to its end: it decodes and places the
// job (a message that does not decode, or whose input is invalid, fails
// the job with the reason; one without a usable id goes to cf.rejects),
// then the job is recorded IN_QUEUE,
// its webhook target kept, its IN_QUEUE event published and the job on
// its pool's lane, in that order, so a job's events follow its
// transitions; or recorded FAILED with the reason. The intake message is
// acked once that is durable; on error it is left to the caller, which
// NAKs it.
//
// Intake never changes a job that already has a record: a submission for
// an existing id changes nothing (Duplicate), unless it is the redelivery
// of the very message that made the record.
//
// It returns the job as admitted (nil without a usable id).
//
// Admit is Decode then AdmitIntake. It is safe to call concurrently, for
// many messages at once: the record's script decides atomically between
// two submissions of one id, and a redelivery of a message still being
// admitted finds the record that message made (Same). Callers that want
// the submissions of one id admitted in intake order, as one at a time
// gives, keep those apart themselves (Intake.JobID).
func (c *Core) Admit(ctx context.Context, msg *queue.Message, opts AdmitOptions) (Admitted, *proto.Job, error) {
	return c.AdmitIntake(ctx, Decode(msg, opts.DefaultPool), opts)
}

// Intake is one intake message, decoded by Decode, for AdmitIntake.
type Intake struct {
	msg    *queue.Message
	job    *proto.Job // nil: no usable id
	input  *proto.Input
	reject string
}

// JobID is the id the submission names, "" when it names no usable one.
func (in *Intake) JobID() string {
	if in.job == nil {
		return ""
	}
	return in.job.ID
}

// Message is the intake message.
func (in *Intake) Message() *queue.Message { return in.msg }

// Decode reads an intake message without any I/O: the job, placed in
// defaultPool when it names none, or the reason to fail it (see decode).
// Its clock is the one that checks submitted_at.
func Decode(msg *queue.Message, defaultPool string) *Intake {
	job, input, reject := decode(msg, defaultPool, time.Now())
	return &Intake{msg: msg, job: job, input: input, reject: reject}
}

// AdmitIntake is Admit of a decoded message.
func (c *Core) AdmitIntake(ctx context.Context, in *Intake, opts AdmitOptions) (Admitted, *proto.Job, error) {
	msg, job, input, reject := in.msg, in.job, in.input, in.reject
	if job == nil {
		_, tenant, _ := proto.ParseSubmitSubject(msg.Subject())
		if err := c.q.Reject(tenant, msg.Data(), reject); err != nil {
			return 0, nil, err
		}
		c.log.Info("rejected submission without a usable id", zap.String("subject", msg.Subject()), zap.String("reason", reject))
		return Unidentified, nil, msg.Ack(ctx)
	}
	intake := strconv.FormatUint(msg.Seq(), 10)
	adm, rec, err := c.db.Admit(ctx, intake, rdb.ParamsFor(job), reject)
	if err != nil {
		return 0, job, wrap("admit", job.ID, err)
	}
	log := c.log.With(zap.String("job_id", job.ID))
	switch {
	case adm == rdb.Exists && rec.Tenant != job.Tenant:
		// Say so to the submitter, who cannot see the other tenant's job.
		log.Info("submission for another tenant's job; dropped", zap.String("tenant", job.Tenant), zap.String("source", job.Source))
		if err := c.q.Reject(job.Tenant, msg.Data(), fmt.Sprintf("job id %s is taken by a job of another tenant; nothing was queued, choose another id", job.ID)); err != nil {
			return 0, job, wrap("admit", job.ID, err)
		}
		return Duplicate, job, msg.Ack(ctx)
	case adm == rdb.Exists:
		log.Info("submission for a job that already has a record; dropped", zap.String("status", string(rec.Status)), zap.String("source", job.Source))
		return Duplicate, job, msg.Ack(ctx)
	case adm == rdb.Rejected:
		return c.rejected(ctx, msg, job, rec)
	case rec.Status != proto.StatusInQueue || rec.Attempt > 0:
		return Redelivered, job, msg.Ack(ctx)
	}
	if opts.Check != nil {
		reject, err := opts.Check(ctx, job, input)
		if err != nil {
			return 0, job, wrap("admit", job.ID, err)
		}
		if reject != "" {
			adm, rec, err := c.db.Admit(ctx, intake, rdb.ParamsFor(job), reject)
			if err != nil {
				return 0, job, wrap("admit", job.ID, err)
			}
			if adm == rdb.Rejected {
				return c.rejected(ctx, msg, job, rec)
			}
			return Redelivered, job, msg.Ack(ctx) // it moved on meanwhile
		}
	}
	if job.Webhook != "" {
		if err := c.db.PutWebhook(ctx, job.ID, job.Webhook); err != nil {
			return 0, job, wrap("admit", job.ID, err)
		}
	}
	// The IN_QUEUE event goes out before the job can reach a worker.
	if err := c.q.PublishEvent(ctx, &proto.Event{JobID: job.ID, Tenant: job.Tenant, Type: proto.EventStatus, Status: proto.StatusInQueue}); err != nil {
		return 0, job, wrap("admit", job.ID, err)
	}
	job.SubmittedAt = rec.SubmittedAt // the record's, by Redis's clock
	err = c.place(ctx, job, job.ID)
	if errors.Is(err, queue.ErrTooLarge) {
		// What admission adds (pool, lane, source, submitted_at) took a
		// submission that just fitted over the limit: no later try fits.
		return c.failQueued(ctx, msg, job, rec, err.Error()+"; send large inputs as images or by URL, which go to the blob store, or raise the NATS server's max_payload")
	}
	if err != nil && !errors.Is(err, queue.ErrDuplicate) {
		return 0, job, wrap("admit", job.ID, err)
	}
	log.Debug("admitted", zap.String("pool", job.Pool), zap.String("lane", string(job.Lane)))
	return Queued, job, msg.Ack(ctx)
}

// failQueued fails an admitted job that cannot be put on its lane, then
// acks its submission.
func (c *Core) failQueued(ctx context.Context, msg *queue.Message, job *proto.Job, rec *proto.Record, reason string) (Admitted, *proto.Job, error) {
	rec, err := c.db.Fail(ctx, job.ID, rec.Attempt, reason)
	if err != nil && !errors.Is(err, rdb.ErrTerminal) {
		return 0, job, wrap("admit", job.ID, err)
	}
	if err == nil {
		c.status(ctx, &proto.Event{JobID: job.ID, Status: proto.StatusFailed, Error: rec.Error})
		c.log.Info("job failed admission", zap.String("job_id", job.ID), zap.String("reason", reason))
	}
	return Failed, job, msg.Ack(ctx)
}

func (c *Core) rejected(ctx context.Context, msg *queue.Message, job *proto.Job, rec *proto.Record) (Admitted, *proto.Job, error) {
	c.status(ctx, &proto.Event{JobID: job.ID, Tenant: rec.Tenant, Status: proto.StatusFailed, Error: rec.Error})
	c.log.Info("job failed admission", zap.String("job_id", job.ID), zap.String("reason", rec.Error))
	return Failed, job, msg.Ack(ctx)
}

// Discard takes an undecodable job message off the jobs stream: it is
// republished on cf.rejects with the reason, for an operator to see, and
// terminated. The dispatcher admits only decodable jobs, so this is
// corruption.
func (c *Core) Discard(ctx context.Context, msg *queue.Message, reason string) {
	c.log.Error("undecodable job message, terminating it", zap.String("subject", msg.Subject()), zap.String("reason", reason))
	// A jobs-stream message names its tenant in its body, which is what
	// could not be read: it goes to the default tenant's rejects, which an
	// operator watches (cf.rejects.*).
	if err := c.q.Reject(proto.DefaultTenant, msg.Data(), reason); err != nil {
		c.log.Warn("republish undecodable job message", zap.Error(err))
	}
	_ = msg.Term()
}
