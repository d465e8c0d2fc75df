package dispatch

import (
	"context"
	"errors"
	"fmt"
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
	// Sweeper configures the safety net of time and failure that every
	// replica runs (lifecycle.Sweeper).
	Sweeper lifecycle.SweeperConfig
}

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
	return c.Sweeper.Validate()
}

// Dispatcher admits submissions and sweeps. Start it, then Stop it; Stop
// is idempotent and safe without Start.
type Dispatcher struct {
	cfg     Config
	q       *queue.Client
	core    *lifecycle.Core
	sweeper *lifecycle.Sweeper
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
	if log == nil {
		log = zap.NewNop()
	}
	sw, err := core.NewSweeper(cfg.Sweeper)
	if err != nil {
		return nil, fmt.Errorf("dispatcher config: %w", err)
	}
	return &Dispatcher{cfg: cfg, q: q, core: core, sweeper: sw, adm: adm, log: log.Named("dispatch")}, nil
}

// Start opens the intake consumer and runs the admission loop and the
// sweeper in the background. It returns once they run.
//
// Shutdown order (Stop): the admission loop ends after the message in
// hand, then the sweeper after the sweep in progress.
func (d *Dispatcher) Start(ctx context.Context) error {
	cons, err := d.q.IntakeConsumer(ctx, queue.ConsumerConfig{AckWait: d.cfg.AckWait})
	if err != nil {
		return fmt.Errorf("start dispatcher: %w", err)
	}
	if err := d.sweeper.Start(ctx); err != nil {
		return fmt.Errorf("start dispatcher: %w", err)
	}
	if err := d.svc.Start(ctx, func(ctx context.Context) { d.loop(ctx, cons) }); err != nil {
		d.sweeper.Stop()
		return fmt.Errorf("start dispatcher: %w", err)
	}
	return nil
}

// Stop ends the loop after the message in hand, then the sweeper after
// the sweep in progress, and waits for both.
func (d *Dispatcher) Stop() {
	d.svc.Stop()
	d.sweeper.Stop()
}

// Sweep runs one sweep now (tests, and an operator's nudge).
func (d *Dispatcher) Sweep(ctx context.Context) error { return d.sweeper.RunOnce(ctx) }

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

// Admit handles one intake message: the lifecycle core decodes it, runs
// the admission checks and acks the message once the job is durably
// admitted or recorded as failed. On error the caller NAKs it.
func (d *Dispatcher) Admit(ctx context.Context, msg *queue.Message) error {
	opts := lifecycle.AdmitOptions{DefaultPool: d.cfg.DefaultPool}
	if d.adm.Models != nil {
		opts.Check = d.adm.check
	}
	out, job, err := d.core.Admit(ctx, msg, opts)
	if err != nil {
		return err
	}
	d.adm.count(job, out)
	return nil
}
