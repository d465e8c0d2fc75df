package jobtake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Config configures the host. The zero value of each field is its default.
type Config struct {
	// Pool is the pool whose jobs RunPod workers take; "" means
	// proto.DefaultPool.
	Pool string
	// WorkerKeys are the keys RunPod workers send in Authorization (their
	// RUNPOD_AI_API_KEY, raw; "Bearer <key>" is accepted too); empty means
	// no authentication (local use).
	WorkerKeys []string
	// TakeHold is how long an empty job-take is held before 204; 0 means
	// 20 s. It must stay under the SDK's 90 s client bound.
	TakeHold time.Duration
	// StopHold is how long an empty job-stop poll is held; 0 means 20 s.
	StopHold time.Duration
	// AckWait is the pool consumers' AckWait; it must equal the
	// gpuworkers' (they share the consumers). 0 means 30 s.
	AckWait time.Duration
	// LeaseTimeout is how long a taken job may go without its worker
	// naming it in a ping (or posting for it) before it goes back on the
	// queue; 0 means 30 s (three of RunPod's default 10 s pings).
	LeaseTimeout time.Duration
	// MaxBatch caps job-take-batch's batch_size; 0 means 16.
	MaxBatch int
	// MaxResult caps a job-done body; 0 means 64 MB.
	MaxResult int64
}

// Validate names the first setting that cannot be used.
func (c Config) Validate() error {
	if c.Pool != "" {
		if err := proto.ValidID(c.Pool); err != nil {
			return fmt.Errorf("pool: %w", err)
		}
	}
	for name, d := range map[string]time.Duration{"take hold": c.TakeHold, "stop hold": c.StopHold, "ack wait": c.AckWait, "lease timeout": c.LeaseTimeout} {
		if d < 0 {
			return fmt.Errorf("%s %s is negative", name, d)
		}
	}
	if c.TakeHold >= 90*time.Second || c.StopHold >= 90*time.Second {
		return fmt.Errorf("take and stop holds must stay under the RunPod SDK's 90 s client timeout")
	}
	if c.MaxBatch < 0 || c.MaxResult < 0 {
		return fmt.Errorf("max batch and max result must not be negative")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Pool == "" {
		c.Pool = proto.DefaultPool
	}
	if c.TakeHold == 0 {
		c.TakeHold = 20 * time.Second
	}
	if c.StopHold == 0 {
		c.StopHold = 20 * time.Second
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.LeaseTimeout == 0 {
		c.LeaseTimeout = 30 * time.Second
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 16
	}
	if c.MaxResult == 0 {
		c.MaxResult = 64 << 20
	}
	return c
}

// Records is what the host needs of the status store (status.Store).
type Records interface {
	Claim(ctx context.Context, id, workerID string) (int, *proto.Record, error)
	Requeue(ctx context.Context, id string, attempt int, reason string) (*proto.Record, error)
	Finish(ctx context.Context, id string, attempt int, to proto.Status, output json.RawMessage, errMsg string) (*proto.Record, error)
	Get(ctx context.Context, id string) (*proto.Record, error)
}

var _ Records = (*status.Store)(nil)

// Heartbeats is where RunPod workers are announced (fleet.Registry), so
// /health counts them.
type Heartbeats interface {
	Beat(ctx context.Context, w fleet.Worker) error
}

// Deps are the host's collaborators.
type Deps struct {
	Queue   *queue.Client
	Records Records
	Blobs   blob.Store
	// Redis and KeyPrefix hold the leases, beside the status records.
	Redis     redis.UniversalClient
	KeyPrefix string
	// Fleet is optional.
	Fleet  Heartbeats
	Logger *zap.Logger
}

// Host serves the worker-side routes. Start it (it opens the pool's
// consumers and runs the lease sweeper), serve it, then Stop it.
type Host struct {
	cfg     Config
	q       *queue.Client
	nc      *nats.Conn
	records Records
	blobs   blob.Store
	events  *runpod.EventLog
	leases  *leaseStore
	fleet   Heartbeats
	log     *zap.Logger
	mux     *http.ServeMux

	mu          sync.Mutex
	lanes       []jetstream.Consumer // interactive first
	cancelled   chan struct{}        // closed and replaced at every fleet cancel
	stopSweep   context.CancelFunc
	swept       chan struct{}
	stopCancels func()
}

// New builds a host.
func New(cfg Config, d Deps) (*Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("job-take host config: %w", err)
	}
	if d.Queue == nil || d.Records == nil || d.Blobs == nil || d.Redis == nil {
		return nil, errors.New("job-take host: Queue, Records, Blobs and Redis are required")
	}
	log := d.Logger
	if log == nil {
		log = zap.NewNop()
	}
	h := &Host{
		cfg: cfg.withDefaults(), q: d.Queue, nc: d.Queue.Conn(), records: d.Records, blobs: d.Blobs,
		events: runpod.NewEventLog(d.Queue.JetStream()), leases: &leaseStore{rdb: d.Redis, prefix: d.KeyPrefix},
		fleet: d.Fleet, log: log.Named("jobtake"), cancelled: make(chan struct{}),
	}
	h.mux = http.NewServeMux()
	h.Register(h.mux)
	return h, nil
}

// Routes are the patterns the host serves, all under /v2/{endpoint}/ as
// the templates it hands out say.
var routes = []string{
	"GET /v2/{endpoint}/job-take/{worker}",
	"GET /v2/{endpoint}/job-take-batch/{worker}",
	"GET /v2/{endpoint}/job-stop/{worker}",
	"POST /v2/{endpoint}/job-done/{worker}/{job}",
	"POST /v2/{endpoint}/job-stream/{worker}/{job}",
	"GET /v2/{endpoint}/ping/{worker}",
}

// Register adds the host's routes to mux, so it can share a listener
// with the endpoint API.
func (h *Host) Register(mux *http.ServeMux) {
	handlers := []http.HandlerFunc{h.handleTake, h.handleTake, h.handleStop, h.handleDone, h.handleStream, h.handlePing}
	for i, pattern := range routes {
		mux.Handle(pattern, h.authorized(handlers[i]))
	}
}

// ServeHTTP serves the host's routes alone.
func (h *Host) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Host) authorized(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !runpod.KeyMatches(r.Header.Get("Authorization"), h.cfg.WorkerKeys) {
			runpod.WriteError(w, http.StatusUnauthorized, "Unauthorized: give this worker's key in Authorization")
			return
		}
		next(w, r)
	})
}

// Start opens the pool's lane consumers (the gpuworkers' own, so RunPod
// workers and gpuworkers share the queue), follows cancels for job-stop,
// and runs the lease sweeper.
func (h *Host) Start(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopSweep != nil {
		return errors.New("start job-take host: already started")
	}
	if _, err := h.q.OpenLanes(ctx, h.cfg.Pool, queue.LanesConfig{Consumer: queue.ConsumerConfig{AckWait: h.cfg.AckWait}}); err != nil {
		return fmt.Errorf("start job-take host: %w", err)
	}
	// The host reads the consumers itself because it needs each
	// delivery's ack subject, which queue.Message keeps to itself: with
	// it, whichever replica gets a worker's result can ack the message.
	// The names are queue.LaneConsumer's.
	h.lanes = nil
	for _, lane := range []proto.Lane{proto.LaneInteractive, proto.LaneBatch} {
		c, err := h.q.JetStream().Consumer(ctx, proto.JobsStream, "pool-"+h.cfg.Pool+"-"+string(lane))
		if err != nil {
			return fmt.Errorf("start job-take host: open %s lane: %w", lane, err)
		}
		h.lanes = append(h.lanes, c)
	}
	stop, err := h.q.SubscribeCancels(func(string) { h.broadcastCancel() })
	if err != nil {
		return fmt.Errorf("start job-take host: %w", err)
	}
	h.stopCancels = stop
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h.stopSweep, h.swept = cancel, make(chan struct{})
	go h.sweep(sctx)
	return nil
}

// Stop ends the sweeper and the cancel subscription. Leases stay in Redis
// for the other replicas (or this one's successor). Idempotent.
func (h *Host) Stop() {
	h.mu.Lock()
	stop, swept, stopCancels := h.stopSweep, h.swept, h.stopCancels
	h.stopSweep, h.stopCancels = nil, nil
	h.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	<-swept
	stopCancels()
}

func (h *Host) broadcastCancel() {
	h.mu.Lock()
	close(h.cancelled)
	h.cancelled = make(chan struct{})
	h.mu.Unlock()
}

func (h *Host) cancelSignal() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cancelled
}

// The JetStream ack protocol, sent on a delivery's ack subject.
func (h *Host) ack(ctx context.Context, reply string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := h.nc.RequestWithContext(ctx, reply, []byte("+ACK")); err != nil {
		h.log.Warn("ack job message", zap.Error(err))
	}
}

func (h *Host) nak(reply string) {
	if err := h.nc.Publish(reply, []byte("-NAK")); err != nil {
		h.log.Warn("nak job message", zap.Error(err))
	}
}

func (h *Host) inProgress(reply string) {
	if err := h.nc.Publish(reply, []byte("+WPI")); err != nil {
		h.log.Debug("heartbeat job message", zap.Error(err))
	}
}

// params reads a request's parameters from its query and, for a template
// without "?", from what the SDK appended to the last path segment after
// its first "&" (§A.3).
func params(r *http.Request, segment string) (string, url.Values) {
	q := r.URL.Query()
	head, tail, ok := strings.Cut(segment, "&")
	if ok {
		if extra, err := url.ParseQuery(tail); err == nil {
			for k, vs := range extra {
				q[k] = append(q[k], vs...)
			}
		}
	}
	return head, q
}

// workerID is the fleet's id of a RunPod worker: its own id when that is
// a valid fleet id, otherwise a stable id derived from it. (A worker whose
// template put "$RUNPOD_POD_ID" in RUNPOD_WEBHOOK_GET_JOB takes jobs under
// that literal name.)
func workerID(raw string) string {
	if proto.ValidID(raw) == nil {
		return raw
	}
	var sum uint64 = 1469598103934665603
	for i := 0; i < len(raw); i++ {
		sum ^= uint64(raw[i])
		sum *= 1099511628211
	}
	return fmt.Sprintf("rp-worker-%016x", sum)
}

// event publishes a status event, logging a failure.
func (h *Host) event(ctx context.Context, ev *proto.Event) {
	if err := h.q.PublishEvent(ctx, ev); err != nil {
		h.log.Warn("publish event", zap.String("job_id", ev.JobID), zap.Error(err))
	}
}

// sweep gives back the jobs whose workers stopped reporting them.
func (h *Host) sweep(ctx context.Context) {
	defer close(h.swept)
	t := time.NewTicker(max(h.cfg.LeaseTimeout/4, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := h.sweepOnce(ctx); err != nil && ctx.Err() == nil {
			h.log.Warn("sweep leases", zap.Error(err))
		}
	}
}

// sweepOnce requeues every job whose lease deadline passed: the worker
// crashed, lost the job, or stopped pinging. Replicas may sweep at the
// same time; Requeue is fenced, so only one gives each job back.
func (h *Host) sweepOnce(ctx context.Context) error {
	ids, err := h.leases.expired(ctx, time.Now(), 100)
	if err != nil {
		return err
	}
	for _, id := range ids {
		l, err := h.leases.get(ctx, id)
		if errors.Is(err, errNoLease) {
			_ = h.leases.forget(ctx, id)
			continue
		}
		if err != nil {
			return err
		}
		reason := fmt.Sprintf("RunPod worker %s stopped reporting the job", l.WorkerID)
		_, err = h.records.Requeue(ctx, id, l.Attempt, reason)
		switch {
		case err == nil:
			h.nak(l.Reply)
			h.event(ctx, &proto.Event{JobID: id, Type: proto.EventStatus, Status: proto.StatusInQueue, Attempt: l.Attempt, WorkerID: l.WorkerID, Error: reason})
			h.log.Info("lease lost, job back on the queue", zap.String("job_id", id), zap.String("worker_id", l.WorkerID), zap.Int("attempt", l.Attempt))
		case errors.Is(err, status.ErrTerminal):
			h.ack(ctx, l.Reply) // finished meanwhile (cancelled): the message is done
		case errors.Is(err, status.ErrStale), errors.Is(err, status.ErrNotFound):
			// Another replica gave it back, or a newer attempt holds it.
		default:
			return err
		}
		if err := h.leases.drop(ctx, l); err != nil {
			return err
		}
	}
	return nil
}
