package runpod

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Config configures the endpoint API. The zero value of each field is its
// default.
type Config struct {
	// Keys are the API keys (tenants) and admin keys the API accepts, as
	// "Authorization: Bearer <key>" or the bare key; nil or empty means no
	// authentication (local use). A tenant sees its own jobs alone; an
	// admin sees every job.
	Keys *auth.Keyring
	// AllowedOrigins are the browser origins that may call the API
	// cross-origin; every other cross-site request gets 403.
	AllowedOrigins []string
	// Pool receives the jobs submitted through the API; "" means
	// proto.DefaultPool. With Endpoints it receives only the jobs of the
	// bare routes (/run, without /v2/{endpoint}).
	Pool string
	// Endpoints maps the endpoint ids of /v2/{endpoint}/… to pools
	// (ENDPOINTS). With a map, /v2/{id}/run queues into id's pool, and
	// /status, /status-sync, /stream, /cancel, /retry and /files of
	// /v2/{id} know only the jobs of that pool (another pool's job is
	// 404, as a job id belongs to its endpoint at RunPod); /health counts
	// and /purge-queue purges that pool alone; an id the map lacks is 404.
	// The bare routes keep the view of the whole fleet. Empty: every id
	// is Pool, and the endpoint id scopes nothing.
	Endpoints Endpoints
	// MaxRunBody and MaxRunSyncBody cap request bodies; 0 means RunPod's
	// 10 MB and 20 MB.
	MaxRunBody, MaxRunSyncBody int64
	// RunRetention and SyncRetention are how long results are kept after
	// /run and /runsync; 0 means RunPod's 30 min and 1 min.
	RunRetention, SyncRetention time.Duration
	// DefaultWait is the wait of /runsync and /status-sync without
	// ?wait=; 0 means RunPod's 90 s.
	DefaultWait time.Duration
	// StreamWait is how long /stream holds a request without ?wait= while
	// nothing new happens; 0 means 3 s. (RunPod's JS SDK polls /stream in
	// a tight loop, so a short hold keeps it from hammering the API.)
	StreamWait time.Duration
	// InlineBlobMax caps input images kept inside the NATS message; larger
	// ones go to the blob store. 0 means DefaultInlineBlobMax.
	InlineBlobMax int
	// MaxQueued is the backpressure limit: while at least this many jobs
	// wait in the queue, /run and /runsync answer 429. 0 means no limit.
	MaxQueued int
	// MaxQueuedPerLane is the backpressure limit of one lane of one pool:
	// while at least this many jobs wait in the lane a request would go
	// to, /run and /runsync answer 429. 0 means no limit.
	MaxQueuedPerLane int
}

// Validate names the first setting that cannot be used.
func (c Config) Validate() error {
	if c.Pool != "" {
		if err := proto.ValidID(c.Pool); err != nil {
			return fmt.Errorf("pool: %w", err)
		}
	}
	if err := c.Endpoints.Validate(); err != nil {
		return fmt.Errorf("endpoints: %w", err)
	}
	for name, d := range map[string]time.Duration{"run retention": c.RunRetention, "sync retention": c.SyncRetention,
		"default wait": c.DefaultWait, "stream wait": c.StreamWait} {
		if d < 0 {
			return fmt.Errorf("%s %s is negative", name, d)
		}
	}
	if _, err := auth.NewGuard(nil, c.AllowedOrigins); err != nil {
		return err
	}
	for name, d := range map[string]time.Duration{"run retention": c.RunRetention, "sync retention": c.SyncRetention} {
		if d > proto.Millis(proto.MaxRetention) {
			return fmt.Errorf("%s %s is more than the job contract's limit of %s (retention_ms)", name, d, proto.Millis(proto.MaxRetention))
		}
	}
	if c.MaxRunBody < 0 || c.MaxRunSyncBody < 0 || c.InlineBlobMax < 0 || c.MaxQueued < 0 || c.MaxQueuedPerLane < 0 {
		return fmt.Errorf("body limits, inline blob size and max queued must not be negative")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Pool == "" {
		c.Pool = proto.DefaultPool
	}
	if c.MaxRunBody == 0 {
		c.MaxRunBody = 10 << 20
	}
	if c.MaxRunSyncBody == 0 {
		c.MaxRunSyncBody = 20 << 20
	}
	if c.RunRetention == 0 {
		c.RunRetention = 30 * time.Minute
	}
	if c.SyncRetention == 0 {
		c.SyncRetention = time.Minute
	}
	if c.DefaultWait == 0 {
		c.DefaultWait = 90 * time.Second
	}
	if c.StreamWait == 0 {
		c.StreamWait = 3 * time.Second
	}
	if c.InlineBlobMax == 0 {
		c.InlineBlobMax = DefaultInlineBlobMax
	}
	return c
}

// Deps are the API's collaborators.
type Deps struct {
	Queue *queue.Client
	// Core makes every change of a job's state.
	Core *lifecycle.Core
	// DB holds the /stream cursors, the records' retention and the
	// fleet's heartbeats (for /health).
	DB *rdb.DB
	// Blobs holds input images too large for a message, and outputs.
	Blobs  blob.Store
	Logger *zap.Logger
}

// API serves RunPod's endpoint API. It keeps no state of its own between
// requests.
type API struct {
	cfg   Config
	q     *queue.Client
	core  *lifecycle.Core
	db    *rdb.DB
	blobs blob.Store
	log   *zap.Logger
	mux   *http.ServeMux
	h     http.Handler // mux behind the guard

	depthMu   sync.Mutex
	depthAt   time.Time
	depthSeen uint64
	lanes     laneDepths // per-lane backpressure (backpressure.go)
}

// NewAPI builds the endpoint API. A configuration that Validate refuses is
// replaced field by field by the defaults; cmd/ validates first.
func NewAPI(cfg Config, d Deps) *API {
	log := d.Logger
	if log == nil {
		log = zap.NewNop()
	}
	a := &API{cfg: cfg.withDefaults(), q: d.Queue, core: d.Core, db: d.DB, blobs: d.Blobs, log: log.Named("runpod")}
	a.mux = http.NewServeMux()
	for _, prefix := range []string{"/v2/{endpoint}", ""} {
		handle := func(pattern string, h http.HandlerFunc) { a.mux.HandleFunc(pattern, a.endpoint(h)) }
		handle("POST "+prefix+"/run", a.handleRun)
		handle("POST "+prefix+"/runsync", a.handleRunSync)
		for _, method := range []string{"GET", "POST"} {
			handle(method+" "+prefix+"/status/{id}", a.handleStatus)
			handle(method+" "+prefix+"/status-sync/{id}", a.handleStatusSync)
			handle(method+" "+prefix+"/stream/{id}", a.handleStream)
		}
		handle("POST "+prefix+"/cancel/{id}", a.handleCancel)
		handle("POST "+prefix+"/retry/{id}", a.handleRetry)
		handle("POST "+prefix+"/purge-queue", a.handlePurge)
		handle("GET "+prefix+"/health", a.handleHealth)
		handle("GET "+prefix+"/files/{id}/{name...}", a.handleFile)
	}
	g, err := auth.NewGuard(a.cfg.Keys, a.cfg.AllowedOrigins)
	if err != nil {
		g, _ = auth.NewGuard(a.cfg.Keys, nil)
	}
	a.h = g.Require(auth.Tenant|auth.Admin, http.HandlerFunc(a.route))
	return a
}

// ServeHTTP collapses doubled slashes (clients that append "/" to a base
// URL ending in "/"), checks the request's origin and key (package auth),
// and routes.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.Path, "//") {
		r.URL.Path = collapseSlashes(r.URL.Path)
		r.URL.RawPath = ""
	}
	a.h.ServeHTTP(w, r)
}

func (a *API) route(w http.ResponseWriter, r *http.Request) {
	h, pattern := a.mux.Handler(r)
	if pattern == "" {
		// Distinguish "no such route" from "wrong method" in RunPod's JSON.
		rec := &statusRecorder{}
		h.ServeHTTP(rec, r)
		if rec.code == http.StatusMethodNotAllowed {
			WriteError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path))
			return
		}
		WriteError(w, http.StatusNotFound, fmt.Sprintf("no such route: %s %s", r.Method, r.URL.Path))
		return
	}
	a.mux.ServeHTTP(w, r)
}

// principal is who sent r; the guard put it there.
func principal(r *http.Request) auth.Principal {
	p, ok := auth.FromContext(r.Context())
	if !ok {
		// Not behind the guard: see nothing but the default tenant.
		return auth.Principal{Role: auth.Tenant, Tenant: proto.DefaultTenant}
	}
	return p
}

func (a *API) unavailable(w http.ResponseWriter, what string, err error) {
	a.log.Warn(what, zap.Error(err))
	WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf("%s: the fleet's backend is unavailable, try again", what))
}

// parseWait reads ?wait= in milliseconds, clamped to lo..300 s.
func parseWait(r *http.Request, def, lo time.Duration) (time.Duration, error) {
	s := r.URL.Query().Get("wait")
	if s == "" {
		return def, nil
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("query parameter wait=%q is not a whole number of milliseconds", s)
	}
	return min(max(time.Duration(min(max(ms, 0), 300000))*time.Millisecond, lo), 300*time.Second), nil
}

// scope is the pool that a request's route serves: for /v2/{endpoint}/…
// with Endpoints set, the endpoint's pool (scoped); otherwise Pool,
// scoping nothing.
type scope struct {
	pool   string
	scoped bool
}

// holds reports whether a job of pool belongs to the scope.
func (s scope) holds(pool string) bool { return !s.scoped || pool == s.pool }

type scopeKey struct{}

// endpoint resolves the {endpoint} of a route before its handler runs,
// so that every route answers an endpoint id the map lacks with 404
// first, and puts the request's scope in its context.
func (a *API) endpoint(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("endpoint")
		pool, scoped, ok := a.cfg.Endpoints.Resolve(id, a.cfg.Pool)
		if id == "" {
			pool, scoped, ok = a.cfg.Pool, false, true // a bare route
		}
		switch {
		case !ok:
			UnknownEndpoint(w, id)
		case !scoped:
			next(w, r) // scopeOf's default: Pool, scoping nothing
		default:
			next(w, r.WithContext(context.WithValue(r.Context(), scopeKey{}, scope{pool: pool, scoped: true})))
		}
	}
}

// scopeOf is the request's scope (see endpoint).
func (a *API) scopeOf(r *http.Request) scope {
	if s, ok := r.Context().Value(scopeKey{}).(scope); ok {
		return s
	}
	return scope{pool: a.cfg.Pool}
}

// jobID reads and checks the {id} of the path; on failure it has answered.
func jobID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if err := proto.ValidID(id); err != nil {
		WriteError(w, http.StatusBadRequest, "job id: "+err.Error())
		return "", false
	}
	return id, true
}

func collapseSlashes(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 && p[i-1] == '/' {
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// WriteJSON answers with v as JSON; RunPod's SDKs need exactly
// "application/json".
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers {"error": msg}.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, map[string]string{"error": msg})
}

type statusRecorder struct {
	code int
	h    http.Header
}

func (s *statusRecorder) Header() http.Header {
	if s.h == nil {
		s.h = http.Header{}
	}
	return s.h
}
func (s *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusRecorder) WriteHeader(code int)        { s.code = code }
