package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/startstop"
	"github.com/comfyfleet/comfyfleet/proto"
)

// SweeperConfig configures a Sweeper. The zero value of each field is its
// default.
type SweeperConfig struct {
	// Every is the interval between sweeps; 0 means 1 s.
	Every time.Duration
	// ExecutionGrace is how long past its execution deadline a job whose
	// worker went silent is still handed back; after it the job ends
	// TIMED_OUT. 0 means 30 s.
	ExecutionGrace time.Duration
	// LeaseGrace is how long lease reclaims wait after a gap in the sweeps
	// (Redis was down, or no sweeper ran), so that the workers, who could
	// not renew meanwhile, renew first; 0 means 30 s. It must exceed the
	// workers' lease TTL.
	LeaseGrace time.Duration
	// Batch bounds the jobs one sweep looks at per index; 0 means 200.
	Batch int
}

// Validate names the first setting that cannot be used.
func (c SweeperConfig) Validate() error {
	if c.Every < 0 || c.ExecutionGrace < 0 || c.LeaseGrace < 0 || c.Batch < 0 {
		return errors.New("sweeper settings must not be negative")
	}
	return nil
}

func (c SweeperConfig) withDefaults() SweeperConfig {
	if c.Every == 0 {
		c.Every = time.Second
	}
	if c.ExecutionGrace == 0 {
		c.ExecutionGrace = 30 * time.Second
	}
	if c.LeaseGrace == 0 {
		c.LeaseGrace = 30 * time.Second
	}
	if c.Batch == 0 {
		c.Batch = 200
	}
	return c
}

// Sweeper is the safety net of time and failure: jobs still queued past
// their policy.ttl end TIMED_OUT, and the job of a worker whose lease
// lapsed (it died, or lost Redis for longer than its lease) is handed back
// at once by NAKing its delivery, or ends TIMED_OUT past its execution
// deadline plus a grace. It also removes the request copies (with their
// secrets) of jobs whose retention ended. Every dispatcher replica runs one; each step is
// atomic in Redis, so two sweepers never act twice on one job. It serves
// gpuworkers and the job-take host's RunPod workers alike: one lease
// system.
type Sweeper struct {
	startstop.Service
	c   *Core
	cfg SweeperConfig
	log *zap.Logger

	mu     sync.Mutex
	paused bool
	// clocked is when this sweeper last recorded a sweep in Redis, by its
	// own monotonic clock, and resume when its own view of an outage
	// lets reclaims go on (sweepLeases).
	clocked, resume time.Time
	// missed is whether a sweep could not be recorded since the last
	// that was.
	missed bool
}

// NewSweeper returns a sweeper on the core.
func (c *Core) NewSweeper(cfg SweeperConfig) (*Sweeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Sweeper{c: c, cfg: cfg.withDefaults(), log: c.log.Named("sweeper")}, nil
}

// Start runs the sweeps in the background; it returns at once. Stop ends
// them after the sweep in progress.
func (s *Sweeper) Start(ctx context.Context) error {
	if err := s.Service.Start(ctx, s.loop); err != nil {
		return fmt.Errorf("start sweeper: %w", err)
	}
	return nil
}

func (s *Sweeper) loop(ctx context.Context) {
	// A sweep has a deadline: a Redis call that never returns (seen in
	// go-redis's pool after Redis restarted, with no deadline on the
	// call) would stop every later sweep, and with them TTL expiry and
	// lease reclaims. A sweep cut short is taken up by the next.
	rounds(ctx, s.cfg.Every, nil, s.RunOnce, func(err error) { s.log.Warn("sweep", zap.Error(err)) })
}

// rounds calls round every `every`, and when wake (nil: never) has a
// token, until ctx ends. Each round has a deadline of ten intervals, at
// least sweepTimeout, and outlives ctx's end; report gets its error
// unless ctx ended.
func rounds(ctx context.Context, every time.Duration, wake <-chan struct{}, round func(context.Context) error, report func(error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(10*every, sweepTimeout))
		err := round(rctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			report(err)
		}
	}
}

// sweepTimeout is the least time one sweep of the loop may take.
const sweepTimeout = 10 * time.Second

// RunOnce is one sweep.
func (s *Sweeper) RunOnce(ctx context.Context) error {
	return errors.Join(s.sweepTTL(ctx), s.sweepLeases(ctx), s.sweepKept(ctx))
}

// keptRounds bounds the batches of kept requests one sweep removes, so
// that a backlog (after an outage) is worked off over a few sweeps
// without holding up the others.
const keptRounds = 10

// sweepKept removes the kept requests, with their secrets, of the jobs
// whose record outlived its retention: from then on the job can no longer
// be retried. Of several sweepers one takes each job (rdb.DueKept); a
// copy that could not be removed is taken again by a later sweep.
func (s *Sweeper) sweepKept(ctx context.Context) error {
	for range keptRounds {
		ids, claim, err := s.c.db.DueKept(ctx, s.cfg.Batch)
		if err != nil || len(ids) == 0 {
			return err
		}
		dropped, derr := s.c.q.DropRequests(ctx, ids)
		if err := s.c.db.ForgetKept(ctx, claim, dropped); err != nil {
			return errors.Join(derr, err)
		}
		if derr != nil {
			return derr
		}
		s.log.Debug("removed the kept requests of jobs past their retention", zap.Int("jobs", len(dropped)))
		if len(ids) < s.cfg.Batch {
			return nil
		}
	}
	return nil
}

func (s *Sweeper) sweepTTL(ctx context.Context) error {
	ids, err := s.c.db.DueTTL(ctx, s.cfg.Batch)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		rec, err := s.c.db.Expire(ctx, id)
		switch {
		case err == nil:
			s.log.Info("job expired in the queue", zap.String("job_id", id))
			s.c.status(ctx, &proto.Event{JobID: id, Tenant: rec.Tenant, Status: proto.StatusTimedOut, Error: proto.MsgTTLExpired})
		case errors.Is(err, rdb.ErrTerminal), errors.Is(err, rdb.ErrNotFound),
			errors.Is(err, rdb.ErrIllegal), errors.Is(err, rdb.ErrNotDue):
			// Finished, gone, running (a requeue indexes it again), or
			// re-armed by a retry.
		default:
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Sweeper) sweepLeases(ctx context.Context) error {
	outage := max(3*s.cfg.Every, 3*time.Second)
	wait, err := s.c.db.SweepClock(ctx, outage, s.cfg.LeaseGrace)
	if err != nil {
		s.mu.Lock()
		s.missed = true
		s.mu.Unlock()
		return err
	}
	now := time.Now()
	s.mu.Lock()
	// Redis's record of the last sweep sees a gap of every sweeper; this
	// sweeper's own clock sees its own, also where Redis's record does
	// not (a Redis that came back without it): a sweeper that could not
	// reach Redis for that long knows that the workers could not either.
	// So does one that could not record a sweep at all: one call may
	// hang through most of an outage (go-redis redialling), leaving no
	// gap between the sweeps it recorded, and a Redis the workers could
	// not reach for a moment costs only a pause of the reclaims.
	if s.missed || (!s.clocked.IsZero() && now.Sub(s.clocked) > outage) {
		s.resume = now.Add(s.cfg.LeaseGrace)
	}
	s.clocked, s.missed = now, false
	wait = max(wait, s.resume.Sub(now))
	was := s.paused
	s.paused = wait > 0
	s.mu.Unlock()
	if wait > 0 {
		if !was {
			s.log.Warn("no sweep ran for a while (Redis or every dispatcher was away); lease reclaims wait for the workers to renew", zap.Duration("for", wait))
		}
		return nil
	}
	ids, err := s.c.db.LapsedLeases(ctx, s.cfg.Batch)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if err := s.reclaim(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reclaim deals with the job of a worker that went silent.
func (s *Sweeper) reclaim(ctx context.Context, id string) error {
	r, err := s.c.db.Reclaim(ctx, id, s.cfg.ExecutionGrace)
	if err != nil {
		return fmt.Errorf("reclaim job %s: %w", id, err)
	}
	if r.Outcome == rdb.Skipped {
		return nil
	}
	l := r.Lease
	var tenant string
	if r.Record != nil {
		tenant = r.Record.Tenant
	}
	log := s.log.With(zap.String("job_id", id), zap.Int("attempt", l.Attempt), zap.String("worker_id", l.WorkerID))
	switch r.Outcome {
	case rdb.Requeued:
		log.Warn("worker lost mid-job; handing the job back", zap.Int("failed_attempts", r.Failures))
		s.c.status(ctx, &proto.Event{JobID: id, Tenant: tenant, Status: proto.StatusInQueue, Attempt: l.Attempt, WorkerID: l.WorkerID,
			Error: proto.MsgLeaseLapsed})
		s.c.nak(id, l.Reply, 0)
	case rdb.TimedOut:
		log.Warn("job timed out on a silent worker")
		s.c.status(ctx, &proto.Event{JobID: id, Tenant: tenant, Status: proto.StatusTimedOut, Attempt: l.Attempt, WorkerID: l.WorkerID, Error: proto.MsgWorkerSilent})
		s.c.ack(ctx, id, l.Reply)
	case rdb.Settle:
		// Ended but never acked (its worker died after the write), waiting
		// in the queue, lost, or owing a dead letter: settle the delivery
		// the dead worker held.
		if r.Ack {
			s.c.ack(ctx, id, l.Reply)
		} else {
			s.c.nak(id, l.Reply, 0)
		}
	}
	return nil
}
