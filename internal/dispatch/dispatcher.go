package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Config configures a dispatcher. The zero value of each field is its default.
type Config struct {
	// DefaultPool is the pool of jobs that name none; "" means proto.DefaultPool.
	DefaultPool string
	// FetchWait bounds one wait for an intake message; 0 means 1 s. It is
	// also the longest Stop waits for an idle loop.
	FetchWait time.Duration
	// AckWait is how long an intake message may stay unacknowledged before
	// another replica gets it; 0 means 30 s.
	AckWait time.Duration
	// SweepEvery is the interval of the sweeper, which times out jobs
	// queued past their TTL and hands back the jobs of silent workers; 0
	// means 1 s.
	SweepEvery time.Duration
	// ExecutionGrace is how long past its execution deadline a job whose
	// worker went silent is still retried; after it the job ends
	// TIMED_OUT. 0 means 30 s.
	ExecutionGrace time.Duration
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.DefaultPool != "" {
		if err := proto.ValidID(c.DefaultPool); err != nil {
			return fmt.Errorf("default pool: %w", err)
		}
	}
	if c.FetchWait < 0 {
		return fmt.Errorf("fetch wait %s is negative", c.FetchWait)
	}
	if c.SweepEvery < 0 {
		return fmt.Errorf("sweep interval %s is negative", c.SweepEvery)
	}
	if c.ExecutionGrace < 0 {
		return fmt.Errorf("execution grace %s is negative", c.ExecutionGrace)
	}
	return nil
}

// StatusStore is what the dispatcher needs of the status records.
type StatusStore interface {
	Create(ctx context.Context, p status.CreateParams) (*proto.Record, bool, error)
	Reject(ctx context.Context, p status.CreateParams, errMsg string) (*proto.Record, error)
	SweepStore
}

var _ StatusStore = (*status.Store)(nil)

// Dispatcher admits submissions. Start it, then Stop it; Stop is
// idempotent and safe without Start.
type Dispatcher struct {
	cfg   Config
	q     *queue.Client
	store StatusStore
	sweep SweepStore
	adm   Admission // optional checks; see admission.go
	log   *zap.Logger

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// New builds a dispatcher.
func New(cfg Config, q *queue.Client, store StatusStore, log *zap.Logger) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dispatcher config: %w", err)
	}
	if cfg.DefaultPool == "" {
		cfg.DefaultPool = proto.DefaultPool
	}
	if cfg.FetchWait == 0 {
		cfg.FetchWait = time.Second
	}
	if cfg.SweepEvery == 0 {
		cfg.SweepEvery = time.Second
	}
	if cfg.ExecutionGrace == 0 {
		cfg.ExecutionGrace = 30 * time.Second
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Dispatcher{cfg: cfg, q: q, store: store, sweep: store, log: log.Named("dispatch")}, nil
}

// Start opens the intake consumer and runs the admission loop and the
// sweeper in the background. It returns once they run.
func (d *Dispatcher) Start(ctx context.Context) error {
	cons, err := d.q.IntakeConsumer(ctx, queue.ConsumerConfig{AckWait: d.cfg.AckWait})
	if err != nil {
		return fmt.Errorf("start dispatcher: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done != nil {
		return errors.New("start dispatcher: already started")
	}
	ctx, d.cancel = context.WithCancel(context.WithoutCancel(ctx))
	d.done = make(chan struct{})
	sweepDone := make(chan struct{})
	go func() {
		defer close(sweepDone)
		d.sweepLoop(ctx)
	}()
	go func() {
		d.loop(ctx, cons)
		<-sweepDone
		close(d.done)
	}()
	return nil
}

// Stop ends the loop after the message in hand and waits for it.
func (d *Dispatcher) Stop() {
	d.mu.Lock()
	cancel, done := d.cancel, d.done
	d.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
	d.mu.Lock()
	if d.done == done {
		d.cancel, d.done = nil, nil
	}
	d.mu.Unlock()
}

func (d *Dispatcher) loop(ctx context.Context, cons *queue.Consumer) {
	bo := backoff.New(50*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		msg, err := cons.Next(ctx, d.cfg.FetchWait)
		switch {
		case errors.Is(err, queue.ErrNoMessage), ctx.Err() != nil:
			continue
		case err != nil:
			d.log.Warn("fetch intake", zap.Error(err))
			bo.Wait(ctx)
			continue
		}
		// Admission finishes even if Stop comes in the middle of it.
		if err := d.Admit(context.WithoutCancel(ctx), msg); err != nil {
			d.log.Warn("admit", zap.String("subject", msg.Subject()), zap.Error(err))
			_ = msg.Nak(bo.Next())
			continue
		}
		bo.Reset()
	}
}

// Admit handles one intake message: it acks it once the job is durably
// either admitted or recorded as failed; on error the caller NAKs it.
func (d *Dispatcher) Admit(ctx context.Context, msg *queue.Message) error {
	source := strings.TrimPrefix(msg.Subject(), proto.SubmitSubject(""))
	job, err := proto.DecodeJob(msg.Data())
	if job == nil || (err != nil && proto.ValidID(job.ID) != nil) {
		// No id to record a status under: park it on the rejects subject.
		reason := fmt.Sprint(err)
		if rerr := d.q.Reject(msg.Data(), reason); rerr != nil {
			return rerr
		}
		d.log.Info("rejected submission without a usable id", zap.String("subject", msg.Subject()), zap.String("reason", reason))
		return msg.Ack(ctx)
	}
	job.Source = source
	if err != nil {
		// Record the failure under the id, with nothing of the rest.
		return d.fail(ctx, msg, status.CreateParams{ID: job.ID, Source: source, Pool: d.cfg.DefaultPool, BatchID: job.BatchID}, err.Error())
	}
	job.Place(d.cfg.DefaultPool, time.Now())
	params := status.ParamsFor(job)
	input, err := proto.DecodeInput(job.Input)
	if err != nil {
		return d.fail(ctx, msg, params, err.Error())
	}
	if reject, err := d.adm.admitting(ctx, job, input); err != nil || reject != "" {
		if err != nil {
			return err
		}
		return d.fail(ctx, msg, params, reject)
	}

	rec, created, err := d.store.Create(ctx, params)
	if err != nil {
		return fmt.Errorf("record job %s: %w", job.ID, err)
	}
	if rec.Status != proto.StatusInQueue {
		// Already admitted and picked up, or finished: a redelivery.
		return msg.Ack(ctx)
	}
	job.SubmittedAt = rec.SubmittedAt // the first admission's, on a redelivery
	if err := d.store.TrackTTL(ctx, job.ID, job.SubmittedAt.Add(ttlOf(job))); err != nil {
		return fmt.Errorf("admit job %s: %w", job.ID, err)
	}
	// The IN_QUEUE event goes out before the job can reach a worker, so a
	// job's events are always in the order of its transitions.
	if err := d.q.PublishEvent(ctx, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusInQueue}); err != nil {
		return fmt.Errorf("publish event for %s: %w", job.ID, err)
	}
	if err := d.q.Admit(ctx, job); err != nil && !errors.Is(err, queue.ErrDuplicate) {
		return fmt.Errorf("admit job %s: %w", job.ID, err)
	}
	if created {
		d.adm.admitted(job)
		d.log.Debug("admitted", zap.String("job_id", job.ID), zap.String("pool", job.Pool), zap.String("lane", string(job.Lane)))
	}
	return msg.Ack(ctx)
}

func (d *Dispatcher) fail(ctx context.Context, msg *queue.Message, p status.CreateParams, reason string) error {
	if _, err := d.store.Reject(ctx, p, reason); err != nil && !errors.Is(err, status.ErrTerminal) {
		return fmt.Errorf("record rejected job %s: %w", p.ID, err)
	}
	if err := d.q.PublishEvent(ctx, &proto.Event{JobID: p.ID, Type: proto.EventStatus, Status: proto.StatusFailed, Error: reason}); err != nil {
		d.log.Warn("publish event", zap.String("job_id", p.ID), zap.Error(err))
	}
	d.log.Info("job failed admission", zap.String("job_id", p.ID), zap.String("reason", reason))
	return msg.Ack(ctx)
}
