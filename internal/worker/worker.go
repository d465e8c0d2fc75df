package worker

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/modelcache"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Defaults of Config.
const (
	DefaultExecutionTimeout = 10 * time.Minute // RunPod's default policy.executionTimeout
	DefaultStallTimeout     = 5 * time.Minute
	DefaultMaxAttempts      = 3
	DefaultRetryDelay       = 5 * time.Second
	DefaultMaxInputBytes    = 100 << 20 // ComfyUI's own upload limit
	DefaultInputURLTimeout  = time.Minute
	DefaultConcurrency      = 4
	DefaultWarmupTimeout    = 10 * time.Minute
	DefaultProbeTimeout     = 3 * time.Second
	// DefaultPrefetch is the gpuworker's PREFETCH: one job queued in
	// ComfyUI behind the running one, so the GPU does not wait between
	// jobs (Config.Prefetch's zero value is none).
	DefaultPrefetch = 1
)

// downAfter is how many failed probes in a row mean ComfyUI is gone.
const downAfter = 2

// Config configures a worker. The zero value of each field is its default.
type Config struct {
	// ID names the worker in status records and events; required.
	ID string
	// Pool is the pool the worker serves; "" means proto.DefaultPool.
	Pool string
	// MorePools are further pools the worker serves after Pool: their
	// interactive lanes come after Pool's, before any batch lane.
	MorePools []string
	// BatchEvery makes every n-th take look at the batch lanes first, so
	// batch work keeps moving under sustained interactive load; 0 means
	// 10, a negative value never.
	BatchEvery int
	// AckWait is how long a job message may go without a heartbeat before
	// it is redelivered; 0 means 30 s. The worker heartbeats a job it
	// holds with every lease renewal, at least every AckWait/3.
	AckWait time.Duration
	// FetchWait bounds one wait for a job; 0 means 1 s.
	FetchWait time.Duration
	// Grace is how long Stop lets the jobs in hand finish; 0 means 30 s.
	Grace time.Duration
	// WarmDefer is the step of the redelivery delays of a job handed
	// back because another idle worker of the pool is readier for its
	// models than this one: holds them warm, or has its models by URL on
	// disk where this one would download them (routing.go: at once, then
	// 1×, then 2×); 0 means 25 ms, a negative value never hands jobs back.
	WarmDefer time.Duration
	// ReadyPoll is the interval of the ComfyUI liveness probe, which runs
	// all the time: the worker pulls only while ComfyUI answers, and two
	// failed probes in a row give the jobs in hand back. 0 means 250 ms.
	ReadyPoll time.Duration
	// ProbeTimeout bounds one probe; 0 means 3 s.
	ProbeTimeout time.Duration
	// ComfyOrgAPIKey is the default key for Comfy.org API nodes
	// (COMFY_ORG_API_KEY); a job's own key beats it. Secret.
	ComfyOrgAPIKey string
	// ProgressEvery throttles progress events; 0 means 250 ms.
	ProgressEvery time.Duration
	// PreviewEvery throttles preview events (jobs that ask for previews);
	// 0 means 1 s.
	PreviewEvery time.Duration

	// Prefetch is how many jobs beyond the running one the worker takes
	// and queues in ComfyUI, so the GPU never waits for the next prompt;
	// 0 means none (the gpuworker's PREFETCH defaults to DefaultPrefetch).
	// A busy worker prefetches only a job that has waited prefetchMinAge,
	// looking every prefetchPoll, and never waits on the lanes: a new job
	// goes to a worker waiting for work. A prefetched job is IN_PROGRESS from the moment it is taken, and its
	// execution timeout counts its wait in ComfyUI's queue (RunPod's clock
	// also starts at pickup). A prefetched batch job never delays
	// interactive work: while one waits in ComfyUI's queue the worker also
	// waits on the interactive lanes, and an interactive job it takes
	// (beyond Prefetch) first deletes the waiting batch prompts from
	// ComfyUI's queue and gives their jobs back without counting an
	// attempt, so it runs right after the running prompt (giveway.go). The
	// one batch job of every BatchEvery taken on the batch lanes' turn is
	// not given back.
	Prefetch int
	// ExecutionTimeout bounds a job from pickup to its end when its
	// policy.executionTimeout is unset; 0 means 10 minutes. A job past it
	// is interrupted in ComfyUI and ends TIMED_OUT.
	ExecutionTimeout time.Duration
	// StallTimeout ends a job (interrupted, TIMED_OUT) whose prompt runs
	// in ComfyUI without any progress message for this long; 0 means
	// 5 minutes, negative turns stall detection off.
	StallTimeout time.Duration
	// MaxAttempts bounds the attempts of a job that fails in a way worth
	// retrying (out of memory, ComfyUI unreachable or restarted): the last
	// one fails the job. 0 means 3.
	MaxAttempts int
	// RetryDelay is the base of the delay before a job that hit
	// out-of-memory or a transient error is redelivered; 0 means 5 s. It
	// doubles with every failed attempt (at most 16×), with jitter. A job
	// whose ComfyUI died is redelivered at once, to another worker.
	RetryDelay time.Duration
	// LeaseTTL is how long the lease on a running job lasts without
	// renewal (it is renewed every third of it while the worker lives);
	// once it lapses the dispatcher hands the job to another worker, and
	// this one, at its next renewal, stops the prompt and drops the job. 0
	// means the fleet heartbeat's TTL, or AckWait without a fleet.
	LeaseTTL time.Duration
	// RefreshWorker frees ComfyUI's models and caches after every job
	// (POST /free), as REFRESH_WORKER asks.
	RefreshWorker bool
	// WarmupWorkflow, when set, is run once before the first pull and
	// again whenever ComfyUI comes back after being down, so models are
	// loaded before real jobs arrive (worker-comfyui#90). It is an
	// API-format workflow, or a job input holding one in "workflow".
	WarmupWorkflow json.RawMessage
	// WarmupTimeout bounds one warm-up run; 0 means 10 minutes.
	WarmupTimeout time.Duration

	// MaxInputBytes caps each input file; 0 means 100 MB.
	MaxInputBytes int64
	// InputURLTimeout bounds the download of an input given by URL; 0
	// means 1 minute.
	InputURLTimeout time.Duration
	// InputURLAllow lists hosts, IPs and CIDR prefixes, each on a port,
	// that input URLs may reach although the SSRF guard forbids them
	// (private, loopback, link-local addresses), e.g. "10.0.0.0/8:9000" or
	// "assets.internal" (an entry without a port allows the scheme's
	// default port only; "host:*" any). See ssrf.ParseAllowList.
	InputURLAllow []string
	// InputURLAllowHTTP also accepts http:// input URLs; only https://
	// is accepted otherwise.
	InputURLAllowHTTP bool
	// S3ConfigAllow is InputURLAllow for the endpoints of jobs' own
	// s3Config (RunPod's per-request S3): the forbidden addresses a job may
	// send its outputs to.
	S3ConfigAllow []string
	// S3ConfigAllowHTTP also accepts http:// s3Config endpoints; only
	// https:// is accepted otherwise.
	S3ConfigAllowHTTP bool
	// Concurrency bounds the input uploads and the output transfers of a
	// job that run at once; 0 means 4.
	Concurrency int

	// InputDir is ComfyUI's input folder on this host, when the worker
	// runs beside its ComfyUI (the same container or pod): an attempt's
	// input files are removed from it when the attempt ends. Without it
	// they are emptied through ComfyUI's upload route, as ComfyUI has no
	// route that deletes one; the empty files stay (isolation.go).
	InputDir string
	// SharedFiles turns per-job file isolation off, for a fleet with one
	// tenant: workflows may name any file ComfyUI can reach (another
	// job's inputs, [output] and [temp] files, paths outside the input
	// folder), and inputs stay in ComfyUI's input folder after the job, as
	// before. The default refuses such workflows and removes the inputs.
	SharedFiles bool
	// OutputDir is ComfyUI's output folder on this host, when the worker
	// runs beside its ComfyUI: once a job's outputs are stored (S3 or the
	// blob store), the files ComfyUI wrote for it, as its history names
	// them, are removed from it (outputfiles.go). Empty, or with
	// SharedFiles (workflows may read [output] files), they stay.
	OutputDir string
	// KeepFiles keeps a job's inputs and outputs in ComfyUI's folders
	// after the job, as ComfyUI itself does.
	KeepFiles bool
}

// Validate checks the configuration and names the bad field.
func (c Config) Validate() error {
	if err := proto.ValidID(c.ID); err != nil {
		return fmt.Errorf("worker id: %w", err)
	}
	for _, p := range c.MorePools {
		if err := proto.ValidID(p); err != nil {
			return fmt.Errorf("pool %q: %w", p, err)
		}
	}
	if c.Pool != "" {
		if err := proto.ValidID(c.Pool); err != nil {
			return fmt.Errorf("pool: %w", err)
		}
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"ack wait", c.AckWait}, {"fetch wait", c.FetchWait}, {"grace", c.Grace}, {"ready poll", c.ReadyPoll},
		{"probe timeout", c.ProbeTimeout}, {"progress every", c.ProgressEvery}, {"preview every", c.PreviewEvery},
		{"execution timeout", c.ExecutionTimeout}, {"retry delay", c.RetryDelay}, {"warm-up timeout", c.WarmupTimeout},
		{"input URL timeout", c.InputURLTimeout}, {"lease TTL", c.LeaseTTL}} {
		if d.d < 0 {
			return fmt.Errorf("%s %s is negative", d.name, d.d)
		}
	}
	switch {
	case c.Prefetch < 0:
		return fmt.Errorf("prefetch %d is negative", c.Prefetch)
	case c.MaxAttempts < 0:
		return fmt.Errorf("max attempts %d is negative", c.MaxAttempts)
	case c.MaxInputBytes < 0:
		return fmt.Errorf("max input bytes %d is negative", c.MaxInputBytes)
	case c.Concurrency < 0:
		return fmt.Errorf("concurrency %d is negative", c.Concurrency)
	}
	if len(c.WarmupWorkflow) > 0 {
		if _, err := warmupPrompt(c.WarmupWorkflow); err != nil {
			return fmt.Errorf("warm-up workflow: %w", err)
		}
	}
	if _, err := inputGuard(c, nil); err != nil {
		return fmt.Errorf("input URL allow list: %w", err)
	}
	if _, err := s3ConfigGuard(c, nil); err != nil {
		return fmt.Errorf("s3Config allow list: %w", err)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Pool == "" {
		c.Pool = proto.DefaultPool
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.FetchWait == 0 {
		c.FetchWait = time.Second
	}
	if c.Grace == 0 {
		c.Grace = 30 * time.Second
	}
	if c.ReadyPoll == 0 {
		c.ReadyPoll = 250 * time.Millisecond
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = 250 * time.Millisecond
	}
	if c.PreviewEvery == 0 {
		c.PreviewEvery = time.Second
	}
	if c.ExecutionTimeout == 0 {
		c.ExecutionTimeout = DefaultExecutionTimeout
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = DefaultRetryDelay
	}
	if c.WarmupTimeout == 0 {
		c.WarmupTimeout = DefaultWarmupTimeout
	}
	if c.MaxInputBytes == 0 {
		c.MaxInputBytes = DefaultMaxInputBytes
	}
	if c.InputURLTimeout == 0 {
		c.InputURLTimeout = DefaultInputURLTimeout
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	return c
}

// ComfyUI is what the worker needs of its ComfyUI (a *comfy.Client).
type ComfyUI interface {
	// Start opens the WebSocket; the worker calls it once ComfyUI answers.
	Start(ctx context.Context) error
	SystemStats(ctx context.Context) (*comfy.SystemStats, error)
	Submit(ctx context.Context, workflow []byte, opts comfy.RunOptions) (*comfy.Submitted, error)
	Wait(ctx context.Context, promptID string) (*comfy.Result, error)
	Queue(ctx context.Context) (*comfy.QueueState, error)
	UploadImage(ctx context.Context, name, subfolder string, r io.Reader, contentType string, overwrite bool) (*comfy.Upload, error)
	View(ctx context.Context, ref comfy.FileRef) (io.ReadCloser, error)
	// Cancel stops a prompt whether it runs or waits in ComfyUI's queue.
	Cancel(ctx context.Context, promptID string) error
	// DeleteFromQueue removes prompts still waiting in ComfyUI's queue; a
	// running one is left alone (its Wait goes on).
	DeleteFromQueue(ctx context.Context, promptIDs ...string) error
	Free(ctx context.Context, unloadModels, freeMemory bool) error
}

var _ ComfyUI = (*comfy.Client)(nil)

// Heartbeats is where the worker announces itself and finds the other
// workers of its pool (rdb.DB).
type Heartbeats interface {
	Beat(ctx context.Context, w proto.Heartbeat) error
	RemoveWorker(ctx context.Context, id string) error
	Workers(ctx context.Context) ([]proto.Heartbeat, error)
	WorkerTTL() time.Duration
}

var _ Heartbeats = (*rdb.DB)(nil)

// Deps are the worker's collaborators.
type Deps struct {
	Queue *queue.Client
	// Core makes every change of a job's state.
	Core *lifecycle.Core
	// Blobs holds input files given by blob key and, without S3, outputs.
	Blobs blob.Store
	// S3 is the configured S3 store (BUCKET_*) for outputs; nil keeps
	// outputs in Blobs, returned inline as base64. A job's s3Config beats
	// it, and borrows its tuning.
	S3      *s3.Store
	ComfyUI ComfyUI
	// Fleet is optional; without it the worker does not announce itself.
	Fleet Heartbeats
	// Controls is optional; without it no lane is paused and the worker
	// never drains (control.go).
	Controls Controls
	// InputTLS is the TLS configuration for input URLs (a private CA);
	// nil means the system's roots.
	InputTLS *tls.Config
	// S3ConfigTLS is the same for the endpoints of jobs' s3Config.
	S3ConfigTLS *tls.Config
	// Models is the model cache that fetches the models jobs name by URL
	// (models.go); nil: such jobs fail. The heartbeat lists its files
	// (routing.go). The caller opens and closes it.
	Models *modelcache.Cache
	Logger *zap.Logger
	// Metrics, when set, records the worker's Prometheus series.
	Metrics *Metrics
}

// Worker runs jobs on one ComfyUI.
type Worker struct {
	cfg      Config
	q        *queue.Client
	core     *lifecycle.Core
	blobs    blob.Store
	comfy    ComfyUI
	fleet    Heartbeats
	controls Controls
	ctl      atomic.Pointer[controlState] // what it skips (control.go)
	lanes    *queue.Lanes                 // set by Start before the controls are read
	log      *zap.Logger
	s3       *s3.Store   // the configured S3 store, nil without one
	inputs   *ssrf.Guard // input URLs
	s3Guard  *ssrf.Guard // the endpoints of jobs' s3Config
	models   *modelcache.Cache
	warmup   []byte

	mu       sync.Mutex
	stopping context.CancelFunc // stops pulling
	abort    context.CancelFunc // cancels the jobs in hand
	done     chan struct{}
	self     proto.Heartbeat // the heartbeat's content
	routing  routing         // model lists and the fleet's warm workers (routing.go)
	metrics  *Metrics        // nil records nothing
	beatNow  chan struct{}
	active   map[string]*jobRef // jobs in hand by id
	alive    bool               // ComfyUI answers
	aliveCh  chan struct{}      // closed and replaced when alive changes
	everUp   bool
	warmNeed bool // run the warm-up before the next pull
	// batchWaiting is signalled when a batch job's prompt is queued in
	// ComfyUI: the interactive watch looks again (giveway.go).
	batchWaiting chan struct{}

	owed           owedInputs  // inputs to empty once ComfyUI is back (isolation.go)
	inputDirWarned atomic.Bool // InputDir was found not to hold the inputs
}

// jobRef is a job in hand, for cancels, ComfyUI's death and giving way to
// interactive work.
type jobRef struct {
	id     string
	cancel context.CancelCauseFunc
	// yields: a batch job that gives way to interactive work (not one of
	// the BatchEvery turn's).
	yields bool
	ex     *execution // set once claimed, under Worker.mu
}

// New builds a worker.
func New(cfg Config, d Deps) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	if d.Queue == nil || d.Core == nil || d.Blobs == nil || d.ComfyUI == nil {
		return nil, errors.New("worker: Queue, Core, Blobs and ComfyUI are required")
	}
	log := d.Logger
	if log == nil {
		log = zap.NewNop()
	}
	cfg = cfg.withDefaults()
	w := &Worker{
		cfg: cfg, q: d.Queue, core: d.Core, blobs: d.Blobs, comfy: d.ComfyUI, fleet: d.Fleet, s3: d.S3, controls: d.Controls,
		metrics:      d.Metrics,
		models:       d.Models,
		log:          log.Named("worker").With(zap.String("worker_id", cfg.ID)),
		self:         proto.Heartbeat{ID: cfg.ID, Pool: cfg.Pool, MorePools: cfg.MorePools, State: proto.WorkerInitializing},
		beatNow:      make(chan struct{}, 1),
		batchWaiting: make(chan struct{}, 1),
		active:       map[string]*jobRef{},
		aliveCh:      make(chan struct{}),
	}
	w.inputs, _ = inputGuard(cfg, d.InputTLS)
	w.s3Guard, _ = s3ConfigGuard(cfg, d.S3ConfigTLS)
	if len(cfg.WarmupWorkflow) > 0 {
		w.warmup, _ = warmupPrompt(cfg.WarmupWorkflow)
		w.warmNeed = true
	}
	return w, nil
}

// warmupPrompt extracts the workflow of a warm-up: an API-format workflow,
// or an input object holding one.
func warmupPrompt(raw []byte) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, errors.New("not a JSON object")
	}
	if _, ok := top["workflow"]; ok {
		in, err := proto.DecodeInput(raw)
		if err != nil {
			return nil, err
		}
		return in.Workflow, nil
	}
	return bytes.TrimSpace(raw), nil
}

// Start subscribes to cancels, opens the pool's consumer and runs the loop
// in the background. The loop pulls only while ComfyUI answers.
//
// Shutdown order (Stop): stop pulling; the jobs in hand finish within the
// grace period or are cancelled (their prompts stopped in ComfyUI) and go
// back on the queue; then the liveness probe and the cancel subscription
// stop, the ComfyUI connection closes and the heartbeat is removed.
func (w *Worker) Start(ctx context.Context) error {
	cons, err := w.q.OpenLanes(ctx, w.cfg.Pool, queue.LanesConfig{
		Consumer:   queue.ConsumerConfig{AckWait: w.cfg.AckWait},
		BatchEvery: w.cfg.BatchEvery,
		MorePools:  w.cfg.MorePools,
		Skip:       w.skip,
	})
	if err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	w.lanes = cons
	// The controls are read before the first pull, so that a paused lane
	// is never pulled at start.
	ctlChanged := make(chan struct{}, 1)
	var unsubscribeControl func()
	if w.controls != nil {
		if unsubscribeControl, err = w.q.SubscribeControl(func() {
			select {
			case ctlChanged <- struct{}{}:
			default:
			}
		}); err != nil {
			return fmt.Errorf("start worker: %w", err)
		}
		w.readControls(ctx)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done != nil {
		if unsubscribeControl != nil {
			unsubscribeControl()
		}
		return errors.New("start worker: already started")
	}
	unsubscribe, err := w.q.SubscribeCancels(w.onCancel)
	if err != nil {
		if unsubscribeControl != nil {
			unsubscribeControl()
		}
		return fmt.Errorf("start worker: %w", err)
	}
	base := context.WithoutCancel(ctx)
	pullCtx, stopping := context.WithCancel(base)
	jobCtx, abort := context.WithCancel(base)
	monCtx, stopMonitor := context.WithCancel(base)
	connCtx, closeConn := context.WithCancel(base)
	w.stopping, w.abort, w.done = stopping, abort, make(chan struct{})
	beatDone := make(chan struct{})
	monDone := make(chan struct{})
	ctlDone := make(chan struct{})
	go w.beat(pullCtx, beatDone)
	go w.monitor(monCtx, monDone)
	if w.controls != nil {
		go w.watchControls(pullCtx, ctlChanged, ctlDone)
	} else {
		close(ctlDone)
	}
	go func() {
		w.loop(pullCtx, jobCtx, connCtx, cons)
		stopMonitor()
		<-monDone
		<-ctlDone
		if unsubscribeControl != nil {
			unsubscribeControl()
		}
		unsubscribe()
		abort()
		closeConn() // ends the ComfyUI connection's loop, now no job needs it
		<-beatDone
		close(w.done)
	}()
	return nil
}

// Stop stops pulling, waits up to the grace period for the jobs in hand,
// then cancels them (they go back on the queue) and waits for the loop.
// It is idempotent and safe without Start.
func (w *Worker) Stop() {
	w.mu.Lock()
	stopping, abort, done := w.stopping, w.abort, w.done
	w.mu.Unlock()
	if done == nil {
		return
	}
	stopping()
	t := time.NewTimer(w.cfg.Grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		w.log.Info("grace period over, interrupting the jobs in hand")
		abort()
		<-done
	}
	abort()
	w.inputs.Close()
	w.s3Guard.Close()
}

// loop pulls jobs while pullCtx lasts and runs each under jobCtx; connCtx
// bounds the ComfyUI connection, which outlives every job.
func (w *Worker) loop(pullCtx, jobCtx, connCtx context.Context, cons *queue.Lanes) {
	bo := backoff.New(100*time.Millisecond, 5*time.Second)
	connected := false
	slots := make(chan struct{}, 1+w.cfg.Prefetch)
	freed := make(chan struct{}, 1) // a slot was given back
	var jobs, watch sync.WaitGroup
	defer watch.Wait()
	defer jobs.Wait()
	if w.cfg.Prefetch > 0 {
		watch.Add(1)
		go func() {
			defer watch.Done()
			w.watchInteractive(pullCtx, jobCtx, cons)
		}()
	}
	for pullCtx.Err() == nil {
		select {
		case slots <- struct{}{}:
		case <-pullCtx.Done():
			return
		}
		release := func() {
			<-slots
			select {
			case freed <- struct{}{}:
			default:
			}
		}
		// A take beyond the running job (a prefetch) only takes a job
		// that already waits, and never waits on the lanes itself: a
		// worker that waits for work would get a new job as often as
		// this busy one, which would run it only after its own.
		prefetch := len(slots) > 1
		if err := w.waitReady(pullCtx); err != nil {
			release()
			return
		}
		if !connected {
			if err := w.comfy.Start(connCtx); err != nil {
				w.log.Warn("connect to comfyui", zap.Error(err))
				release()
				bo.Wait(pullCtx)
				continue
			}
			connected = true
		}
		if w.needWarmup() {
			jobs.Wait() // the GPU is ours alone for the warm-up
			w.runWarmup(pullCtx)
		}
		w.emptyOwed(pullCtx)
		wait := w.cfg.FetchWait
		if prefetch {
			wait = 0
		}
		msg, err := cons.Next(pullCtx, wait)
		switch {
		case errors.Is(err, queue.ErrNoMessage), pullCtx.Err() != nil:
			release()
			if prefetch && len(slots) > 0 { // a job is still in hand
				w.pausePrefetch(pullCtx, freed)
			}
			continue
		case err != nil:
			release()
			w.log.Warn("fetch job", zap.Error(err))
			bo.Wait(pullCtx)
			continue
		}
		bo.Reset()
		if prefetch && msg.Age() < prefetchMinAge {
			// New: a worker waiting for work takes it at once, and
			// starts it sooner than this one would.
			_ = msg.Nak(0)
			release()
			w.pausePrefetch(pullCtx, freed)
			continue
		}
		jobs.Add(1)
		go func() {
			defer jobs.Done()
			defer release()
			w.handle(jobCtx, msg)
		}()
	}
}

// prefetchPoll is how often a busy worker looks for a job to prefetch
// (and, holding a batch job that gives way, for an interactive one).
const prefetchPoll = 100 * time.Millisecond

// prefetchMinAge is how long a job waits before a busy worker prefetches
// it: long enough for an idle worker, which looks at every lane at least
// every 100 ms, to have taken it.
const prefetchMinAge = 2 * prefetchPoll

// pausePrefetch waits before the next look for a job to prefetch: for
// prefetchPoll, or until a job in hand ends (freed), when the worker may
// wait on the lanes again.
func (w *Worker) pausePrefetch(ctx context.Context, freed <-chan struct{}) {
	t := time.NewTimer(prefetchPoll)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-freed:
	case <-t.C:
	}
}

// onCancel is the cf.ctl.cancel handler: a job in hand is stopped (its
// prompt removed from ComfyUI's queue or interrupted). The canceller has
// already made the status CANCELLED; the job's delivery is acked.
func (w *Worker) onCancel(jobID string) {
	w.mu.Lock()
	ref := w.active[jobID]
	w.mu.Unlock()
	if ref != nil {
		w.log.Info("cancelling job", zap.String("job_id", jobID))
		ref.cancel(errCancelled)
	}
}

// track registers a job in hand; the returned func forgets it.
func (w *Worker) track(ref *jobRef) (untrack func()) {
	w.mu.Lock()
	w.active[ref.id] = ref
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		if w.active[ref.id] == ref {
			delete(w.active, ref.id)
		}
		var other string
		for id := range w.active {
			other = id
			break
		}
		w.mu.Unlock()
		if other != "" {
			w.setState(proto.WorkerRunning, other)
		} else if w.isAlive() {
			w.setState(proto.WorkerIdle, "")
		}
	}
}

// monitor probes ComfyUI every ReadyPoll until ctx ends. Two failures in a
// row mark it down, which gives every job in hand back to the queue; the
// first success marks it up again.
func (w *Worker) monitor(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	fails := 0
	t := time.NewTicker(w.cfg.ReadyPoll)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, w.cfg.ProbeTimeout)
		stats, err := w.comfy.SystemStats(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			fails = 0
			w.setAlive(true, stats, nil)
			w.refreshModels(ctx)
		} else {
			fails++
			if fails >= downAfter {
				w.setAlive(false, nil, err)
				w.forgetModels()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *Worker) setAlive(alive bool, stats *comfy.SystemStats, err error) {
	w.mu.Lock()
	changed := w.alive != alive
	wasUp := w.everUp
	if stats != nil {
		w.self.ComfyUIVersion = stats.ComfyUIVersion
		if len(stats.Devices) > 0 {
			w.self.Device = stats.Devices[0].Name
			w.self.VRAMTotal, w.self.VRAMFree = stats.Devices[0].VRAMTotal, stats.Devices[0].VRAMFree
		}
	}
	var refs []*jobRef
	if changed {
		w.alive = alive
		close(w.aliveCh)
		w.aliveCh = make(chan struct{})
		if alive {
			w.everUp = true
		} else {
			for _, r := range w.active {
				refs = append(refs, r)
			}
			if len(w.warmup) > 0 {
				w.warmNeed = true
			}
		}
	}
	running := len(w.active) > 0
	w.mu.Unlock()
	if !changed {
		return
	}
	if alive {
		if wasUp {
			w.log.Info("comfyui is back")
		} else {
			w.log.Info("comfyui is up")
		}
		if !running {
			w.setState(proto.WorkerIdle, "")
		}
		return
	}
	w.log.Warn("comfyui stopped answering; giving the jobs in hand back", zap.Int("jobs", len(refs)), zap.Error(err))
	w.setState(proto.WorkerUnhealthy, "")
	for _, r := range refs {
		r.cancel(errComfyDown)
	}
}

func (w *Worker) isAlive() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.alive
}

// waitReady blocks until ComfyUI answers.
func (w *Worker) waitReady(ctx context.Context) error {
	for {
		w.mu.Lock()
		alive, ch := w.alive, w.aliveCh
		w.mu.Unlock()
		if alive {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

func (w *Worker) needWarmup() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.warmNeed
}

// runWarmup runs the warm-up workflow once. A failure is logged, not
// retried, unless ComfyUI went away meanwhile (then it runs when it is back).
func (w *Worker) runWarmup(ctx context.Context) {
	w.setState(proto.WorkerInitializing, "")
	ctx, cancel := context.WithTimeout(ctx, w.cfg.WarmupTimeout)
	defer cancel()
	start := time.Now()
	sub, err := w.comfy.Submit(ctx, w.warmup, comfy.RunOptions{})
	if err == nil {
		_, err = w.comfy.Wait(ctx, sub.PromptID)
		if err != nil && ctx.Err() != nil {
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = w.comfy.Cancel(cctx, sub.PromptID)
			ccancel()
		}
	}
	w.mu.Lock()
	if !(errors.Is(err, comfy.ErrUnavailable) || errors.Is(err, comfy.ErrPromptLost)) {
		w.warmNeed = false
	}
	w.mu.Unlock()
	if err != nil {
		w.log.Warn("warm-up workflow failed", zap.Duration("took", time.Since(start)), zap.Error(err))
	} else {
		w.log.Info("warm-up workflow done", zap.Duration("took", time.Since(start)))
	}
	w.setState(proto.WorkerIdle, "")
}

// setState records the worker's state and beats at once.
func (w *Worker) setState(state, jobID string) {
	w.mu.Lock()
	changed := w.self.State != state || w.self.JobID != jobID
	if w.self.JobID != jobID {
		w.self.Progress = 0 // the progress is the job's
	}
	w.self.State, w.self.JobID = state, jobID
	w.mu.Unlock()
	if changed {
		select {
		case w.beatNow <- struct{}{}:
		default:
		}
	}
}

// beat writes the heartbeat every third of its TTL and on every state
// change, and removes it when the worker stops.
func (w *Worker) beat(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	if w.fleet == nil {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(w.fleet.WorkerTTL() / 3)
	defer t.Stop()
	for {
		w.mu.Lock()
		self := w.self
		w.mu.Unlock()
		self.State = w.shownState(self.State)
		self.Cached = w.cachedModels()
		bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := w.fleet.Beat(bctx, self); err != nil && ctx.Err() == nil {
			w.log.Warn("heartbeat", zap.Error(err))
		}
		cancel()
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = w.fleet.RemoveWorker(rctx, w.cfg.ID)
			cancel()
			return
		case <-t.C:
		case <-w.beatNow:
		}
	}
}
