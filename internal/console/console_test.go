package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/console"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

const adminKey = "ops:s3cret-admin-key"

type bundle struct {
	db   *rdb.DB
	q    *queue.Client
	core *lifecycle.Core
	con  *console.Console
	url  string
	ctx  context.Context
}

// setup serves a started console behind a guard with one admin key, as
// the dispatcher mounts it: its public routes bare, the others behind the
// admin keys.
func setup(t *testing.T) *bundle {
	t.Helper()
	n := testenv.StartNATS(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	ctx := testenv.Context(t, time.Minute)
	require.NoError(t, q.Ensure(ctx, queue.Config{}))
	rc, prefix := testenv.Redis(t)
	db := rdb.New(rc, rdb.Options{Prefix: prefix})
	log := zaptest.NewLogger(t)
	core := lifecycle.New(db, q, log)
	con, err := console.New(console.Config{FleetEvery: 50 * time.Millisecond}, console.Deps{DB: db, Queue: q, Core: core, Blobs: q.Blobs(), Logger: log})
	require.NoError(t, err)
	require.NoError(t, con.Start(ctx))
	keys, err := auth.ParseKeys(auth.Admin, []string{adminKey})
	require.NoError(t, err)
	ring, err := auth.NewKeyring(keys...)
	require.NoError(t, err)
	g, err := auth.NewGuard(ring, nil)
	require.NoError(t, err)
	mux := http.NewServeMux()
	for _, r := range con.Routes() {
		h := r.Handler
		if !r.Public {
			h = g.Require(auth.Admin, h)
		}
		mux.Handle(r.Pattern, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		con.Stop() // ends the event streams, which srv.Close waits for
		srv.Close()
	})
	return &bundle{db: db, q: q, core: core, con: con, url: srv.URL, ctx: ctx}
}

func (b *bundle) do(t *testing.T, method, path, body string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(b.ctx, method, b.url+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer s3cret-admin-key")
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(data), resp.Header
}

func (b *bundle) create(t *testing.T, id, batch, tenant string) {
	t.Helper()
	job := &proto.Job{ID: id, Pool: proto.DefaultPool, Lane: proto.LaneBatch, BatchID: batch, Tenant: tenant, Source: proto.SourceBatch}
	_, created, err := b.db.Create(b.ctx, rdb.ParamsFor(job), time.Time{}, false)
	require.NoError(t, err)
	require.True(t, created)
}

// The page and its assets are served to anyone, with a strict content
// policy; every API route wants an admin key, given as a header.
func TestPageIsPublicAndTheAPINeedsAnAdminKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, path := range []string{"/console/", "/console/assets/app.js", "/console/assets/style.css"} {
		resp, err := http.Get(b.url + path)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.Contains(t, resp.Header.Get("Content-Security-Policy"), "script-src 'self'", path)
		require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"), path)
	}
	resp, err := http.Get(b.url + "/console/assets/missing.js")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	for _, path := range []string{"/console/api/session", "/console/api/jobs", "/console/api/events", "/console/api/fleet"} {
		resp, err := http.Get(b.url + path)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
	}
	code, body, _ := b.do(t, http.MethodGet, "/console/api/session", "")
	require.Equal(t, http.StatusOK, code, body)
	require.JSONEq(t, `{"name":"ops","role":"admin"}`, body)
	require.NotContains(t, body, "s3cret")
}

// The recent jobs are searched by id, batch, tenant and status; a bad
// search says which parameter is wrong.
func TestSearchRecentJobs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "alpha-1", "b1", "acme")
	b.create(t, "alpha-2", "b1", "other")
	b.create(t, "beta-1", "b2", "acme")
	_, err := b.core.CancelQueued(b.ctx, "beta-1")
	require.NoError(t, err)

	ids := func(query string) []string {
		code, body, _ := b.do(t, http.MethodGet, "/console/api/jobs"+query, "")
		require.Equal(t, http.StatusOK, code, body)
		var v struct {
			Jobs []struct {
				ID string `json:"id"`
			} `json:"jobs"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &v))
		var out []string
		for _, j := range v.Jobs {
			out = append(out, j.ID)
		}
		return out
	}
	require.ElementsMatch(t, []string{"alpha-1", "alpha-2", "beta-1"}, ids(""))
	require.ElementsMatch(t, []string{"alpha-1", "alpha-2"}, ids("?q=ALPHA"))
	require.ElementsMatch(t, []string{"alpha-1", "alpha-2"}, ids("?batch=b1"))
	require.ElementsMatch(t, []string{"alpha-1", "beta-1"}, ids("?tenant=acme"))
	require.ElementsMatch(t, []string{"beta-1"}, ids("?status=cancelled"))
	require.ElementsMatch(t, []string{"alpha-1"}, ids("?q=1&tenant=acme&status=IN_QUEUE"))
	require.Len(t, ids("?limit=1"), 1)

	for query, want := range map[string]string{
		"?status=DONE":     "query parameter status",
		"?limit=0":         "query parameter limit",
		"?batch=a%20b":     "query parameter batch",
		"?colour=blue":     "query parameter colour: unknown",
		"?q=a&q=b":         "query parameter q: give it once",
		"?tenant=" + "x/y": "query parameter tenant",
	} {
		code, body, _ := b.do(t, http.MethodGet, "/console/api/jobs"+query, "")
		require.Equal(t, http.StatusBadRequest, code, query)
		require.Contains(t, body, want, query)
	}

	code, body, _ := b.do(t, http.MethodGet, "/console/api/batches", "")
	require.Equal(t, http.StatusOK, code, body)
	var bv struct {
		Batches []struct {
			ID       string         `json:"id"`
			Jobs     int            `json:"jobs"`
			Done     int            `json:"done"`
			ByStatus map[string]int `json:"by_status"`
		} `json:"batches"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &bv))
	require.Len(t, bv.Batches, 2)
	by := map[string]int{}
	for _, x := range bv.Batches {
		by[x.ID] = x.Jobs*10 + x.Done
	}
	require.Equal(t, map[string]int{"b1": 20, "b2": 11}, by)
}

// A job's page has its timeline from its events, its attempts and its
// output files, served only when they are the job's, and as downloads
// unless they are media.
func TestJobPageAndOutputs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "j1", "", "")
	cl, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: "j1", WorkerID: "w1", LeaseTTL: time.Minute})
	require.NoError(t, err)
	require.NoError(t, b.q.PublishEvent(b.ctx, &proto.Event{JobID: "j1", Type: proto.EventStatus, Status: proto.StatusInProgress, Attempt: 1, WorkerID: "w1"}))
	require.NoError(t, b.q.PublishEvent(b.ctx, &proto.Event{JobID: "j1", Type: proto.EventProgress, Progress: &proto.Progress{Value: 3, Max: 4}}))
	blobs := b.q.Blobs()
	_, err = blobs.Put(b.ctx, "out/j1/1/a.png", "image/png", strings.NewReader("PNGDATA"))
	require.NoError(t, err)
	_, err = blobs.Put(b.ctx, "out/j1/1/page.html", "text/html", strings.NewReader("<script>alert(1)</script>"))
	require.NoError(t, err)
	_, err = blobs.Put(b.ctx, "out/other/1/x.png", "image/png", strings.NewReader("OTHER"))
	require.NoError(t, err)
	out, _ := json.Marshal(proto.Output{
		Images: []proto.OutputItem{{Filename: "a.png", Type: proto.ItemBase64, Mime: "image/png", Blob: "out/j1/1/a.png"}},
		Files:  []proto.OutputItem{{Filename: "page.html", Type: proto.ItemBase64, Mime: "text/html", Blob: "out/j1/1/page.html"}},
	})
	_, err = b.db.Finish(b.ctx, "j1", cl.Lease.Attempt, proto.StatusCompleted, out, "", false)
	require.NoError(t, err)
	require.NoError(t, b.q.PublishEvent(b.ctx, &proto.Event{JobID: "j1", Type: proto.EventStatus, Status: proto.StatusCompleted, Attempt: 1, WorkerID: "w1"}))

	code, body, _ := b.do(t, http.MethodGet, "/console/api/jobs/j1", "")
	require.Equal(t, http.StatusOK, code, body)
	var d struct {
		Job      struct{ Status proto.Status }   `json:"job"`
		Timeline []struct{ Status proto.Status } `json:"timeline"`
		Progress *proto.Progress                 `json:"progress"`
		Attempts []string                        `json:"attempts"`
		Output   proto.Output                    `json:"output"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &d))
	require.Equal(t, proto.StatusCompleted, d.Job.Status)
	require.Len(t, d.Timeline, 2)
	require.Equal(t, proto.StatusInProgress, d.Timeline[0].Status)
	require.Equal(t, proto.StatusCompleted, d.Timeline[1].Status)
	require.Equal(t, int64(3), d.Progress.Value)
	require.Empty(t, d.Attempts)
	require.Equal(t, "out/j1/1/a.png", d.Output.Images[0].Blob)

	code, body, h := b.do(t, http.MethodGet, "/console/api/jobs/j1/blob?key=out/j1/1/a.png", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "PNGDATA", body)
	require.Equal(t, "image/png", h.Get("Content-Type"))
	require.Contains(t, h.Get("Content-Security-Policy"), "sandbox")
	// Not media: a download, never a page of the console's origin.
	code, _, h = b.do(t, http.MethodGet, "/console/api/jobs/j1/blob?key=out/j1/1/page.html", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "application/octet-stream", h.Get("Content-Type"))
	require.Contains(t, h.Get("Content-Disposition"), "attachment")
	// Another job's blob is not this job's output.
	code, body, _ = b.do(t, http.MethodGet, "/console/api/jobs/j1/blob?key=out/other/1/x.png", "")
	require.Equal(t, http.StatusNotFound, code, body)
	code, body, _ = b.do(t, http.MethodGet, "/console/api/jobs/j1/blob", "")
	require.Equal(t, http.StatusBadRequest, code, body)
	code, body, _ = b.do(t, http.MethodGet, "/console/api/jobs/nope", "")
	require.Equal(t, http.StatusNotFound, code, body)
	code, body, _ = b.do(t, http.MethodGet, "/console/api/jobs/bad%20id", "")
	require.Equal(t, http.StatusBadRequest, code, body)
}

// Cancel goes through the lifecycle core; a job that ended says so.
// Retry wants a FAILED or TIMED_OUT job whose request is kept.
func TestCancelAndRetry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.create(t, "c1", "", "")
	cancelled := make(chan string, 1)
	stop, err := b.q.SubscribeCancels(func(id string) { cancelled <- id })
	require.NoError(t, err)
	defer stop()
	code, body, _ := b.do(t, http.MethodPost, "/console/api/jobs/c1/cancel", "")
	require.Equal(t, http.StatusOK, code, body)
	rec, err := b.db.Get(b.ctx, "c1")
	require.NoError(t, err)
	require.Equal(t, proto.StatusCancelled, rec.Status)
	code, body, _ = b.do(t, http.MethodPost, "/console/api/jobs/c1/cancel", "")
	require.Equal(t, http.StatusConflict, code, body)
	require.Contains(t, body, "CANCELLED")
	code, body, _ = b.do(t, http.MethodPost, "/console/api/jobs/c1/cancel", `{"why":"x"}`)
	require.Equal(t, http.StatusBadRequest, code, body)
	code, body, _ = b.do(t, http.MethodPost, "/console/api/jobs/none/cancel", "")
	require.Equal(t, http.StatusNotFound, code, body)

	code, body, _ = b.do(t, http.MethodPost, "/console/api/jobs/c1/retry", "")
	require.Equal(t, http.StatusConflict, code, body)
	require.Contains(t, body, "only FAILED or TIMED_OUT")
	b.create(t, "f1", "", "")
	_, err = b.db.Fail(b.ctx, "f1", 0, "boom")
	require.NoError(t, err)
	code, body, _ = b.do(t, http.MethodPost, "/console/api/jobs/f1/retry", "{}")
	require.Equal(t, http.StatusNotFound, code, body)
	require.Contains(t, body, "not kept")
}

// Pause and resume of a lane or a pool, and drain of a worker, are kept
// where the workers read them, announced to them and shown in the fleet
// view; bad bodies are refused naming the field.
func TestPauseResumeDrain(t *testing.T) {
	t.Parallel()
	b := setup(t)
	announced := make(chan struct{}, 8)
	stop, err := b.q.SubscribeControl(func() { announced <- struct{}{} })
	require.NoError(t, err)
	defer stop()
	require.NoError(t, b.q.Flush(b.ctx))
	wait := func() {
		select {
		case <-announced:
		case <-b.ctx.Done():
			t.Fatal("no announcement")
		}
	}
	code, body, _ := b.do(t, http.MethodPost, "/console/api/pause", `{"pool":"gpu-xl"}`)
	require.Equal(t, http.StatusOK, code, body)
	wait()
	code, body, _ = b.do(t, http.MethodPost, "/console/api/resume", `{"pool":"gpu-xl","lane":"interactive"}`)
	require.Equal(t, http.StatusOK, code, body)
	wait()
	code, body, _ = b.do(t, http.MethodPost, "/console/api/workers/w1/drain", "")
	require.Equal(t, http.StatusOK, code, body)
	wait()
	c, err := b.db.ReadControls(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"gpu-xl/batch"}, c.Paused)
	require.Equal(t, []string{"w1"}, c.Draining)

	// The fleet view shows the paused lane although no worker of its pool
	// is up.
	code, body, _ = b.do(t, http.MethodGet, "/console/api/fleet", "")
	require.Equal(t, http.StatusOK, code, body)
	var v struct {
		Paused   []string `json:"paused"`
		Draining []string `json:"draining"`
		Lanes    []struct {
			Pool string `json:"pool"`
			Lane string `json:"lane"`
		} `json:"lanes"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	require.Equal(t, []string{"gpu-xl/batch"}, v.Paused)
	require.Equal(t, []string{"w1"}, v.Draining)
	require.Contains(t, v.Lanes, struct {
		Pool string `json:"pool"`
		Lane string `json:"lane"`
	}{"gpu-xl", "batch"})

	code, body, _ = b.do(t, http.MethodPost, "/console/api/workers/w1/undrain", "")
	require.Equal(t, http.StatusOK, code, body)
	c, err = b.db.ReadControls(b.ctx)
	require.NoError(t, err)
	require.Empty(t, c.Draining)

	for in, want := range map[string]string{
		`{"lane":"batch"}`:           "field pool",
		`{"pool":"p","lane":"fast"}`: "field lane",
		`{"pool":"p","paused":true}`: "unknown field",
		`{"pool":"p"} {"pool":"q"}`:  "nothing after it",
		`["p"]`:                      "body",
		`{"pool":"p/q"}`:             "field pool",
	} {
		code, body, _ := b.do(t, http.MethodPost, "/console/api/pause", in)
		require.Equal(t, http.StatusBadRequest, code, in)
		require.Contains(t, body, want, in)
	}
	code, body, _ = b.do(t, http.MethodPost, "/console/api/pause", strings.Repeat(" ", 5000)+`{"pool":"p"}`)
	require.Equal(t, http.StatusRequestEntityTooLarge, code, body)
}

// sse reads an event stream's frames.
type sse struct {
	t    *testing.T
	body io.ReadCloser
	r    *bufio.Reader
}

func (b *bundle) stream(t *testing.T, query string) *sse {
	t.Helper()
	ctx, cancel := context.WithCancel(b.ctx)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url+"/console/api/events"+query, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer s3cret-admin-key")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	t.Cleanup(func() { resp.Body.Close() })
	return &sse{t: t, body: resp.Body, r: bufio.NewReader(resp.Body)}
}

// next returns the next event's name and data, skipping comments.
func (s *sse) next() (event, data string) {
	s.t.Helper()
	for {
		line, err := s.r.ReadString('\n')
		require.NoError(s.t, err)
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "event: "):
			event = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		case line == "" && event != "":
			return event, data
		}
	}
}

// until returns the data of the next event of that name for which ok holds.
func (s *sse) until(event string, ok func(string) bool) string {
	s.t.Helper()
	for {
		e, d := s.next()
		if e == event && ok(d) {
			return d
		}
	}
}

// The event stream starts with the fleet view, carries every job's status
// and progress events, a job's previews only to a browser showing it, and
// a fresh fleet view when the fleet changes.
func TestEventStream(t *testing.T) {
	t.Parallel()
	b := setup(t)
	all := b.stream(t, "")
	one := b.stream(t, "?job=j2")
	all.until("fleet", func(string) bool { return true })
	one.until("fleet", func(string) bool { return true })

	require.NoError(t, b.q.PublishEventNoWait(&proto.Event{JobID: "j1", Type: proto.EventPreview, Preview: &proto.Preview{Mime: "image/jpeg", Data: "AAAA"}}))
	require.NoError(t, b.q.PublishEventNoWait(&proto.Event{JobID: "j2", Type: proto.EventPreview, Preview: &proto.Preview{Mime: "image/jpeg", Data: "BBBB"}}))
	require.NoError(t, b.q.PublishEvent(b.ctx, &proto.Event{JobID: "j2", Type: proto.EventStatus, Status: proto.StatusInProgress, WorkerID: "w1"}))
	require.NoError(t, b.q.PublishEventNoWait(&proto.Event{JobID: "j2", Type: proto.EventProgress, Progress: &proto.Progress{Value: 1, Max: 2}}))

	d := one.until("preview", func(string) bool { return true })
	require.JSONEq(t, `{"job_id":"j2","mime":"image/jpeg","data":"BBBB"}`, d, "only j2's preview reaches the browser showing j2")
	e, d := all.next()
	for e == "fleet" {
		e, d = all.next()
	}
	require.Equal(t, "job", e, "the browser showing no job gets no preview: %s", d)
	require.Contains(t, d, `"status":"IN_PROGRESS"`)
	d = all.until("job", func(d string) bool { return strings.Contains(d, `"type":"progress"`) })
	require.Contains(t, d, `"max":2`)

	require.NoError(t, b.db.Beat(b.ctx, proto.Heartbeat{ID: "gpu-7", Pool: "p", State: proto.WorkerIdle}))
	all.until("fleet", func(d string) bool { return strings.Contains(d, `"gpu-7"`) })

	code, body, _ := b.do(t, http.MethodGet, "/console/api/events?job=a&x=1", "")
	require.Equal(t, http.StatusBadRequest, code, body)
	require.Contains(t, body, "query parameter x")

	// Shutting down ends the streams.
	b.con.CloseStreams()
	for {
		if _, err := all.r.ReadString('\n'); err != nil {
			break
		}
	}
	code, body, _ = b.do(t, http.MethodGet, "/console/api/events", "")
	require.Equal(t, http.StatusServiceUnavailable, code, body)
}

// TestUnavailableBackendIsNotNamed: when Redis is gone the console
// answers 503 with a fixed text; the log has the cause, the answer never
// names the backend's address.
func TestUnavailableBackendIsNotNamed(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rc.Close() })
	b := setup(t)
	db := rdb.New(rc, rdb.Options{Prefix: "unavailable:"})
	log := zaptest.NewLogger(t)
	con, err := console.New(console.Config{}, console.Deps{DB: db, Queue: b.q, Core: lifecycle.New(db, b.q, log), Blobs: b.q.Blobs(), Logger: log})
	require.NoError(t, err)
	mux := http.NewServeMux()
	for _, r := range con.Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	for path, what := range map[string]string{"/console/api/fleet": "read fleet view", "/console/api/jobs": "read recent jobs",
		"/console/api/jobs/j-1": "read job", "/console/api/batches": "read batches"} {
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s: %s", path, body)
		require.JSONEq(t, `{"error":"`+what+`: the fleet's backend is unavailable, try again"}`, string(body), path)
		require.NotContains(t, string(body), addr, path)
	}
}
