package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// sweepBatch bounds the jobs one sweep looks at per index.
const sweepBatch = 200

// TTLExpiredMessage is the error of a job whose TTL ran out in the queue.
const TTLExpiredMessage = "Job expired: it was still queued when its TTL (policy.ttl) ran out."

// SweepStore is what the sweeper needs of the status records.
type SweepStore interface {
	Get(ctx context.Context, id string) (*proto.Record, error)
	Expire(ctx context.Context, id, errMsg string) (*proto.Record, error)
	Requeue(ctx context.Context, id string, attempt int, reason string) (*proto.Record, error)
	Finish(ctx context.Context, id string, attempt int, to proto.Status, output json.RawMessage, errMsg string) (*proto.Record, error)
	TrackTTL(ctx context.Context, id string, deadline time.Time) error
	DueTTL(ctx context.Context, limit int) ([]string, error)
	ForgetTTL(ctx context.Context, id string) error
	ExpiredLeases(ctx context.Context, limit int) ([]string, error)
	TakeLease(ctx context.Context, id string) (*status.Lease, error)
	Lease(ctx context.Context, l status.Lease, ttl time.Duration) error
	AddAttemptError(ctx context.Context, id string, attempt int, msg string) (int, error)
}

var _ SweepStore = (*status.Store)(nil)

// sweepLoop runs Sweep every SweepEvery until ctx ends. Every replica
// sweeps; each change is one atomic step in Redis (Expire, TakeLease,
// fenced Requeue/Finish), so two replicas never act twice on one job.
func (d *Dispatcher) sweepLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := d.Sweep(context.WithoutCancel(ctx)); err != nil && ctx.Err() == nil {
			d.log.Warn("sweep", zap.Error(err))
		}
	}
}

// Sweep is one pass of the safety nets: jobs still queued past their TTL
// end TIMED_OUT; jobs whose worker stopped renewing its lease are handed
// back to the queue at once (their delivery NAKed), or end TIMED_OUT when
// they are past their execution deadline plus ExecutionGrace.
func (d *Dispatcher) Sweep(ctx context.Context) error {
	return errors.Join(d.sweepTTL(ctx), d.sweepLeases(ctx))
}

func (d *Dispatcher) sweepTTL(ctx context.Context) error {
	ids, err := d.sweep.DueTTL(ctx, sweepBatch)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		_, err := d.sweep.Expire(ctx, id, TTLExpiredMessage)
		switch {
		case err == nil:
			d.log.Info("job expired in the queue", zap.String("job_id", id))
			d.event(ctx, &proto.Event{JobID: id, Type: proto.EventStatus, Status: proto.StatusTimedOut, Error: TTLExpiredMessage})
		case errors.Is(err, status.ErrTerminal), errors.Is(err, status.ErrNotFound), errors.Is(err, status.ErrIllegal):
			// Finished, gone, or reached a worker: the TTL no longer
			// applies (a job requeued later is checked when claimed).
		default:
			errs = append(errs, err)
			continue
		}
		if err := d.sweep.ForgetTTL(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *Dispatcher) sweepLeases(ctx context.Context) error {
	ids, err := d.sweep.ExpiredLeases(ctx, sweepBatch)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		l, err := d.sweep.TakeLease(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if l == nil {
			continue // renewed, or another replica took it
		}
		if err := d.reclaim(ctx, l); err != nil {
			// Put the lease back, lapsed, so the next sweep tries again.
			if lerr := d.sweep.Lease(ctx, *l, 0); lerr != nil {
				err = errors.Join(err, lerr)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reclaim deals with the job of a worker that went silent.
func (d *Dispatcher) reclaim(ctx context.Context, l *status.Lease) error {
	if l.Attempt == 0 {
		// The worker died holding the delivery, before its claim was
		// leased: see how far it got.
		rec, err := d.sweep.Get(ctx, l.JobID)
		switch {
		case errors.Is(err, status.ErrNotFound):
			d.settle(l, true) // expired: nothing to run
			return nil
		case err != nil:
			return err
		case rec.Status == proto.StatusInQueue:
			d.settle(l, false) // not claimed: redeliver it now
			return nil
		case rec.Status.Terminal():
			d.settle(l, true)
			return nil
		case rec.WorkerID != l.WorkerID:
			return nil // another worker holds it
		}
		l.Attempt = rec.Attempt // claimed, then died
	}
	log := d.log.With(zap.String("job_id", l.JobID), zap.Int("attempt", l.Attempt), zap.String("worker_id", l.WorkerID))
	if !l.Deadline.IsZero() && time.Now().After(l.Deadline.Add(d.cfg.ExecutionGrace)) {
		msg := fmt.Sprintf("Job execution timed out: worker %s went silent and the job is past its execution timeout.", l.WorkerID)
		data, _ := json.Marshal(proto.Failure{Error: msg})
		_, err := d.sweep.Finish(ctx, l.JobID, l.Attempt, proto.StatusTimedOut, data, msg)
		switch {
		case err == nil:
			log.Warn("job timed out on a silent worker")
			d.event(ctx, &proto.Event{JobID: l.JobID, Type: proto.EventStatus, Status: proto.StatusTimedOut, Attempt: l.Attempt, Error: msg})
			d.settle(l, true)
			return nil
		case errors.Is(err, status.ErrTerminal):
			d.settle(l, true) // finished (cancelled?) but never acked
			return nil
		case errors.Is(err, status.ErrStale), errors.Is(err, status.ErrNotFound):
			return nil // a newer attempt holds it, or it is gone
		default:
			return err
		}
	}
	reason := fmt.Sprintf("worker %s stopped renewing its lease (lost)", l.WorkerID)
	_, err := d.sweep.Requeue(ctx, l.JobID, l.Attempt, reason)
	switch {
	case errors.Is(err, status.ErrTerminal):
		// It ended (cancelled, or finished just before the worker died)
		// but its delivery was never acked: ack it so it does not come
		// back after AckWait.
		d.settle(l, true)
		return nil
	case errors.Is(err, status.ErrStale), errors.Is(err, status.ErrNotFound):
		return nil
	case err != nil:
		return err
	}
	if _, err := d.sweep.AddAttemptError(ctx, l.JobID, l.Attempt, reason); err != nil {
		log.Warn("log failed attempt", zap.Error(err))
	}
	log.Warn("worker lost mid-job; handing the job back", zap.Time("deadline", l.Deadline), zap.Time("lease_expired", l.Expires))
	d.event(ctx, &proto.Event{JobID: l.JobID, Type: proto.EventStatus, Status: proto.StatusInQueue, Attempt: l.Attempt, WorkerID: l.WorkerID, Error: reason})
	d.settle(l, false)
	return nil
}

// settle acks or NAKs the delivery the lost worker held. Without an ack
// subject the delivery comes back after AckWait.
func (d *Dispatcher) settle(l *status.Lease, ack bool) {
	if l.Reply == "" {
		return
	}
	if err := d.q.SettleDelivery(l.Reply, ack); err != nil {
		d.log.Warn("settle the lost worker's delivery", zap.String("job_id", l.JobID), zap.Error(err))
	}
}

func (d *Dispatcher) event(ctx context.Context, ev *proto.Event) {
	if err := d.q.PublishEvent(ctx, ev); err != nil {
		d.log.Warn("publish event", zap.String("job_id", ev.JobID), zap.Error(err))
	}
}
