package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// writeTimeout bounds each write to a browser's event stream, and the
// changes made for it once asked, even if the browser leaves.
const writeTimeout = 10 * time.Second

// pingEvery keeps idle event streams open through proxies.
const pingEvery = 15 * time.Second

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// record reads a job's record; on failure it has answered: 404 for a job
// without one, 503 when Redis fails.
func (c *Console) record(ctx context.Context, w http.ResponseWriter, id string) (*proto.Record, bool) {
	rec, err := c.d.DB.Get(ctx, id)
	if errors.Is(err, rdb.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("job %s does not exist (or its record's retention ended)", id))
		return nil, false
	}
	if err != nil {
		c.unavailable(w, "read job", err)
		return nil, false
	}
	return rec, true
}

// unavailable answers 503 for a failure of NATS or Redis: the log has the
// error, the answer a fixed text, as their clients' errors name their
// addresses (which no answer names).
func (c *Console) unavailable(w http.ResponseWriter, what string, err error) {
	c.log.Warn(what, zap.Error(err))
	writeError(w, http.StatusServiceUnavailable, what+": the fleet's backend is unavailable, try again")
}

// jobID reads and checks the {id} of a route.
func jobID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if err := proto.ValidID(id); err != nil {
		writeError(w, http.StatusBadRequest, "job id: "+err.Error())
		return "", false
	}
	return id, true
}

// session answers who the browser is: the guard let it through.
func (c *Console) session(w http.ResponseWriter, r *http.Request) {
	p, _ := auth.FromContext(r.Context())
	writeJSON(w, http.StatusOK, map[string]any{"name": p.Name, "role": p.Role.String()})
}

// events is the browser's event stream (text/event-stream): "fleet"
// (the fleet view, when it changed), "job" (a job's status or progress
// event) and, with ?job=<id>, "preview" (that job's previews).
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	job := ""
	for k, v := range r.URL.Query() {
		if k != "job" || len(v) != 1 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("query parameter %s: only job=<id>, once", k))
			return
		}
		if err := proto.ValidID(v[0]); err != nil {
			writeError(w, http.StatusBadRequest, "query parameter job: "+err.Error())
			return
		}
		job = v[0]
	}
	cl, ok := c.hub.add(job)
	if !ok {
		writeError(w, http.StatusServiceUnavailable, "the console is shutting down")
		return
	}
	defer c.hub.remove(cl)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write([]byte(": comfyfleet console\n\n")) {
		return
	}
	if job != "" {
		if ev, err := c.d.Queue.LatestPreview(r.Context(), job); err == nil && ev != nil {
			data, _ := json.Marshal(map[string]any{"job_id": job, "mime": ev.Preview.Mime, "data": ev.Preview.Data})
			if !write(sseFrame("preview", data)) {
				return
			}
		}
	}
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-cl.gone:
			return
		case <-ping.C:
			if !write([]byte(": ping\n\n")) {
				return
			}
		case f := <-cl.frames:
			if !write(f) {
				return
			}
		}
	}
}

func (c *Console) fleetView(w http.ResponseWriter, r *http.Request) {
	v, err := c.d.View(r.Context())
	if err != nil {
		c.unavailable(w, "read fleet view", err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// jobSummary is a job in the console's lists.
type jobSummary struct {
	ID          string       `json:"id"`
	Status      proto.Status `json:"status"`
	Pool        string       `json:"pool,omitempty"`
	Lane        proto.Lane   `json:"lane,omitempty"`
	Source      string       `json:"source,omitempty"`
	Tenant      string       `json:"tenant,omitempty"`
	BatchID     string       `json:"batch_id,omitempty"`
	WorkerID    string       `json:"worker_id,omitempty"`
	Attempt     int          `json:"attempt"`
	Retries     int          `json:"retries"`
	SubmittedAt time.Time    `json:"submitted_at,omitzero"`
	StartedAt   time.Time    `json:"started_at,omitzero"`
	FinishedAt  time.Time    `json:"finished_at,omitzero"`
	Error       string       `json:"error,omitempty"`
}

func summarize(r *proto.Record) jobSummary {
	return jobSummary{ID: r.ID, Status: r.Status, Pool: r.Pool, Lane: r.Lane, Source: r.Source, Tenant: r.Tenant,
		BatchID: r.BatchID, WorkerID: r.WorkerID, Attempt: r.Attempt, Retries: r.Retries,
		SubmittedAt: r.SubmittedAt, StartedAt: r.StartedAt, FinishedAt: r.FinishedAt, Error: r.Error}
}

// jobs answers a search of the recent jobs, newest first:
// {"jobs": [jobSummary…]}.
func (c *Console) jobs(w http.ResponseWriter, r *http.Request) {
	q, err := decodeJobQuery(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	recs, err := c.d.DB.RecentJobs(r.Context(), q.Limit, q.match)
	if err != nil {
		c.unavailable(w, "read recent jobs", err)
		return
	}
	out := make([]jobSummary, 0, len(recs))
	for _, rec := range recs {
		out = append(out, summarize(rec))
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": out})
}

// batchView is one batch's progress among the recent jobs.
type batchView struct {
	ID       string               `json:"id"`
	Jobs     int                  `json:"jobs"`
	ByStatus map[proto.Status]int `json:"by_status"`
	Done     int                  `json:"done"`
	// Total is the batch's size when its index says it (rdb.BatchMeta).
	Total int `json:"total,omitempty"`
	// Last is the newest submission of the batch.
	Last time.Time `json:"last,omitzero"`
}

// batches answers the batches among the recent jobs, newest first, with
// their jobs counted by status: {"batches": [batchView…]}.
func (c *Console) batches(w http.ResponseWriter, r *http.Request) {
	if len(r.URL.Query()) > 0 {
		writeError(w, http.StatusBadRequest, "this route takes no query parameters")
		return
	}
	by := map[string]*batchView{}
	_, err := c.d.DB.RecentJobs(r.Context(), 0, func(rec *proto.Record) bool {
		if rec.BatchID == "" {
			return false
		}
		b := by[rec.BatchID]
		if b == nil {
			b = &batchView{ID: rec.BatchID, ByStatus: map[proto.Status]int{}}
			by[rec.BatchID] = b
		}
		b.Jobs++
		b.ByStatus[rec.Status]++
		if rec.Status.Terminal() {
			b.Done++
		}
		if rec.SubmittedAt.After(b.Last) {
			b.Last = rec.SubmittedAt
		}
		return false
	})
	if err != nil {
		c.unavailable(w, "read batches", err)
		return
	}
	out := make([]*batchView, 0, len(by))
	for _, b := range by {
		if n, ok, err := c.d.DB.BatchSize(r.Context(), b.ID); err == nil && ok {
			b.Total = n
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Last.After(out[j].Last) })
	writeJSON(w, http.StatusOK, map[string]any{"batches": out})
}

// timelineEntry is one status event of a job.
type timelineEntry struct {
	Time     time.Time    `json:"time"`
	Status   proto.Status `json:"status"`
	Attempt  int          `json:"attempt,omitempty"`
	WorkerID string       `json:"worker_id,omitempty"`
	Error    string       `json:"error,omitempty"`
}

// jobDetail is the job page.
type jobDetail struct {
	Job jobSummary `json:"job"`
	// Output is the record's output; its files are read through
	// /console/api/jobs/{id}/blob?key=<blob>.
	Output json.RawMessage `json:"output,omitempty"`
	// Attempts are the errors of the failed attempts, oldest first.
	Attempts []string        `json:"attempts"`
	Timeline []timelineEntry `json:"timeline"`
	Progress *proto.Progress `json:"progress,omitempty"`
	// Workflow is the job's workflow when a copy is kept (an endpoint
	// API job's request, or its dead letter); WorkflowFrom says which.
	Workflow     json.RawMessage   `json:"workflow,omitempty"`
	WorkflowFrom string            `json:"workflow_from,omitempty"`
	DeadLetter   *queue.DeadLetter `json:"dead_letter,omitempty"`
}

// maxTimeline bounds the events read for a job page.
const maxTimeline = 2000

// job answers a job's page.
func (c *Console) job(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	if len(r.URL.Query()) > 0 {
		writeError(w, http.StatusBadRequest, "this route takes no query parameters")
		return
	}
	ctx := r.Context()
	rec, ok := c.record(ctx, w, id)
	if !ok {
		return
	}
	d := jobDetail{Job: summarize(rec), Output: rec.Output, Attempts: []string{}, Timeline: []timelineEntry{}}
	var err error
	if d.Attempts, err = c.d.DB.AttemptErrors(ctx, id); err != nil {
		c.unavailable(w, "read job attempts", err)
		return
	}
	if d.Attempts == nil {
		d.Attempts = []string{}
	}
	evs, _, err := c.d.Queue.ReadEvents(ctx, id, 0, maxTimeline)
	if err != nil {
		c.unavailable(w, "read job events", err)
		return
	}
	for _, ev := range evs {
		switch ev.Type {
		case proto.EventStatus:
			d.Timeline = append(d.Timeline, timelineEntry{Time: ev.Time, Status: ev.Status, Attempt: ev.Attempt, WorkerID: ev.WorkerID, Error: ev.Error})
		case proto.EventProgress:
			d.Progress = ev.Progress
		}
	}
	c.findWorkflow(ctx, &d)
	writeJSON(w, http.StatusOK, d)
}

// findWorkflow fills the job's workflow from the copies that exist: the
// request the endpoint API keeps for /retry, or the job's dead letter.
// Only the workflow is taken from them, never the input's secrets.
func (c *Console) findWorkflow(ctx context.Context, d *jobDetail) {
	if data, err := c.d.Queue.KeptRequest(ctx, d.Job.ID); err == nil {
		if wf := workflowOf(data); wf != nil {
			d.Workflow, d.WorkflowFrom = wf, "request"
		}
	}
	dls, err := c.d.Queue.DeadLetters(ctx, d.Job.Pool, 0)
	if err != nil {
		return
	}
	for i := range dls {
		if dls[i].JobID != d.Job.ID {
			continue
		}
		d.DeadLetter = &dls[i]
		if d.Workflow == nil {
			if _, data, err := c.d.Queue.DeadLetterJob(ctx, dls[i].Seq); err == nil {
				if wf := workflowOf(data); wf != nil {
					d.Workflow, d.WorkflowFrom = wf, "dead letter"
				}
			}
		}
	}
}

// workflowOf is the workflow of a job message, nil when it has none.
func workflowOf(data []byte) json.RawMessage {
	var msg struct {
		Input struct {
			Workflow json.RawMessage `json:"workflow"`
		} `json:"input"`
	}
	if json.Unmarshal(data, &msg) != nil || len(msg.Input.Workflow) == 0 {
		return nil
	}
	return msg.Input.Workflow
}

// inlineMime are the types a job's file is shown as in the page; every
// other file is a download, so that an output (a workflow's, not ours)
// can never run as a page of the console's origin.
var inlineMime = map[string]bool{
	"image/png": true, "image/jpeg": true, "image/webp": true, "image/gif": true,
	"video/mp4": true, "video/webm": true, "audio/wav": true, "audio/x-wav": true, "audio/mpeg": true,
	"audio/ogg": true, "audio/flac": true, "text/plain": true,
}

// blob serves one of the job's output files: ?key=<blob key> must be an
// item of the job's output.
func (c *Console) blob(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	key := q.Get("key")
	if len(q) != 1 || len(q["key"]) != 1 || key == "" {
		writeError(w, http.StatusBadRequest, "query: give key=<blob key of one of the job's outputs>, once, and nothing else")
		return
	}
	ctx := r.Context()
	rec, ok := c.record(ctx, w, id)
	if !ok {
		return
	}
	item, ok := outputItem(rec.Output, key)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("job %s has no output with blob key %q", id, key))
		return
	}
	body, info, err := c.d.Blobs.Get(ctx, key)
	if err != nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("read output %s: %v", key, err))
		return
	}
	defer body.Close()
	mime := strings.ToLower(item.Mime)
	if mime == "" {
		mime = info.Mime
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	h.Set("Cache-Control", "private, max-age=300")
	if inlineMime[mime] {
		if mime == "text/plain" {
			mime = "text/plain; charset=utf-8"
		}
		h.Set("Content-Type", mime)
	} else {
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", safeName(item.Filename)))
	}
	if _, err := io.Copy(w, body); err != nil {
		c.log.Debug("send output", zap.String("job_id", id), zap.Error(err))
	}
}

// outputItem finds the item of an output whose blob is key.
func outputItem(raw json.RawMessage, key string) (proto.OutputItem, bool) {
	var out proto.Output
	if len(raw) == 0 || json.Unmarshal(raw, &out) != nil {
		return proto.OutputItem{}, false
	}
	for _, list := range [][]proto.OutputItem{out.Images, out.Videos, out.Audio, out.Files, out.Text} {
		for _, it := range list {
			if it.Blob == key {
				return it, true
			}
		}
	}
	return proto.OutputItem{}, false
}

// safeName keeps a file name printable for a header.
func safeName(s string) string {
	b := []byte(s)
	for i, ch := range b {
		if ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\' {
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		return "output"
	}
	return string(b)
}

// cancel cancels a job through the lifecycle core (as the endpoint API's
// /cancel does): a queued job never starts, a running one is stopped by
// its worker. A job that had ended keeps its status.
func (c *Console) cancel(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok || !emptyBody(w, r) {
		return
	}
	ctx, done := context.WithTimeout(context.WithoutCancel(r.Context()), writeTimeout)
	defer done()
	rec, err := c.d.Core.Cancel(ctx, id)
	switch {
	case errors.Is(err, rdb.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("job %s does not exist", id))
	case errors.Is(err, rdb.ErrTerminal):
		writeError(w, http.StatusConflict, fmt.Sprintf("job %s has ended already: %s", id, rec.Status))
	case err != nil:
		c.unavailable(w, "cancel job", err)
	default:
		c.log.Info("job cancelled from the console", zap.String("job_id", id), zap.String("by", principal(r)))
		writeJSON(w, http.StatusOK, map[string]any{"id": id, "status": proto.StatusCancelled})
	}
}

// retry runs a FAILED or TIMED_OUT job again, from the request the
// endpoint API keeps (as its /retry does).
func (c *Console) retry(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok || !emptyBody(w, r) {
		return
	}
	ctx, done := context.WithTimeout(context.WithoutCancel(r.Context()), writeTimeout)
	defer done()
	rec, ok := c.record(ctx, w, id)
	if !ok {
		return
	}
	if rec.Status != proto.StatusFailed && rec.Status != proto.StatusTimedOut {
		writeError(w, http.StatusConflict, fmt.Sprintf("job %s is %s; only FAILED or TIMED_OUT jobs can be retried", id, rec.Status))
		return
	}
	data, err := c.d.Queue.KeptRequest(ctx, id)
	if errors.Is(err, queue.ErrNotKept) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("job %s cannot be retried: its request is not kept (it did not come through the endpoint API, or its retention ended); a dead-lettered job is replayed from the dead letters", id))
		return
	}
	if err != nil {
		c.unavailable(w, "read job", err)
		return
	}
	job, err := proto.DecodeJob(data)
	if err != nil || job.ID != id {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("the kept request of job %s cannot be read", id))
		return
	}
	if _, err := c.d.Core.Retry(ctx, job); err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, rdb.ErrIllegal) {
			code = http.StatusConflict
		}
		writeError(w, code, "retry job: "+err.Error())
		return
	}
	c.log.Info("job retried from the console", zap.String("job_id", id), zap.String("by", principal(r)))
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "status": proto.StatusInQueue})
}

// pause pauses (or resumes) a pool's lane, or both its lanes, and tells
// the workers.
func (c *Console) pause(paused bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body: at most %d bytes", maxBody))
			return
		}
		p, err := decodePause(body)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		ctx, done := context.WithTimeout(context.WithoutCancel(r.Context()), writeTimeout)
		defer done()
		if err := c.d.DB.SetPaused(ctx, p.Pool, p.lanes(), paused); err != nil {
			c.unavailable(w, "pause lanes", err)
			return
		}
		c.announce()
		c.log.Info("lanes paused or resumed from the console", zap.String("pool", p.Pool), zap.String("lane", string(p.Lane)),
			zap.Bool("paused", paused), zap.String("by", principal(r)))
		writeJSON(w, http.StatusOK, map[string]any{"pool": p.Pool, "lanes": p.lanes(), "paused": paused})
	})
}

// drain tells a worker to drain (or to pull again).
func (c *Console) drain(draining bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := proto.ValidID(id); err != nil {
			writeError(w, http.StatusBadRequest, "worker id: "+err.Error())
			return
		}
		if !emptyBody(w, r) {
			return
		}
		ctx, done := context.WithTimeout(context.WithoutCancel(r.Context()), writeTimeout)
		defer done()
		if err := c.d.DB.SetDraining(ctx, id, draining); err != nil {
			c.unavailable(w, "drain worker", err)
			return
		}
		c.announce()
		c.log.Info("worker drain changed from the console", zap.String("worker_id", id), zap.Bool("draining", draining), zap.String("by", principal(r)))
		writeJSON(w, http.StatusOK, map[string]any{"worker_id": id, "draining": draining})
	})
}

// announce tells the workers that the controls changed and reads the
// fleet view for the browsers.
func (c *Console) announce() {
	if err := c.d.Queue.PublishControl(); err != nil {
		c.log.Warn("announce control change (workers read it within 5 s)", zap.Error(err))
	}
	c.hub.nudge()
}

// emptyBody refuses a body on a route that takes none (an empty JSON
// object is accepted, as browsers' fetch often sends one).
func emptyBody(w http.ResponseWriter, r *http.Request) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "this route takes no body")
		return false
	}
	if s := strings.TrimSpace(string(body)); s != "" && s != "{}" {
		writeError(w, http.StatusBadRequest, "this route takes no body (or {})")
		return false
	}
	return true
}

// principal names who acted, for the log.
func principal(r *http.Request) string {
	p, _ := auth.FromContext(r.Context())
	if p.Name == "" {
		return "(no keys configured)"
	}
	return p.Name
}
