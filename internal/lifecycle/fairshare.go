package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/startstop"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Fair share between tenants. A lane is one FIFO (a JetStream work-queue
// consumer shared by the pool's workers), so a tenant that queued 10,000
// jobs would be served entirely before another tenant's first job. To
// keep that from happening, a lane holds only a few jobs ahead of its
// workers (Ahead): once it has them, a new job waits in the hold
// (proto.HoldStream), under its pool, lane and tenant, and the Releaser
// of every dispatcher moves held jobs onto their lane as the workers take
// jobs, choosing the tenant by smooth weighted round-robin and within
// each tenant's concurrency cap. A tenant's new job thus waits behind at
// most about Ahead jobs plus one of each other tenant's, whatever their
// backlog. The hold, not a dispatcher's memory, holds the jobs: a
// dispatcher that dies loses nothing, and several release side by side.

// FairShare configures fair share between tenants within a lane.
type FairShare struct {
	// Weights are tenants' weights in the round-robin of a lane; a
	// tenant not named weighs 1.
	Weights map[string]int
	// Caps bound the jobs of each named tenant that are on a lane or
	// running, across the fleet; a tenant not named has no cap.
	Caps map[string]int
	// Ahead is how many jobs a lane keeps waiting ahead of its workers
	// before new jobs are held for their tenant's turn; negative means as
	// many as the pool has live workers (at least 1). 0 turns the
	// round-robin off: jobs go onto their lane in arrival order, as
	// without fair share (caps still hold).
	Ahead int
	// Every is how often the releaser reads the lanes and the hold; 0
	// means 100 ms. A job held by this dispatcher wakes it at once.
	Every time.Duration
}

// Validate names the first setting that cannot be used.
func (f FairShare) Validate() error {
	for name, m := range map[string]map[string]int{"weight": f.Weights, "cap": f.Caps} {
		for tenant, n := range m {
			if err := proto.ValidID(tenant); err != nil {
				return fmt.Errorf("fair share: tenant %q: %w", tenant, err)
			}
			if n < 1 {
				return fmt.Errorf("fair share: %s of tenant %s is %d; want 1 or more", name, tenant, n)
			}
		}
	}
	if f.Every < 0 {
		return fmt.Errorf("fair share: interval %v is negative", f.Every)
	}
	return nil
}

// ParseTenantNumbers reads "tenant=n" pairs, comma-separated
// (TENANT_WEIGHTS, TENANT_CAPS); "" is none.
func ParseTenantNumbers(s string) (map[string]int, error) {
	m := map[string]int{}
	for i, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		tenant, num, ok := strings.Cut(pair, "=")
		n, err := strconv.Atoi(strings.TrimSpace(num))
		tenant = strings.TrimSpace(tenant)
		if !ok || err != nil || n < 1 {
			return nil, fmt.Errorf("pair %d %q: want tenant=n with n a whole number of 1 or more", i+1, pair)
		}
		if err := proto.ValidID(tenant); err != nil {
			return nil, fmt.Errorf("pair %d %q: tenant: %w", i+1, pair, err)
		}
		if _, dup := m[tenant]; dup {
			return nil, fmt.Errorf("pair %d %q: tenant %s is named twice", i+1, pair, tenant)
		}
		m[tenant] = n
	}
	return m, nil
}

func (f FairShare) weight(tenant string) int {
	if w := f.Weights[tenant]; w > 0 {
		return w
	}
	return 1
}

// Releaser moves held jobs onto their lanes in fair-share order. Every
// dispatcher runs one; NewReleaser attaches it to its Core, whose
// admissions then put a job straight onto its lane while the lane has
// room and no job is held there, and hold it otherwise. A Core without
// a Releaser (the adapter's, for /retry) puts what it queues straight
// onto its lane: a retry is one job, and it does not wait its turn.
type Releaser struct {
	startstop.Service
	c    *Core
	cfg  FairShare
	log  *zap.Logger
	wake chan struct{}

	mu sync.Mutex
	// lanes is what the last read of the streams saw of each lane, and
	// what this dispatcher put on each since.
	lanes map[queue.LaneKey]*laneSeen
	// workers counts the live workers of each pool, read every
	// workersEvery.
	workers     map[string]int
	workersRead time.Time
	// credit is each lane's smooth weighted round-robin state.
	credit map[queue.LaneKey]map[string]int
}

// laneSeen is one lane as the releaser last saw it.
type laneSeen struct {
	waiting uint64 // on the lane, not taken by a worker (plus what this dispatcher put there since)
	held    uint64 // in the hold
}

// workersEvery is how often the releaser counts the pools' workers.
const workersEvery = time.Second

// NewReleaser returns the core's releaser and attaches it to the core.
func (c *Core) NewReleaser(cfg FairShare) (*Releaser, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Every == 0 {
		cfg.Every = 100 * time.Millisecond
	}
	r := &Releaser{
		c: c, cfg: cfg, log: c.log.Named("fairshare"), wake: make(chan struct{}, 1),
		lanes: map[queue.LaneKey]*laneSeen{}, workers: map[string]int{}, credit: map[queue.LaneKey]map[string]int{},
	}
	c.releaser.Store(r)
	return r, nil
}

// place puts an admitted job onto its lane, or into the hold for its
// turn (see Releaser).
func (c *Core) place(ctx context.Context, job *proto.Job, msgID string) error {
	r := c.releaser.Load()
	if r == nil || r.direct(job) {
		return c.q.PublishJob(ctx, job, msgID)
	}
	if err := c.q.HoldJob(ctx, job, msgID); err != nil {
		return err
	}
	r.mu.Lock()
	r.lane(queue.LaneKey{Pool: job.Pool, Lane: job.Lane}).held++
	r.mu.Unlock()
	r.nudge()
	return nil
}

// direct says whether a job goes straight onto its lane: its tenant has
// no cap, and the lane has room and holds no job (or the round-robin is
// off). It counts the job as on the lane until the next read.
func (r *Releaser) direct(job *proto.Job) bool {
	if r.cfg.Caps[job.Tenant] > 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lane(queue.LaneKey{Pool: job.Pool, Lane: job.Lane})
	if r.cfg.Ahead != 0 && (l.held > 0 || l.waiting >= r.ahead(job.Pool)) {
		return false
	}
	l.waiting++
	return true
}

// lane is what the releaser saw of lane k; r.mu is held.
func (r *Releaser) lane(k queue.LaneKey) *laneSeen {
	l := r.lanes[k]
	if l == nil {
		l = &laneSeen{}
		r.lanes[k] = l
	}
	return l
}

// ahead is how many jobs the lanes of pool keep waiting; r.mu is held.
func (r *Releaser) ahead(pool string) uint64 {
	if r.cfg.Ahead > 0 {
		return uint64(r.cfg.Ahead)
	}
	return uint64(max(1, r.workers[pool]))
}

func (r *Releaser) nudge() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Start runs the releases in the background; it returns at once. Stop
// ends them after the round in progress.
func (r *Releaser) Start(ctx context.Context) error {
	if err := r.Service.Start(ctx, r.loop); err != nil {
		return fmt.Errorf("start fair share: %w", err)
	}
	return nil
}

func (r *Releaser) loop(ctx context.Context) {
	// A round has a deadline, as a sweep has: a call that never returns
	// must not stop every later release.
	rounds(ctx, r.cfg.Every, r.wake, func(ctx context.Context) error {
		_, err := r.RunOnce(ctx)
		return err
	}, func(err error) { r.log.Warn("release held jobs", zap.Error(err)) })
}

// RunOnce reads the lanes and the hold and releases what the lanes have
// room for, returning how many jobs it put on lanes.
func (r *Releaser) RunOnce(ctx context.Context) (int, error) {
	holds, err := r.c.q.Holds(ctx)
	if err != nil {
		return 0, err
	}
	waiting, err := r.c.q.LanesWaiting(ctx)
	if err != nil {
		return 0, err
	}
	r.countWorkers(ctx)
	r.mu.Lock()
	r.lanes = map[queue.LaneKey]*laneSeen{}
	for k, n := range waiting {
		r.lanes[k] = &laneSeen{waiting: n}
	}
	for k, tenants := range holds {
		l := r.lane(k)
		for _, n := range tenants {
			l.held += n
		}
	}
	for k := range r.credit {
		if holds[k] == nil {
			delete(r.credit, k) // nothing held: no tenant banks credit
		}
	}
	r.mu.Unlock()
	keys := make([]queue.LaneKey, 0, len(holds))
	for k := range holds {
		keys = append(keys, k)
	}
	// Interactive lanes first, as workers take them.
	slices.SortFunc(keys, func(a, b queue.LaneKey) int {
		if a.Lane != b.Lane {
			if a.Lane == proto.LaneInteractive {
				return -1
			}
			return 1
		}
		if a.Pool < b.Pool {
			return -1
		}
		if a.Pool > b.Pool {
			return 1
		}
		return 0
	})
	released := 0
	var errs []error
	for _, k := range keys {
		n, err := r.releaseLane(ctx, k, holds[k])
		released += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return released, errors.Join(errs...)
}

// countWorkers refreshes the pools' live worker counts when they are due
// (the default Ahead). A failed read keeps the last counts.
func (r *Releaser) countWorkers(ctx context.Context) {
	if r.cfg.Ahead >= 0 {
		return
	}
	r.mu.Lock()
	due := time.Since(r.workersRead) >= workersEvery
	r.mu.Unlock()
	if !due {
		return
	}
	hbs, err := r.c.db.Workers(ctx)
	if err != nil {
		r.log.Debug("count workers", zap.Error(err))
		return
	}
	counts := map[string]int{}
	for _, hb := range hbs {
		for _, p := range append([]string{hb.Pool}, hb.MorePools...) {
			counts[p]++
		}
	}
	r.mu.Lock()
	r.workers, r.workersRead = counts, time.Now()
	r.mu.Unlock()
}

// releaseLane releases held jobs of one lane while it has room.
func (r *Releaser) releaseLane(ctx context.Context, k queue.LaneKey, tenants map[string]uint64) (int, error) {
	r.mu.Lock()
	l := r.lanes[k]
	var room uint64
	if r.cfg.Ahead == 0 {
		room = l.held
	} else if a := r.ahead(k.Pool); l.waiting < a {
		room = a - l.waiting
	}
	r.mu.Unlock()
	full := map[string]bool{}
	released := 0
	for room > 0 {
		tenant := r.pick(k, tenants, full)
		if tenant == "" {
			return released, nil
		}
		h, err := r.c.q.FirstHeld(ctx, k.Pool, k.Lane, tenant)
		if errors.Is(err, queue.ErrNoMessage) {
			tenants[tenant] = 0 // another dispatcher released its last
			continue
		}
		if err != nil {
			return released, err
		}
		got, err := r.c.db.ReleaseHeld(ctx, tenant, h.JobID, r.cfg.Caps[tenant])
		if err != nil {
			return released, err
		}
		switch got {
		case rdb.Full:
			full[tenant] = true
			continue
		case rdb.Gone:
			// It ended (cancelled, timed out) while it waited.
			if err := r.c.q.DropHeld(ctx, h); err != nil {
				return released, err
			}
			tenants[tenant]--
			r.seen(k, func(l *laneSeen) { l.held -= min(l.held, 1) })
			continue
		}
		if err := r.c.q.Release(ctx, h); err != nil {
			return released, err
		}
		tenants[tenant]--
		r.seen(k, func(l *laneSeen) { l.held -= min(l.held, 1); l.waiting++ })
		room--
		released++
		r.log.Debug("released held job", zap.String("job_id", h.JobID), zap.String("tenant", tenant),
			zap.String("pool", k.Pool), zap.String("lane", string(k.Lane)), zap.Duration("held", time.Since(h.Time)))
	}
	return released, nil
}

// seen changes what the releaser saw of lane k.
func (r *Releaser) seen(k queue.LaneKey, f func(l *laneSeen)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r.lanes[k])
}

// pick chooses the tenant whose job lane k releases next by smooth
// weighted round-robin (nginx's): each tenant with held jobs and room
// under its cap gains its weight, the one with the most credit is chosen
// and pays the sum of the weights. Over any run of picks each tenant's
// share is its weight's, and the picks of a tenant interleave with the
// others' instead of coming in a block. "" when no tenant can be chosen.
func (r *Releaser) pick(k queue.LaneKey, tenants map[string]uint64, full map[string]bool) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	credit := r.credit[k]
	if credit == nil {
		credit = map[string]int{}
		r.credit[k] = credit
	}
	best, total := "", 0
	for t, n := range tenants {
		if n == 0 || full[t] {
			delete(credit, t)
			continue
		}
		w := r.cfg.weight(t)
		credit[t] += w
		total += w
		if best == "" || credit[t] > credit[best] || (credit[t] == credit[best] && t < best) {
			best = t
		}
	}
	if best != "" {
		credit[best] -= total
	}
	return best
}
