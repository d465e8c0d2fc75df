package jobtake

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Config configures the host. The zero value of each field is its default.
type Config struct {
	// Pool is the pool whose jobs RunPod workers take; "" means
	// proto.DefaultPool. With Endpoints it is not used.
	Pool string
	// Endpoints maps the endpoint ids of the routes (/v2/{endpoint}/…) to
	// pools (ENDPOINTS): a RunPod worker of endpoint id takes the jobs of
	// id's pool alone and is announced in that pool, and an id the map
	// lacks is 404. Empty: every id is Pool.
	Endpoints runpod.Endpoints
	// Keys are the worker keys RunPod workers send in Authorization (their
	// RUNPOD_AI_API_KEY, raw; "Bearer <key>" is accepted too). Required: a
	// taken job carries its secrets (comfy_org_api_key, s3Config), so the
	// host never runs open, and only keys of role auth.Worker pass.
	Keys *auth.Keyring
	// AllowedOrigins are the browser origins that may call the host
	// cross-origin (none should).
	AllowedOrigins []string
	// TakeHold is how long an empty job-take is held before 204; 0 means
	// 20 s. It must stay under the SDK's 90 s client bound.
	TakeHold time.Duration
	// StopHold is how long an empty job-stop poll is held; 0 means 20 s.
	StopHold time.Duration
	// AckWait is the pool consumers' AckWait; it must equal the
	// gpuworkers' (they share the consumers). 0 means 30 s.
	AckWait time.Duration
	// LeaseTimeout is how long a taken job may go without its worker
	// naming it in a ping (or posting for it) before the dispatcher's
	// sweeper gives it back to the queue; 0 means 30 s (three of RunPod's
	// default 10 s pings).
	LeaseTimeout time.Duration
	// ExecutionTimeout bounds a job whose policy.executionTimeout is unset,
	// as RunPod's endpoint setting does; 0 means 10 minutes (RunPod's
	// default). Past its bound a job ends TIMED_OUT and its worker is told
	// to stop it on job-stop; a result posted later is dropped.
	ExecutionTimeout time.Duration
	// LivenessTimeout is how long a RunPod worker's pings alone keep its
	// jobs once it gave its job-stop poll up (its main process died: the
	// connection closed) without polling again; see handleStop. The ping
	// comes from a child process of the SDK that outlives a killed main
	// process; a worker that never polled job-stop (an older SDK) is
	// exempt. 0 means LeaseTimeout.
	LivenessTimeout time.Duration
	// RefusalDelay is how long the answer to a request with a wrong or
	// missing worker key is held before its 401: the SDK's take loop asks
	// again at once after an error, and this makes it back off. 0 means
	// 5 s.
	RefusalDelay time.Duration
	// MaxBatch caps job-take-batch's batch_size; 0 means 16.
	MaxBatch int
	// MaxResult caps a job-done body; 0 means 64 MB.
	MaxResult int64
}

// Validate names the first setting that cannot be used.
func (c Config) Validate() error {
	if c.Keys.Count(auth.Worker) == 0 {
		return errors.New("worker keys are required (WORKER_KEYS): a taken job carries its secrets, and API keys never work on the job-take routes")
	}
	if _, err := auth.NewGuard(c.Keys, c.AllowedOrigins); err != nil {
		return err
	}
	if c.Pool != "" {
		if err := proto.ValidID(c.Pool); err != nil {
			return fmt.Errorf("pool: %w", err)
		}
	}
	if err := c.Endpoints.Validate(); err != nil {
		return fmt.Errorf("endpoints: %w", err)
	}
	for name, d := range map[string]time.Duration{"take hold": c.TakeHold, "stop hold": c.StopHold, "ack wait": c.AckWait, "lease timeout": c.LeaseTimeout,
		"execution timeout": c.ExecutionTimeout, "liveness timeout": c.LivenessTimeout, "refusal delay": c.RefusalDelay} {
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
	if c.ExecutionTimeout == 0 {
		c.ExecutionTimeout = 10 * time.Minute
	}
	if c.LivenessTimeout == 0 {
		c.LivenessTimeout = c.LeaseTimeout
	}
	if c.RefusalDelay == 0 {
		c.RefusalDelay = 5 * time.Second
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 16
	}
	if c.MaxResult == 0 {
		c.MaxResult = 64 << 20
	}
	return c
}

// Heartbeats is where RunPod workers are announced (rdb.DB), so /health
// counts them, and where the marks of life of their main processes are
// kept (see Config.LivenessTimeout).
type Heartbeats interface {
	Beat(ctx context.Context, w proto.Heartbeat) error
	MarkAlive(ctx context.Context, id string, at time.Time, create bool) error
	LastAlive(ctx context.Context, id string) (time.Time, bool, error)
}

// Deps are the host's collaborators.
type Deps struct {
	Queue *queue.Client
	// Core makes every change of a job's state; the leases are its.
	Core  *lifecycle.Core
	Blobs blob.Store
	// Fleet is optional.
	Fleet  Heartbeats
	Logger *zap.Logger
}

// Host serves the worker-side routes. Start it (it opens the pool's
// consumers and follows the fleet's cancels), serve it, then Stop it.
// The leases of the jobs it hands out are the lifecycle core's, swept by
// the dispatchers like every worker's.
type Host struct {
	cfg   Config
	q     *queue.Client
	core  *lifecycle.Core
	blobs blob.Store
	fleet Heartbeats
	log   *zap.Logger
	mux   *http.ServeMux
	guard *auth.Guard

	mu          sync.Mutex
	lanes       map[string]*queue.Lanes // by pool
	cancelled   chan struct{}           // closed and replaced at every fleet cancel
	cancels     []heardCancel           // the last fleet cancels, newest last
	cancelSeq   uint64                  // how many fleet cancels this host heard
	stopCancels func()
	draining    chan struct{} // closed by Drain

	literalOnce sync.Once
	drainOnce   sync.Once
}

// New builds a host.
func New(cfg Config, d Deps) (*Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("job-take host config: %w", err)
	}
	if d.Queue == nil || d.Core == nil || d.Blobs == nil {
		return nil, errors.New("job-take host: Queue, Core and Blobs are required")
	}
	log := d.Logger
	if log == nil {
		log = zap.NewNop()
	}
	h := &Host{
		cfg: cfg.withDefaults(), q: d.Queue, core: d.Core, blobs: d.Blobs,
		fleet: d.Fleet, log: log.Named("jobtake"), cancelled: make(chan struct{}), draining: make(chan struct{}),
	}
	h.guard, _ = auth.NewGuard(cfg.Keys, cfg.AllowedOrigins) // checked by Validate
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
		mux.Handle(pattern, h.slowRefusal(h.guard.Require(auth.Worker, h.endpoint(handlers[i]))))
	}
}

type poolKey struct{}

// endpoint resolves a route's {endpoint} to its pool before the handler
// runs (404 for an id that Endpoints lacks) and puts the pool in the
// request's context (poolOf).
func (h *Host) endpoint(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("endpoint")
		pool, _, ok := h.cfg.Endpoints.Resolve(id, h.cfg.Pool)
		if !ok {
			runpod.UnknownEndpoint(w, id)
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), poolKey{}, pool)))
	}
}

// poolOf is the pool of the request's endpoint.
func (h *Host) poolOf(r *http.Request) string {
	if p, ok := r.Context().Value(poolKey{}).(string); ok {
		return p
	}
	return h.cfg.Pool
}

// slowRefusal holds a 401 or 403 for RefusalDelay (or until the client
// leaves): the SDK's take loop asks again at once after any error but a
// 429, and an immediate refusal of a wrong key made thousands of requests
// a minute. A 401 still says what is wrong, in the worker's log.
func (h *Host) slowRefusal(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&refusalWriter{ResponseWriter: w, r: r, delay: h.cfg.RefusalDelay}, r)
	})
}

type refusalWriter struct {
	http.ResponseWriter
	r     *http.Request
	delay time.Duration
}

func (w *refusalWriter) WriteHeader(code int) {
	if code == http.StatusUnauthorized || code == http.StatusForbidden {
		t := time.NewTimer(w.delay)
		select {
		case <-t.C:
		case <-w.r.Context().Done():
		}
		t.Stop()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *refusalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP serves the host's routes alone.
func (h *Host) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Start opens the lane consumers of the pool, or of every pool of
// Endpoints (the gpuworkers' own, so RunPod workers and gpuworkers share
// the queue), and follows cancels for job-stop.
func (h *Host) Start(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopCancels != nil {
		return errors.New("start job-take host: already started")
	}
	lanes := map[string]*queue.Lanes{}
	for _, pool := range h.cfg.Endpoints.Pools(h.cfg.Pool) {
		l, err := h.q.OpenLanes(ctx, pool, queue.LanesConfig{Consumer: queue.ConsumerConfig{AckWait: h.cfg.AckWait}})
		if err != nil {
			return fmt.Errorf("start job-take host: pool %s: %w", pool, err)
		}
		lanes[pool] = l
	}
	stop, err := h.q.SubscribeCancels(h.broadcastCancel)
	if err != nil {
		return fmt.Errorf("start job-take host: %w", err)
	}
	h.lanes, h.stopCancels = lanes, stop
	return nil
}

// Stop ends the cancel subscription. Leases stay in Redis for the other
// replicas (or this one's successor). Idempotent.
func (h *Host) Stop() {
	h.mu.Lock()
	stop := h.stopCancels
	h.stopCancels = nil
	h.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// keptCancels is how many of the last fleet cancels a host remembers for
// the job-stop polls of shared names.
const keptCancels = 256

// heardCancel is a fleet cancel as a host heard it.
type heardCancel struct {
	jobID string
	at    time.Time
}

// Drain answers the held job-stop polls at once (204), and every later
// one without holding it: call it when the server starts shutting down
// (http.Server.RegisterOnShutdown), so that the polls of workers that
// hold jobs, held for as long as the jobs run, do not hold the shutdown.
// Their workers keep their jobs and poll another replica. Idempotent.
func (h *Host) Drain() { h.drainOnce.Do(func() { close(h.draining) }) }

func (h *Host) drainSignal() <-chan struct{} { return h.draining }

func (h *Host) broadcastCancel(jobID string) {
	h.mu.Lock()
	h.cancels = append(h.cancels, heardCancel{jobID, time.Now()})
	if len(h.cancels) > keptCancels {
		h.cancels = h.cancels[len(h.cancels)-keptCancels:]
	}
	h.cancelSeq++
	close(h.cancelled)
	h.cancelled = make(chan struct{})
	h.mu.Unlock()
}

// cancelSignal is closed at the next fleet cancel; seq counts the
// cancels heard before it.
func (h *Host) cancelSignal() (signal <-chan struct{}, seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cancelled, h.cancelSeq
}

// cancelsSince lists the fleet cancels heard after the first seq ones
// (as many as are kept), and the count now.
func (h *Host) cancelsSince(seq uint64) ([]heardCancel, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := min(h.cancelSeq-seq, uint64(len(h.cancels)))
	return append([]heardCancel(nil), h.cancels[uint64(len(h.cancels))-n:]...), h.cancelSeq
}

// cancelsFrom is the count of fleet cancels heard before since.
func (h *Host) cancelsFrom(since time.Time) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := uint64(0)
	for i := len(h.cancels) - 1; i >= 0 && !h.cancels[i].at.Before(since); i-- {
		n++
	}
	return h.cancelSeq - n
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

// literal reports whether a worker name in a job-take or job-stop URL is a
// template's unreplaced variable: the SDK replaces only $ID in
// RUNPOD_WEBHOOK_GET_JOB, so a template with "$RUNPOD_POD_ID" there (as
// RunPod's local test server writes it) names no worker, and every worker
// of that template takes and polls under the same name. Such a name is
// never announced in the fleet registry (its pings, which name the real
// worker, are), and a job-stop poll under it hears every stop of the jobs
// taken under it: the SDK ignores the ids it does not run.
func literal(raw string) bool { return strings.Contains(raw, "$") }

// warnLiteral says once per process that a worker's template is wrong.
func (h *Host) warnLiteral(raw string) {
	h.literalOnce.Do(func() {
		h.log.Warn("a RunPod worker's job-take URL names no worker: the SDK replaces only $ID in RUNPOD_WEBHOOK_GET_JOB; put $ID there instead of "+raw,
			zap.String("worker", raw))
	})
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
