package dispatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/startstop"
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
	// Concurrency bounds the intake messages one dispatcher holds at once:
	// fetched and being admitted, or waiting behind an earlier submission
	// of the same job id; 0 means DefaultConcurrency, 1 admits one message
	// at a time.
	Concurrency int
	// Sweeper configures the safety net of time and failure that every
	// replica runs (lifecycle.Sweeper).
	Sweeper lifecycle.SweeperConfig
	// FairShare configures fair share between tenants within a lane
	// (lifecycle.Releaser), which every replica runs.
	FairShare lifecycle.FairShare
}

// DefaultConcurrency is Config.Concurrency's default: enough admissions in
// flight to hide their round trips (about four each, to Redis and
// JetStream) behind one another, few enough that a dispatcher that dies
// leaves little to wait out AckWait.
const DefaultConcurrency = 64

// maxFetch bounds one intake pull.
const maxFetch = 64

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.DefaultPool != "" {
		if err := proto.ValidID(c.DefaultPool); err != nil {
			return fmt.Errorf("default pool: %w", err)
		}
	}
	if c.FetchWait < 0 || c.AckWait < 0 {
		return errors.New("fetch wait and ack wait must not be negative")
	}
	if c.Concurrency < 0 {
		return fmt.Errorf("intake concurrency %d is negative", c.Concurrency)
	}
	if err := c.FairShare.Validate(); err != nil {
		return err
	}
	return c.Sweeper.Validate()
}

// Dispatcher admits submissions and sweeps. Start it, then Stop it; Stop
// is idempotent and safe without Start.
type Dispatcher struct {
	cfg     Config
	q       *queue.Client
	core    *lifecycle.Core
	sweeper *lifecycle.Sweeper
	share   *lifecycle.Releaser
	adm     Admission // optional checks; see admission.go
	log     *zap.Logger
	svc     startstop.Service
}

// New builds a dispatcher on the lifecycle core; adm holds the optional
// admission checks.
func New(cfg Config, q *queue.Client, core *lifecycle.Core, adm Admission, log *zap.Logger) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dispatcher config: %w", err)
	}
	if cfg.DefaultPool == "" {
		cfg.DefaultPool = proto.DefaultPool
	}
	if cfg.FetchWait == 0 {
		cfg.FetchWait = time.Second
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if log == nil {
		log = zap.NewNop()
	}
	sw, err := core.NewSweeper(cfg.Sweeper)
	if err != nil {
		return nil, fmt.Errorf("dispatcher config: %w", err)
	}
	share, err := core.NewReleaser(cfg.FairShare)
	if err != nil {
		return nil, fmt.Errorf("dispatcher config: %w", err)
	}
	return &Dispatcher{cfg: cfg, q: q, core: core, sweeper: sw, share: share, adm: adm, log: log.Named("dispatch")}, nil
}

// Start opens the intake consumer, creates the default pool's lane
// consumers when they are missing, and runs the admission loop, the
// sweeper and fair share's releaser in the background. It returns once
// they run.
//
// Shutdown order (Stop): the admission loop ends after the messages in
// hand, then the releaser after its round in progress, then the sweeper
// after the sweep in progress.
func (d *Dispatcher) Start(ctx context.Context) error {
	cons, err := d.q.IntakeConsumer(ctx, queue.ConsumerConfig{AckWait: d.cfg.AckWait})
	if err != nil {
		return fmt.Errorf("start dispatcher: %w", err)
	}
	// The default pool's lane consumers exist before its first worker
	// does, for an autoscaler that scales the pool from zero on their
	// backlog (docs/scaling.md).
	if err := d.q.EnsureLaneConsumers(ctx, d.cfg.DefaultPool); err != nil {
		return fmt.Errorf("start dispatcher: %w", err)
	}
	if err := d.sweeper.Start(ctx); err != nil {
		return fmt.Errorf("start dispatcher: %w", err)
	}
	if err := d.share.Start(ctx); err != nil {
		d.sweeper.Stop()
		return fmt.Errorf("start dispatcher: %w", err)
	}
	if err := d.svc.Start(ctx, func(ctx context.Context) { d.loop(ctx, cons) }); err != nil {
		d.share.Stop()
		d.sweeper.Stop()
		return fmt.Errorf("start dispatcher: %w", err)
	}
	return nil
}

// Stop ends the loop after the messages in hand, then the releaser and
// the sweeper after their round in progress, and waits for them.
func (d *Dispatcher) Stop() {
	d.svc.Stop()
	d.share.Stop()
	d.sweeper.Stop()
}

// Release runs one round of fair share's releases now (tests, and an
// operator's nudge): how many held jobs it put on their lanes.
func (d *Dispatcher) Release(ctx context.Context) (int, error) { return d.share.RunOnce(ctx) }

// Sweep runs one sweep now (tests, and an operator's nudge).
func (d *Dispatcher) Sweep(ctx context.Context) error { return d.sweeper.RunOnce(ctx) }

// loop pulls intake messages and admits up to Concurrency of them at
// once. A message takes a slot from its fetch until it is settled, and
// is fetched only into a free slot, so no message waits out its AckWait
// in a buffer. Submissions of one job id are admitted one after the
// other in intake order (an admission's outcome depends on the record
// the one before it made); those of different ids overlap.
func (d *Dispatcher) loop(ctx context.Context, cons *queue.Consumer) {
	a := &admitter{d: d, slots: make(chan struct{}, d.cfg.Concurrency), busy: map[string][]*lifecycle.Intake{}}
	defer a.wg.Wait()
	bo := backoff.New(50*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		// One free slot to wait for, then every other free one.
		select {
		case a.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		free := 1
		for free < maxFetch && len(a.slots) < cap(a.slots) {
			a.slots <- struct{}{}
			free++
		}
		n, err := cons.Fetch(ctx, free, d.cfg.FetchWait, func(msg *queue.Message) {
			// Admission finishes even if Stop comes in the middle of it.
			a.start(context.WithoutCancel(ctx), lifecycle.Decode(msg, d.cfg.DefaultPool))
		})
		for range free - n {
			<-a.slots
		}
		switch {
		case ctx.Err() != nil:
		case err != nil:
			d.log.Warn("fetch intake", zap.Error(err))
			bo.Wait(ctx)
		case n > 0:
			bo.Reset()
		}
	}
}

// admitter runs the admissions of one loop.
type admitter struct {
	d     *Dispatcher
	slots chan struct{} // one per message held
	wg    sync.WaitGroup
	mu    sync.Mutex
	busy  map[string][]*lifecycle.Intake // ids being admitted → the submissions waiting behind
}

// start admits in, holding a slot, in a goroutine of its own, or queues it
// behind the submission of the same id being admitted.
func (a *admitter) start(ctx context.Context, in *lifecycle.Intake) {
	id := in.JobID()
	if id != "" {
		a.mu.Lock()
		if waiting, ok := a.busy[id]; ok {
			a.busy[id] = append(waiting, in)
			a.mu.Unlock()
			return
		}
		a.busy[id] = nil
		a.mu.Unlock()
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for in != nil {
			a.d.admit(ctx, in)
			<-a.slots
			in = a.next(id)
		}
	}()
}

// next takes the next submission waiting for id, nil when none is.
func (a *admitter) next(id string) *lifecycle.Intake {
	if id == "" {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	waiting := a.busy[id]
	if len(waiting) == 0 {
		delete(a.busy, id)
		return nil
	}
	a.busy[id] = waiting[1:]
	return waiting[0]
}

// admit admits one decoded message, NAKing it on error for a later try.
func (d *Dispatcher) admit(ctx context.Context, in *lifecycle.Intake) {
	out, job, err := d.core.AdmitIntake(ctx, in, d.admitOptions())
	if err != nil {
		msg := in.Message()
		d.log.Warn("admit", zap.String("subject", msg.Subject()), zap.Error(err))
		_ = msg.Nak(lifecycle.RetryDelay(300*time.Millisecond, msg.Delivered()))
		return
	}
	d.adm.count(job, out)
}

func (d *Dispatcher) admitOptions() lifecycle.AdmitOptions {
	opts := lifecycle.AdmitOptions{DefaultPool: d.cfg.DefaultPool}
	if d.adm.Models != nil {
		opts.Check = d.adm.check
	}
	return opts
}

// Admit handles one intake message: the lifecycle core decodes it, runs
// the admission checks and acks the message once the job is durably
// admitted or recorded as failed. On error the caller NAKs it.
func (d *Dispatcher) Admit(ctx context.Context, msg *queue.Message) error {
	out, job, err := d.core.Admit(ctx, msg, d.admitOptions())
	if err != nil {
		return err
	}
	d.adm.count(job, out)
	return nil
}
