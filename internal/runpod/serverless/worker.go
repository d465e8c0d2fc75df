package serverless

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Config configures serverless mode. The URL templates, key, worker id
// and ping interval are what RunPod's platform sets in the container's
// environment (§A.2). The zero value of each other field is its default.
type Config struct {
	// GetJobURL is RUNPOD_WEBHOOK_GET_JOB; required.
	GetJobURL string
	// PostOutputURL is RUNPOD_WEBHOOK_POST_OUTPUT; required.
	PostOutputURL string
	// PostStreamURL is RUNPOD_WEBHOOK_POST_STREAM; "" means progress is
	// not streamed.
	PostStreamURL string
	// PingURL is RUNPOD_WEBHOOK_PING; pings are sent only when it, APIKey
	// and WorkerID are all set, as the SDK does.
	PingURL string
	// APIKey is RUNPOD_AI_API_KEY, sent raw in Authorization.
	APIKey string
	// WorkerID is RUNPOD_POD_ID; "" means a random id (and no pings).
	WorkerID string
	// PingInterval is RUNPOD_PING_INTERVAL; 0 means 10 s.
	PingInterval time.Duration
	// Concurrency is how many RunPod jobs are held at once; 0 means 1.
	Concurrency int
	// RefreshWorker adds "stopPod": true to every result and ends the
	// worker after its first job, as the SDK's refresh_worker does.
	RefreshWorker bool
	// Pool receives the jobs; "" means proto.DefaultPool.
	Pool string
	// Tenant owns the jobs taken from RunPod; "" means
	// proto.DefaultTenant. The API shows them to that tenant's keys.
	Tenant string
	// Version is reported as runpod_version in pings; "" means
	// "comfyfleet-go".
	Version string
	// InlineBlobMax: see runpod.Config; 0 means runpod.DefaultInlineBlobMax.
	InlineBlobMax int
	// Grace is how long Stop lets held jobs finish; 0 means 30 s.
	Grace time.Duration

	// Timings of the protocol; tests shorten them.
	TakeTimeout  time.Duration   // client bound of a take; 0 means 90 s
	StopTimeout  time.Duration   // client bound of a stop poll; 0 means 90 s
	PostTimeout  time.Duration   // bound of one result post; 0 means 60 s
	ThrottleWait time.Duration   // after a 429; 0 means 5 s
	IdleWait     time.Duration   // least time between empty takes, and after an empty stop poll; 0 means 1 s
	RetryWaits   []time.Duration // between result post attempts; nil means 2 s, 3 s
	PollInterval time.Duration   // how often a held job's record is read besides events; 0 means 1 s
}

// Validate names the first setting that cannot be used.
func (c Config) Validate() error {
	switch {
	case c.GetJobURL == "":
		return errors.New("RUNPOD_WEBHOOK_GET_JOB is empty")
	case c.PostOutputURL == "":
		return errors.New("RUNPOD_WEBHOOK_POST_OUTPUT must be set with RUNPOD_WEBHOOK_GET_JOB")
	case c.Concurrency < 0:
		return fmt.Errorf("concurrency %d is negative", c.Concurrency)
	case c.PingInterval < 0:
		return fmt.Errorf("ping interval %s is negative", c.PingInterval)
	}
	if c.Pool != "" {
		if err := proto.ValidID(c.Pool); err != nil {
			return fmt.Errorf("pool: %w", err)
		}
	}
	if c.Tenant != "" {
		if err := proto.ValidID(c.Tenant); err != nil {
			return fmt.Errorf("tenant: %w", err)
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.WorkerID == "" {
		c.WorkerID = uuid.NewString()
		c.PingURL = "" // the SDK sends no pings without RUNPOD_POD_ID
	}
	if c.PingInterval == 0 {
		c.PingInterval = 10 * time.Second
	}
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	if c.Pool == "" {
		c.Pool = proto.DefaultPool
	}
	if c.Tenant == "" {
		c.Tenant = proto.DefaultTenant
	}
	if c.Version == "" {
		c.Version = "comfyfleet-go"
	}
	if c.InlineBlobMax == 0 {
		c.InlineBlobMax = runpod.DefaultInlineBlobMax
	}
	if c.Grace == 0 {
		c.Grace = 30 * time.Second
	}
	for _, d := range []*time.Duration{&c.TakeTimeout, &c.StopTimeout} {
		if *d == 0 {
			*d = 90 * time.Second
		}
	}
	if c.PostTimeout == 0 {
		c.PostTimeout = time.Minute
	}
	if c.ThrottleWait == 0 {
		c.ThrottleWait = 5 * time.Second
	}
	if c.IdleWait == 0 {
		c.IdleWait = time.Second
	}
	if c.RetryWaits == nil {
		c.RetryWaits = []time.Duration{2 * time.Second, 3 * time.Second}
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	return c
}

// Deps are the worker's collaborators.
type Deps struct {
	Queue *queue.Client
	// Core submits the fleet jobs and cancels them.
	Core   *lifecycle.Core
	Blobs  blob.Store
	Logger *zap.Logger
}

// Worker takes jobs from RunPod and runs them on the fleet. Start it, then
// Stop it; Stop is idempotent and safe without Start. Done is closed when
// the worker ends by itself (RefreshWorker) or after Stop.
type Worker struct {
	cfg  Config
	d    Deps
	u    urls
	plat *platform
	log  *zap.Logger

	mu         sync.Mutex
	held       map[string]*heldJob // by RunPod job id, in take order
	order      []string
	refreshing bool
	slotFree   chan struct{}

	stopLoops context.CancelFunc // ends take, stop and ping loops
	abortJobs context.CancelFunc // gives up held jobs
	loops     sync.WaitGroup
	jobs      sync.WaitGroup
	started   bool
	stopOnce  sync.Once
	done      chan struct{}
}

// heldJob is a RunPod job the worker has taken and not yet reported.
type heldJob struct {
	job     job
	fleetID string
	stop    chan struct{} // closed when the platform stops the job
	stopped bool
}

// New builds a worker.
func New(cfg Config, d Deps) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("serverless config: %w", err)
	}
	if d.Queue == nil || d.Core == nil || d.Blobs == nil {
		return nil, errors.New("serverless: Queue, Core and Blobs are required")
	}
	cfg = cfg.withDefaults()
	log := d.Logger
	if log == nil {
		log = zap.NewNop()
	}
	w := &Worker{cfg: cfg, d: d, held: map[string]*heldJob{}, slotFree: make(chan struct{}, 1), done: make(chan struct{})}
	w.log = log.Named("serverless").With(zap.String("runpod_worker_id", cfg.WorkerID))
	w.u = newURLs(cfg.GetJobURL, cfg.PostOutputURL, cfg.PostStreamURL, cfg.PingURL, cfg.WorkerID)
	w.plat = newPlatform(cfg, w.u)
	return w, nil
}

// Start runs the take loop, the stop channel and the heartbeat in the
// background and returns at once.
func (w *Worker) Start(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started {
		return errors.New("start serverless worker: already started")
	}
	w.started = true
	base := context.WithoutCancel(ctx)
	loopCtx, stopLoops := context.WithCancel(base)
	jobCtx, abortJobs := context.WithCancel(base)
	w.stopLoops, w.abortJobs = stopLoops, abortJobs
	w.loops.Add(1)
	go func() { defer w.loops.Done(); w.takeLoop(loopCtx, jobCtx) }()
	if u, ok := w.u.stop(); ok {
		w.loops.Add(1)
		go func() { defer w.loops.Done(); w.stopLoop(loopCtx, u) }()
	}
	if w.cfg.PingURL != "" && w.cfg.APIKey != "" {
		w.loops.Add(1)
		go func() { defer w.loops.Done(); w.pingLoop(loopCtx) }()
	}
	w.log.Info("serverless worker started", zap.Int("concurrency", w.cfg.Concurrency), zap.Bool("refresh_worker", w.cfg.RefreshWorker))
	return nil
}

// Stop stops taking jobs, lets held jobs finish for up to Grace, then
// gives up the rest unreported (RunPod hands them out again or times them
// out; the fleet keeps their results) and waits for everything to end.
// Shutdown order: loops first, so no new job arrives; then the jobs.
func (w *Worker) Stop() {
	w.mu.Lock()
	started := w.started
	w.mu.Unlock()
	if !started {
		return
	}
	w.stopOnce.Do(func() {
		w.stopLoops()
		w.loops.Wait()
		finished := make(chan struct{})
		go func() { w.jobs.Wait(); close(finished) }()
		t := time.NewTimer(w.cfg.Grace)
		select {
		case <-finished:
		case <-t.C:
			w.log.Info("grace period over, giving up held jobs", zap.Strings("job_ids", w.heldIDs()))
			w.abortJobs()
			<-finished
		}
		t.Stop()
		w.abortJobs()
		w.closeDone()
	})
}

// Done is closed once the worker has ended.
func (w *Worker) Done() <-chan struct{} { return w.done }

func (w *Worker) closeDone() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
}

func (w *Worker) heldIDs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.order...)
}

// takeLoop keeps Concurrency jobs in hand (§A.13): job-take when one slot
// is free, job-take-batch when more are.
func (w *Worker) takeLoop(ctx, jobCtx context.Context) {
	bo := backoff.New(time.Second, 30*time.Second)
	for ctx.Err() == nil {
		w.mu.Lock()
		free, held, refreshing := w.cfg.Concurrency-len(w.held), len(w.held), w.refreshing
		w.mu.Unlock()
		if refreshing {
			return
		}
		if free <= 0 {
			select {
			case <-ctx.Done():
			case <-w.slotFree:
			}
			continue
		}
		start := time.Now()
		jobs, res, err := w.plat.take(ctx, free, held > 0)
		if ctx.Err() != nil {
			// A job taken as the worker stops is given up: RunPod hands
			// it out again once this worker's pings stop naming it.
			return
		}
		switch res {
		case takeJobs:
			bo.Reset()
			for _, j := range jobs {
				w.hold(jobCtx, j)
			}
			if err != nil {
				w.log.Warn("take", zap.Error(err))
			}
			continue
		case takeThrottle:
			sleep(ctx, w.cfg.ThrottleWait)
		case takeFailed:
			w.log.Warn("take", zap.Error(err))
			bo.Wait(ctx)
		case takeEmpty:
			bo.Reset()
			if err != nil {
				w.log.Warn("take", zap.Error(err))
			}
			// The platform holds an empty take; one that answers at once
			// must not make the loop spin.
			sleep(ctx, w.cfg.IdleWait-time.Since(start))
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// hold starts a job taken from RunPod.
func (w *Worker) hold(ctx context.Context, j job) {
	h := &heldJob{job: j, fleetID: FleetID(j.ID), stop: make(chan struct{})}
	w.mu.Lock()
	if _, dup := w.held[j.ID]; dup {
		w.mu.Unlock()
		w.log.Warn("platform handed out a job this worker already holds", zap.String("job_id", j.ID))
		return
	}
	w.held[j.ID] = h
	w.order = append(w.order, j.ID)
	w.mu.Unlock()
	w.jobs.Add(1)
	go func() {
		defer w.jobs.Done()
		w.run(ctx, h)
	}()
}

// release forgets a job once it is reported (or given up) and frees its
// slot.
func (w *Worker) release(h *heldJob) {
	w.mu.Lock()
	delete(w.held, h.job.ID)
	for i, id := range w.order {
		if id == h.job.ID {
			w.order = append(w.order[:i], w.order[i+1:]...)
			break
		}
	}
	ended := w.refreshing && len(w.held) == 0
	w.mu.Unlock()
	select {
	case w.slotFree <- struct{}{}:
	default:
	}
	if ended {
		// refresh_worker: the job is reported and nothing else is held;
		// the worker ends, and its process with it, so RunPod starts a
		// fresh one.
		w.log.Info("refresh_worker: stopping after the job")
		go w.Stop()
	}
}

// stopLoop long-polls job-stop and stops the jobs it names (§A.11).
func (w *Worker) stopLoop(ctx context.Context, u string) {
	for ctx.Err() == nil {
		ids, throttled, err := w.plat.stopPoll(ctx, u)
		if ctx.Err() != nil {
			return
		}
		switch {
		case throttled:
			sleep(ctx, w.cfg.ThrottleWait)
			continue
		case err != nil:
			w.log.Warn("poll job-stop", zap.Error(err))
			sleep(ctx, w.cfg.IdleWait)
			continue
		case len(ids) == 0:
			sleep(ctx, w.cfg.IdleWait)
			continue
		}
		w.mu.Lock()
		for _, id := range ids {
			if h, ok := w.held[id]; ok && !h.stopped {
				h.stopped = true
				close(h.stop)
			}
		}
		w.mu.Unlock()
	}
}

// pingLoop sends a heartbeat every PingInterval with the held jobs' ids.
func (w *Worker) pingLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.PingInterval)
	defer t.Stop()
	for {
		if err := w.plat.ping(ctx, w.heldIDs()); err != nil && ctx.Err() == nil {
			w.log.Debug("ping", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// FleetID is the fleet's job id for a RunPod job id: "runpod-<id>" when
// that is a valid fleet id (RunPod's "<uuid>-u1" and "sync-…" give one),
// otherwise "runpod-" and a stable hash of the id. The prefix keeps RunPod's
// ids apart from the fleet's own (a RunPod endpoint may even be served by
// this fleet's job-take host). The same RunPod job handed out twice (after
// a worker was lost) maps to the same fleet job, which then runs once.
func FleetID(runpodID string) string {
	const prefix = "runpod-"
	if proto.ValidID(prefix+runpodID) == nil {
		return prefix + runpodID
	}
	return prefix + strings.ReplaceAll(uuid.NewSHA1(uuid.NameSpaceURL, []byte("runpod:"+runpodID)).String(), "-", "")
}
