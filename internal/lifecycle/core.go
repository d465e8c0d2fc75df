package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Why an operation did not do what was asked; check with errors.Is. In
// every case the delivery in hand (if any) has been settled by the core.
var (
	// ErrEnded: the job had ended (finished, cancelled, timed out); the
	// delivery was acked.
	ErrEnded = errors.New("job already ended")
	// ErrHeld: another live worker holds the job; the delivery was given
	// back for after that worker's lease.
	ErrHeld = errors.New("job held by another worker")
	// ErrUsedUp: the job had used up its attempts before this one; it is
	// FAILED and dead-lettered, the delivery acked.
	ErrUsedUp = errors.New("job used up its attempts")
	// ErrLeaseLost: the caller's attempt no longer holds the job (its lease
	// lapsed and the job went to another worker); it must stop the work
	// and write nothing. Its delivery belongs to the new holder.
	ErrLeaseLost = errors.New("lease lost")
)

// Timing of the writes that end an attempt: each try is bounded, and the
// tries go on with backoff for a while, so that a Redis or NATS restart
// shorter than that costs the job nothing.
const (
	tryTimeout    = 10 * time.Second
	finalWriteFor = 2 * time.Minute
)

// Core owns every change of a job's state. It is safe for concurrent use
// and has no goroutines of its own (the Sweeper has one).
type Core struct {
	db  *rdb.DB
	q   *queue.Client
	log *zap.Logger
	// releaser, when a dispatcher attached one, lets admissions put a
	// job straight onto its lane (see place).
	releaser atomic.Pointer[Releaser]
}

// New returns the core on a Redis DB and a JetStream client.
func New(db *rdb.DB, q *queue.Client, log *zap.Logger) *Core {
	if log == nil {
		log = zap.NewNop()
	}
	return &Core{db: db, q: q, log: log.Named("lifecycle")}
}

// Get reads a job's record; rdb.ErrNotFound when it has none.
func (c *Core) Get(ctx context.Context, id string) (*proto.Record, error) { return c.db.Get(ctx, id) }

// Counts returns the fleet's job counters (rdb.DB.Counts).
func (c *Core) Counts(ctx context.Context) (map[proto.Status]int64, error) { return c.db.Counts(ctx) }

// PoolCounts returns one pool's job counters (rdb.DB.PoolCounts).
func (c *Core) PoolCounts(ctx context.Context, pool string) (map[proto.Status]int64, error) {
	return c.db.PoolCounts(ctx, pool)
}

// AttemptErrors returns the job's attempt log, oldest first.
func (c *Core) AttemptErrors(ctx context.Context, id string) ([]string, error) {
	return c.db.AttemptErrors(ctx, id)
}

// status publishes a status event, trying again for a while: final events
// are what webhooks and runsync waiters act on.
func (c *Core) status(ctx context.Context, ev *proto.Event) {
	ev.Type = proto.EventStatus
	err := retry(ctx, tryTimeout, func(ctx context.Context) error { return c.q.PublishEvent(ctx, ev) })
	if err != nil {
		c.log.Warn("publish status event", zap.String("job_id", ev.JobID), zap.String("status", string(ev.Status)), zap.Error(err))
	}
}

// retry runs f with a per-try timeout and backoff until it succeeds or
// finalWriteFor passed, detached from ctx's cancellation (an ending job
// still gets its final word in).
func retry(ctx context.Context, per time.Duration, f func(context.Context) error) error {
	return retryWithin(context.WithoutCancel(ctx), per, f)
}

// retryWithin is retry bounded by ctx too: for an operator's or a
// client's request, which has a deadline of its own.
func retryWithin(ctx context.Context, per time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, finalWriteFor)
	defer cancel()
	bo := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		tctx, tcancel := context.WithTimeout(ctx, per)
		err := f(tctx)
		tcancel()
		if err == nil || permanent(err) {
			return err
		}
		if !bo.Wait(ctx) {
			return err
		}
	}
}

// permanent reports errors that another try cannot change.
func permanent(err error) bool {
	for _, e := range []error{rdb.ErrNotFound, rdb.ErrStale, rdb.ErrTerminal, rdb.ErrIllegal, rdb.ErrCorrupt,
		rdb.ErrExpired, rdb.ErrHeld, rdb.ErrLeaseLost, rdb.ErrExhausted, rdb.ErrNotDue, queue.ErrDuplicate, queue.ErrTooLarge} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ack acks a delivery, trying again for a while: an ack lost while NATS
// restarts would otherwise leave the message to come back after AckWait.
func (c *Core) ack(ctx context.Context, jobID, reply string) {
	if reply == "" {
		return
	}
	if err := retry(ctx, 2*time.Second, func(ctx context.Context) error { return c.q.Ack(ctx, reply) }); err != nil {
		c.log.Warn("ack job message", zap.String("job_id", jobID), zap.Error(err))
	}
}

func (c *Core) nak(jobID, reply string, delay time.Duration) {
	if reply == "" {
		return
	}
	if err := c.q.Nak(reply, delay); err != nil {
		c.log.Warn("give the job message back", zap.String("job_id", jobID), zap.Error(err))
	}
}

// RetryDelay grows base exponentially with the failed attempts, with
// jitter (drawn from the upper half), capped at 16×base.
func RetryDelay(base time.Duration, failures int) time.Duration {
	if base <= 0 {
		return 0
	}
	d := base << min(max(failures-1, 0), 4)
	return d/2 + rand.N(d/2+1)
}

func wrap(op, id string, err error) error { return fmt.Errorf("%s job %s: %w", op, id, err) }
