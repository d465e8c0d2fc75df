package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Config configures a worker. The zero value of each field is its default.
type Config struct {
	// ID names the worker in status records and events; required.
	ID string
	// Pool is the pool the worker serves; "" means proto.DefaultPool.
	Pool string
	// AckWait is how long a job message may go without a heartbeat before
	// it is redelivered; 0 means 30 s. The worker heartbeats every AckWait/3.
	AckWait time.Duration
	// FetchWait bounds one wait for a job; 0 means 1 s.
	FetchWait time.Duration
	// Grace is how long Stop lets the job in hand finish; 0 means 30 s.
	Grace time.Duration
	// ReadyPoll is the interval of the ComfyUI readiness probe; 0 means 250 ms.
	ReadyPoll time.Duration
	// ComfyOrgAPIKey is the default key for Comfy.org API nodes
	// (COMFY_ORG_API_KEY); a job's own key beats it.
	ComfyOrgAPIKey string
	// ProgressEvery throttles progress events; 0 means 250 ms.
	ProgressEvery time.Duration
}

// Validate checks the configuration and names the bad field.
func (c Config) Validate() error {
	if err := proto.ValidID(c.ID); err != nil {
		return fmt.Errorf("worker id: %w", err)
	}
	if c.Pool != "" {
		if err := proto.ValidID(c.Pool); err != nil {
			return fmt.Errorf("pool: %w", err)
		}
	}
	for name, d := range map[string]time.Duration{"ack wait": c.AckWait, "fetch wait": c.FetchWait, "grace": c.Grace, "ready poll": c.ReadyPoll, "progress every": c.ProgressEvery} {
		if d < 0 {
			return fmt.Errorf("%s %s is negative", name, d)
		}
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
	if c.ProgressEvery == 0 {
		c.ProgressEvery = 250 * time.Millisecond
	}
	return c
}

// StatusStore is what the worker needs of the status records.
type StatusStore interface {
	Claim(ctx context.Context, id, workerID string) (int, *proto.Record, error)
	Requeue(ctx context.Context, id string, attempt int, reason string) (*proto.Record, error)
	Finish(ctx context.Context, id string, attempt int, to proto.Status, output json.RawMessage, errMsg string) (*proto.Record, error)
}

// ComfyUI is what the worker needs of its ComfyUI.
type ComfyUI interface {
	// Start opens the WebSocket; the worker calls it once ComfyUI answers.
	Start(ctx context.Context) error
	SystemStats(ctx context.Context) (*comfy.SystemStats, error)
	Run(ctx context.Context, workflow []byte, opts comfy.RunOptions) (*comfy.Result, error)
	UploadImage(ctx context.Context, name, subfolder string, r io.Reader, contentType string, overwrite bool) (*comfy.Upload, error)
	View(ctx context.Context, ref comfy.FileRef) (io.ReadCloser, error)
	// Cancel stops a prompt whether it runs or waits in ComfyUI's queue.
	Cancel(ctx context.Context, promptID string) error
}

// Heartbeats is where the worker announces itself (fleet.Registry).
type Heartbeats interface {
	Beat(ctx context.Context, w fleet.Worker) error
	Remove(ctx context.Context, id string) error
	TTL() time.Duration
}

// Deps are the worker's collaborators.
type Deps struct {
	Queue   *queue.Client
	Store   StatusStore
	Blobs   blob.Store
	ComfyUI ComfyUI
	// Fleet is optional; without it the worker does not announce itself.
	Fleet  Heartbeats
	Logger *zap.Logger
}

// Worker runs jobs on one ComfyUI.
type Worker struct {
	cfg   Config
	q     *queue.Client
	store StatusStore
	blobs blob.Store
	comfy ComfyUI
	fleet Heartbeats
	log   *zap.Logger

	mu       sync.Mutex
	stopping context.CancelFunc // stops pulling
	abort    context.CancelFunc // cancels the job in hand
	done     chan struct{}
	self     fleet.Worker // the heartbeat's content; guarded by mu
	beatNow  chan struct{}
}

// New builds a worker.
func New(cfg Config, d Deps) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	if d.Queue == nil || d.Store == nil || d.Blobs == nil || d.ComfyUI == nil {
		return nil, errors.New("worker: Queue, Store, Blobs and ComfyUI are required")
	}
	log := d.Logger
	if log == nil {
		log = zap.NewNop()
	}
	cfg = cfg.withDefaults()
	return &Worker{
		cfg: cfg, q: d.Queue, store: d.Store, blobs: d.Blobs, comfy: d.ComfyUI, fleet: d.Fleet,
		log:     log.Named("worker").With(zap.String("worker_id", cfg.ID)),
		self:    fleet.Worker{ID: cfg.ID, Pool: cfg.Pool, State: fleet.StateInitializing},
		beatNow: make(chan struct{}, 1),
	}, nil
}

// Start opens the pool's consumer and runs the loop in the background; the
// loop waits for ComfyUI to answer before it pulls the first job.
func (w *Worker) Start(ctx context.Context) error {
	cons, err := w.q.OpenLanes(ctx, w.cfg.Pool, queue.LanesConfig{Consumer: queue.ConsumerConfig{AckWait: w.cfg.AckWait}})
	if err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done != nil {
		return errors.New("start worker: already started")
	}
	base := context.WithoutCancel(ctx)
	pullCtx, stopping := context.WithCancel(base)
	jobCtx, abort := context.WithCancel(base)
	w.stopping, w.abort, w.done = stopping, abort, make(chan struct{})
	beatDone := make(chan struct{})
	go w.beat(pullCtx, beatDone)
	go func() {
		w.loop(pullCtx, jobCtx, cons)
		abort() // ends the ComfyUI connection's loop
		<-beatDone
		close(w.done)
	}()
	return nil
}

// Stop stops pulling, waits up to the grace period for the job in hand,
// then cancels it (it goes back on the queue) and waits for the loop.
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
		w.log.Info("grace period over, interrupting the job in hand")
		abort()
		<-done
	}
	abort()
}

func (w *Worker) loop(pullCtx, jobCtx context.Context, cons *queue.Lanes) {
	bo := backoff.New(100*time.Millisecond, 5*time.Second)
	connected := false
	for pullCtx.Err() == nil {
		if err := w.waitReady(pullCtx); err != nil {
			return
		}
		if !connected {
			// The connection lives as long as the worker (jobCtx).
			if err := w.comfy.Start(jobCtx); err != nil {
				w.log.Warn("connect to comfyui", zap.Error(err))
				bo.Wait(pullCtx)
				continue
			}
			connected = true
		}
		msg, err := cons.Next(pullCtx, w.cfg.FetchWait)
		switch {
		case errors.Is(err, queue.ErrNoMessage), pullCtx.Err() != nil:
			continue
		case err != nil:
			w.log.Warn("fetch job", zap.Error(err))
			bo.Wait(pullCtx)
			continue
		}
		bo.Reset()
		w.handle(jobCtx, msg)
		w.setState(fleet.StateIdle, "")
	}
}

// waitReady blocks until ComfyUI answers.
func (w *Worker) waitReady(ctx context.Context) error {
	logged := false
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		stats, err := w.comfy.SystemStats(pctx)
		cancel()
		if err == nil {
			if logged {
				w.log.Info("comfyui is up")
			}
			w.mu.Lock()
			w.self.ComfyUIVersion = stats.ComfyUIVersion
			if len(stats.Devices) > 0 {
				w.self.Device = stats.Devices[0].Name
				w.self.VRAMTotal, w.self.VRAMFree = stats.Devices[0].VRAMTotal, stats.Devices[0].VRAMFree
			}
			w.mu.Unlock()
			if w.state() != fleet.StateRunning {
				w.setState(fleet.StateIdle, "")
			}
			return nil
		}
		if !logged {
			w.log.Info("waiting for comfyui", zap.Error(err))
			logged = true
			if w.state() != fleet.StateInitializing {
				w.setState(fleet.StateUnhealthy, "")
			}
		}
		t := time.NewTimer(w.cfg.ReadyPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (w *Worker) state() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.self.State
}

// setState records the worker's state and beats at once.
func (w *Worker) setState(state, jobID string) {
	w.mu.Lock()
	changed := w.self.State != state || w.self.JobID != jobID
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
	t := time.NewTicker(w.fleet.TTL() / 3)
	defer t.Stop()
	for {
		w.mu.Lock()
		self := w.self
		w.mu.Unlock()
		bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := w.fleet.Beat(bctx, self); err != nil && ctx.Err() == nil {
			w.log.Warn("heartbeat", zap.Error(err))
		}
		cancel()
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = w.fleet.Remove(rctx, w.cfg.ID)
			cancel()
			return
		case <-t.C:
		case <-w.beatNow:
		}
	}
}
