package runpod

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Config configures the endpoint API. The zero value of each field is its
// default.
type Config struct {
	// APIKeys are accepted as "Authorization: Bearer <key>" or a bare key;
	// empty means no authentication (local use).
	APIKeys []string
	// MaxRunBody and MaxRunSyncBody cap request bodies; 0 means RunPod's
	// 10 MB and 20 MB.
	MaxRunBody, MaxRunSyncBody int64
	// RunRetention and SyncRetention are how long results are kept after
	// /run and /runsync; 0 means RunPod's 30 min and 1 min.
	RunRetention, SyncRetention time.Duration
	// DefaultWait is /runsync's wait without ?wait=; 0 means 90 s.
	DefaultWait time.Duration
	// InlineBlobMax caps input images kept inside the NATS message; larger
	// ones go to the blob store. 0 means 256 KiB.
	InlineBlobMax int
}

func (c Config) withDefaults() Config {
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
	if c.InlineBlobMax == 0 {
		c.InlineBlobMax = 256 << 10
	}
	return c
}

// Queue is what the API needs of NATS.
type Queue interface {
	Submit(ctx context.Context, source string, job *proto.Job) error
	SubscribeEvents(jobID string, fn func(*proto.Event)) (stop func(), err error)
	Depth(ctx context.Context) (queued, running uint64, err error)
}

// Records is what the API needs of the status store.
type Records interface {
	Create(ctx context.Context, p status.CreateParams) (*proto.Record, bool, error)
	Get(ctx context.Context, id string) (*proto.Record, error)
	Counts(ctx context.Context) (map[proto.Status]int64, error)
}

// Fleet lists the workers for /health.
type Fleet interface {
	List(ctx context.Context) ([]fleet.Worker, error)
}

// API serves RunPod's endpoint API.
type API struct {
	cfg     Config
	q       Queue
	records Records
	blobs   blob.Store
	fleet   Fleet
	log     *zap.Logger
	mux     *http.ServeMux
}

// NewAPI builds the endpoint API.
func NewAPI(cfg Config, q Queue, records Records, blobs blob.Store, fl Fleet, log *zap.Logger) *API {
	if log == nil {
		log = zap.NewNop()
	}
	a := &API{cfg: cfg.withDefaults(), q: q, records: records, blobs: blobs, fleet: fl, log: log.Named("runpod")}
	a.mux = http.NewServeMux()
	for _, prefix := range []string{"/v2/{endpoint}", ""} {
		a.mux.HandleFunc("POST "+prefix+"/run", a.handleRun)
		a.mux.HandleFunc("POST "+prefix+"/runsync", a.handleRunSync)
		a.mux.HandleFunc("GET "+prefix+"/status/{id}", a.handleStatus)
		a.mux.HandleFunc("POST "+prefix+"/status/{id}", a.handleStatus)
		a.mux.HandleFunc("GET "+prefix+"/health", a.handleHealth)
	}
	return a
}

// ServeHTTP authenticates, collapses doubled slashes (clients that append
// "/" to a base URL ending in "/"), and routes.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.Path, "//") {
		r.URL.Path = collapseSlashes(r.URL.Path)
	}
	if !a.authorized(r) {
		writeError(w, http.StatusUnauthorized, "Unauthorized: give a valid API key as 'Authorization: Bearer <key>'")
		return
	}
	h, pattern := a.mux.Handler(r)
	if pattern == "" {
		// Distinguish "no such route" from "wrong method" in RunPod's JSON.
		rec := &statusRecorder{}
		h.ServeHTTP(rec, r)
		if rec.code == http.StatusMethodNotAllowed {
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such route: %s %s", r.Method, r.URL.Path))
		return
	}
	a.mux.ServeHTTP(w, r)
}

func (a *API) authorized(r *http.Request) bool {
	if len(a.cfg.APIKeys) == 0 {
		return true
	}
	got := strings.TrimSpace(r.Header.Get("Authorization"))
	if len(got) > 7 && strings.EqualFold(got[:7], "bearer ") {
		got = strings.TrimSpace(got[7:])
	}
	ok := 0
	for _, k := range a.cfg.APIKeys {
		ok |= subtle.ConstantTimeCompare([]byte(got), []byte(k))
	}
	return ok == 1 && got != ""
}

// runRequest is RunPod's /run and /runsync body.
type runRequest struct {
	Input    json.RawMessage `json:"input"`
	Webhook  string          `json:"webhook"`
	Policy   *proto.Policy   `json:"policy"`
	S3Config *proto.S3Config `json:"s3Config"`
}

func (a *API) handleRun(w http.ResponseWriter, r *http.Request) {
	job, ok := a.accept(w, r, a.cfg.MaxRunBody, a.cfg.RunRetention, "")
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, jobView{ID: job.ID, Status: proto.StatusInQueue})
}

func (a *API) handleRunSync(w http.ResponseWriter, r *http.Request) {
	wait, err := parseWait(r, a.cfg.DefaultWait)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Subscribe before submitting so the terminal event cannot be missed.
	id := "sync-" + uuid.NewString()
	waiter := newTerminalWaiter()
	stop, err := a.q.SubscribeEvents(id, waiter.observe)
	if err != nil {
		a.unavailable(w, "subscribe to job events", err)
		return
	}
	defer stop()
	job, ok := a.accept(w, r, a.cfg.MaxRunSyncBody, a.cfg.SyncRetention, id)
	if !ok {
		return
	}
	a.writeWhenDone(w, r, job.ID, waiter, wait)
}

// accept decodes, validates and submits a job; on failure it has already
// answered the request.
func (a *API) accept(w http.ResponseWriter, r *http.Request, maxBody int64, retention time.Duration, id string) (*proto.Job, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than the %d-byte limit of %s", maxBody, r.URL.Path))
		return nil, false
	case err != nil:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("read request body: %v", err))
		return nil, false
	}
	var req runRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "request body is not a JSON object: "+jsonProblem(err))
		return nil, false
	}
	in, err := proto.DecodeInput(req.Input)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return nil, false
	}
	if id == "" {
		id = uuid.NewString()
	}
	job := &proto.Job{
		ID:        id,
		Input:     req.Input,
		Webhook:   req.Webhook,
		S3Config:  req.S3Config,
		Source:    proto.SourceAPI,
		Retention: retention.Milliseconds(),
	}
	if req.Policy != nil {
		if req.Policy.ExecutionTimeout < 0 || req.Policy.TTL < 0 {
			writeError(w, http.StatusBadRequest, "policy.executionTimeout and policy.ttl must not be negative")
			return nil, false
		}
		job.Policy = *req.Policy
	}
	job.Place(proto.DefaultPool, time.Now())
	if job.Input, err = a.offloadImages(r.Context(), id, req.Input, in); err != nil {
		var ie *proto.InputError
		if errors.As(err, &ie) {
			writeError(w, http.StatusBadRequest, err.Error())
		} else {
			a.unavailable(w, "store input images", err)
		}
		return nil, false
	}
	if err := a.q.Submit(r.Context(), proto.SourceAPI, job); err != nil {
		a.unavailable(w, "queue job", err)
		return nil, false
	}
	// Make the job visible to /status before answering; the dispatcher's
	// own Create is then a no-op.
	if _, _, err := a.records.Create(r.Context(), status.ParamsFor(job)); err != nil {
		// The job is queued durably; the dispatcher will record it.
		a.log.Warn("record new job", zap.String("job_id", id), zap.Error(err))
	}
	return job, true
}

func (a *API) handleStatus(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := proto.ValidID(id); err != nil {
		writeError(w, http.StatusBadRequest, "job id: "+err.Error())
		return
	}
	rec, err := a.records.Get(r.Context(), id)
	if errors.Is(err, status.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("job %s not found (unknown, or its result expired)", id))
		return
	}
	if err != nil {
		a.unavailable(w, "read job status", err)
		return
	}
	a.writeView(w, r.Context(), rec)
}

// writeWhenDone waits for the job's terminal state up to wait, then
// answers with the job view (the in-flight view when it is not done).
func (a *API) writeWhenDone(w http.ResponseWriter, r *http.Request, id string, waiter *terminalWaiter, wait time.Duration) {
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	for {
		rec, err := a.records.Get(context.WithoutCancel(ctx), id)
		if err == nil && rec.Status.Terminal() {
			a.writeView(w, r.Context(), rec)
			return
		}
		select {
		case <-waiter.done:
		case <-poll.C: // a safety net should an event be lost
		case <-ctx.Done():
			if r.Context().Err() != nil {
				return // the client left
			}
			if err != nil {
				if errors.Is(err, status.ErrNotFound) {
					writeJSON(w, http.StatusOK, jobView{ID: id, Status: proto.StatusInQueue})
					return
				}
				a.unavailable(w, "read job status", err)
				return
			}
			a.writeView(w, r.Context(), rec)
			return
		}
	}
}

// terminalWaiter closes done at the first terminal status event.
type terminalWaiter struct {
	done chan struct{}
	once chan struct{}
}

func newTerminalWaiter() *terminalWaiter {
	t := &terminalWaiter{done: make(chan struct{}), once: make(chan struct{}, 1)}
	t.once <- struct{}{}
	return t
}

func (t *terminalWaiter) observe(ev *proto.Event) {
	if ev.Type != proto.EventStatus || !ev.Status.Terminal() {
		return
	}
	select {
	case <-t.once:
		close(t.done)
	default:
	}
}

func (a *API) handleHealth(w http.ResponseWriter, r *http.Request) {
	queued, running, err := a.q.Depth(r.Context())
	if err != nil {
		a.unavailable(w, "read queue depth", err)
		return
	}
	counts, err := a.records.Counts(r.Context())
	if err != nil {
		a.unavailable(w, "read job counts", err)
		return
	}
	workers := map[string]int{"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0, "unhealthy": 0}
	if a.fleet != nil {
		list, err := a.fleet.List(r.Context())
		if err != nil {
			a.unavailable(w, "list workers", err)
			return
		}
		for _, wk := range list {
			workers[wk.State]++
		}
		workers["ready"] = workers["idle"] + workers["running"]
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"jobs": map[string]int64{
			"completed":  counts[proto.StatusCompleted],
			"failed":     counts[proto.StatusFailed] + counts[proto.StatusTimedOut],
			"inProgress": int64(running),
			"inQueue":    int64(queued),
			"retried":    counts[status.CountRetried],
		},
		"workers": workers,
	})
}

func (a *API) unavailable(w http.ResponseWriter, what string, err error) {
	a.log.Warn(what, zap.Error(err))
	writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("%s: the fleet's backend is unavailable, try again", what))
}

// parseWait reads ?wait= in milliseconds, clamped to RunPod's 1 s..300 s.
func parseWait(r *http.Request, def time.Duration) (time.Duration, error) {
	s := r.URL.Query().Get("wait")
	if s == "" {
		return def, nil
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("query parameter wait=%q is not a whole number of milliseconds", s)
	}
	return time.Duration(min(max(ms, 1000), 300000)) * time.Millisecond, nil
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

func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		if te.Field == "" {
			return fmt.Sprintf("got JSON %s, want an object", te.Value)
		}
		return fmt.Sprintf("field %s: got JSON %s, want %s", te.Field, te.Value, te.Type)
	}
	return err.Error()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
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
