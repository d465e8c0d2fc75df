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

// Cancel cancels a job that has not ended: a queued job never starts, a
// running one is stopped by its worker (the cancel fans out on
// cf.ctl.cancel; a worker that misses it learns at its next renewal). A
// terminal record gives rdb.ErrTerminal with the record; a missing one
// rdb.ErrNotFound.
func (c *Core) Cancel(ctx context.Context, id string) (*proto.Record, error) {
	rec, running, err := c.db.Cancel(ctx, id)
	if err != nil {
		return rec, err
	}
	if running {
		if err := c.q.PublishCancel(id); err != nil {
			c.log.Warn("publish cancel", zap.String("job_id", id), zap.Error(err))
		}
	}
	c.status(ctx, &proto.Event{JobID: id, Tenant: rec.Tenant, Status: proto.StatusCancelled})
	return rec, nil
}

// CancelQueued cancels a job only while it waits in the queue (RunPod's
// purge-queue): rdb.ErrIllegal when it runs, rdb.ErrTerminal when it
// ended.
func (c *Core) CancelQueued(ctx context.Context, id string) (*proto.Record, error) {
	rec, err := c.db.CancelQueued(ctx, id)
	if err != nil {
		return rec, err
	}
	c.status(ctx, &proto.Event{JobID: id, Tenant: rec.Tenant, Status: proto.StatusCancelled})
	return rec, nil
}

// CancelUnadmitted cancels a job that may not have reached a dispatcher
// yet (a batch item): its record is made first, when it has none, so that
// its admission finds it cancelled and drops it. created reports whether
// the record was made here.
func (c *Core) CancelUnadmitted(ctx context.Context, p rdb.CreateParams) (rec *proto.Record, created bool, err error) {
	if _, created, err = c.db.Create(ctx, p, time.Time{}, false); err != nil {
		return nil, false, err
	}
	rec, err = c.Cancel(ctx, p.ID)
	return rec, created, err
}

// Retry queues a FAILED or TIMED_OUT job again under its id, as RunPod's
// /retry does, from the job message it was submitted with: its record
// back to IN_QUEUE with a fresh attempt log and TTL, its message kept for
// /retry again for the new run's life, the IN_QUEUE event, the message on
// its pool's lane. A message that cannot be published fails the job again
// with the reason. rdb.ErrIllegal for a job in another state,
// rdb.ErrNotFound for one without a record.
func (c *Core) Retry(ctx context.Context, job *proto.Job) (*proto.Record, error) {
	rec, err := c.db.Retry(ctx, job.ID)
	if err != nil {
		return rec, err
	}
	job.Tenant = rec.Tenant
	c.keepRequest(ctx, job)
	return rec, c.requeued(ctx, job, rec, job.ID+".retry."+strconv.Itoa(rec.Retries))
}

// Replayed is what Replay did.
type Replayed struct {
	// Record is the job's record, IN_QUEUE again.
	Record *proto.Record
	// Secrets says, per secret the dead letter lost or the replay gave
	// ("comfy_org_api_key", "s3Config"), where the replayed job takes it
	// from: proto.SecretSupplied, or proto.SecretWorker (the worker's own
	// settings).
	Secrets map[string]proto.SecretSource
}

// Replay queues dead letter seq again: its secrets, which the dead letter
// lost, from secrets (nil: none) or else the worker's own settings
// (proto.Job.RestoreSecrets), its job's record back to IN_QUEUE (or made
// anew when it expired) with a fresh attempt log, the message kept for
// /retry when its job is the endpoint API's, the job published on its
// pool's lane under the message id <id>.replay.<seq>, which JetStream's
// dedupe window has never seen, and the dead letter removed.
// queue.ErrNoDeadLetter when there is none; a *proto.InputError when the
// secrets do not fit the job.
func (c *Core) Replay(ctx context.Context, seq uint64, secrets *proto.Secrets) (*Replayed, error) {
	dl, data, err := c.q.DeadLetterJob(ctx, seq)
	if err != nil {
		return nil, err
	}
	job, err := proto.DecodeJob(data)
	if err != nil {
		return nil, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	from, err := job.RestoreSecrets(dl.SecretsRemoved, secrets)
	if err != nil {
		return nil, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	rec, err := c.db.Retry(ctx, job.ID)
	if errors.Is(err, rdb.ErrNotFound) {
		// The record's retention ran out: make it anew.
		var created bool
		rec, created, err = c.db.Create(ctx, rdb.ParamsFor(job), time.Time{}, false)
		if err == nil && !created {
			err = fmt.Errorf("job %s is %s: %w", job.ID, rec.Status, rdb.ErrIllegal)
		}
	}
	if err != nil {
		return &Replayed{Record: rec}, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	job.Tenant = rec.Tenant
	c.keepRequest(ctx, job)
	if err := c.requeued(ctx, job, rec, fmt.Sprintf("%s.replay.%d", job.ID, seq)); err != nil {
		return &Replayed{Record: rec}, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	if err := c.q.DeleteDeadLetter(ctx, seq); err != nil {
		return &Replayed{Record: rec}, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	c.log.Info("dead letter replayed", zap.Uint64("seq", seq), zap.String("job_id", job.ID), zap.Any("secrets", from))
	return &Replayed{Record: rec, Secrets: from}, nil
}

// requeued publishes a job whose record went back to IN_QUEUE, or fails
// it again when the message cannot be published.
func (c *Core) requeued(ctx context.Context, job *proto.Job, rec *proto.Record, msgID string) error {
	job.Tenant = rec.Tenant // the record's owner, whatever an old copy says
	c.status(ctx, &proto.Event{JobID: job.ID, Tenant: job.Tenant, Status: proto.StatusInQueue, Attempt: rec.Attempt})
	job.SubmittedAt = rec.SubmittedAt // its TTL counts from now
	err := retryWithin(ctx, tryTimeout, func(ctx context.Context) error { return c.place(ctx, job, msgID) })
	if err == nil || errors.Is(err, queue.ErrDuplicate) {
		return nil
	}
	reason := proto.MsgRetryNotQueued + err.Error()
	if _, ferr := c.db.Fail(context.WithoutCancel(ctx), job.ID, rec.Attempt, reason); ferr != nil {
		c.log.Error("fail a retry that could not be queued", zap.String("job_id", job.ID), zap.Error(ferr))
	} else {
		c.status(ctx, &proto.Event{JobID: job.ID, Tenant: job.Tenant, Status: proto.StatusFailed, Error: reason})
	}
	return err
}
