package runpodtest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Request is one request a RunPod worker made, as it arrived.
type Request struct {
	Method string
	// URI is the request target exactly as sent (r.RequestURI): "$", "&"
	// and "%2C" stay as they came.
	URI    string
	Header http.Header
	Body   []byte
	At     time.Time
	// Code is what the platform answered.
	Code int
}

// Kind names the route: job-take, job-take-batch, job-stop, job-done,
// job-stream or ping ("" for anything else).
func (r Request) Kind() string {
	path, _, _ := strings.Cut(r.URI, "?")
	parts := strings.Split(path, "/")
	for _, p := range parts {
		switch p {
		case "job-take", "job-take-batch", "job-stop", "job-done", "job-stream", "ping":
			return p
		}
	}
	return ""
}

// Answer is a scripted answer to one take request.
type Answer struct {
	Code        int
	ContentType string
	Body        string
}

// Platform is a fake RunPod platform for a worker: it hands out queued
// jobs on job-take (an object) and job-take-batch (an array of up to
// batch_size), holds empty takes and stop polls for Hold before answering
// 204, passes queued stop lists on job-stop, answers job-done, job-stream
// and ping with 200 (or scripted codes: Recorder.FailDone). Its Recorder
// records every request.
type Platform struct {
	*Recorder
	URL  string
	Hold time.Duration

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when jobs, answers or stops are added
	jobs    []json.RawMessage
	answers []Answer
	stops   [][]string
}

// StartPlatform serves a fake platform for endpoint "ep1" until the test
// ends.
func StartPlatform(t testing.TB) *Platform {
	t.Helper()
	p := &Platform{Hold: 200 * time.Millisecond, changed: make(chan struct{})}
	p.Recorder = NewRecorder(http.HandlerFunc(p.serve))
	srv := httptest.NewServer(p.Recorder)
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// Templates are the environment values a worker gets, in RunPod's
// production form with a "?gpu=TEST" query (§A.3).
func (p *Platform) Templates() (getJob, postOutput, postStream, ping string) {
	b := p.URL + "/v2/ep1/"
	return b + "job-take/$ID?gpu=TEST", b + "job-done/$RUNPOD_POD_ID/$ID?gpu=TEST",
		b + "job-stream/$RUNPOD_POD_ID/$ID?gpu=TEST", b + "ping/$RUNPOD_POD_ID?gpu=TEST"
}

// AddJob queues a job object for the next takes.
func (p *Platform) AddJob(job any) {
	data, err := json.Marshal(job)
	if err != nil {
		panic(err)
	}
	p.mu.Lock()
	p.jobs = append(p.jobs, data)
	p.mu.Unlock()
	p.notify()
}

// AddAnswer queues a raw answer for the next take, before any job.
func (p *Platform) AddAnswer(a Answer) {
	p.mu.Lock()
	p.answers = append(p.answers, a)
	p.mu.Unlock()
	p.notify()
}

// StopJobs queues {"jobsToStop": ids} for the next job-stop poll.
func (p *Platform) StopJobs(ids ...string) {
	p.mu.Lock()
	p.stops = append(p.stops, ids)
	p.mu.Unlock()
	p.notify()
}

// Of filters requests by kind.
func Of(reqs []Request, kind string) []Request {
	var out []Request
	for _, r := range reqs {
		if r.Kind() == kind {
			out = append(out, r)
		}
	}
	return out
}

func (p *Platform) notify() {
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (p *Platform) serve(w http.ResponseWriter, r *http.Request) {
	code, ctype, out := p.answer(r, Request{URI: r.RequestURI})
	if ctype != "" {
		w.Header().Set("Content-Type", ctype)
	}
	w.WriteHeader(code)
	_, _ = io.WriteString(w, out)
}

func (p *Platform) answer(r *http.Request, req Request) (int, string, string) {
	switch req.Kind() {
	case "job-take", "job-take-batch":
		n := 1
		if req.Kind() == "job-take-batch" {
			n = batchSize(req.URI)
		}
		return p.take(r, req.Kind() == "job-take-batch", n)
	case "job-stop":
		ids, ok := p.await(r, func() (any, bool) {
			if len(p.stops) == 0 {
				return nil, false
			}
			s := p.stops[0]
			p.stops = p.stops[1:]
			return s, true
		})
		if !ok {
			return http.StatusNoContent, "", ""
		}
		data, _ := json.Marshal(map[string]any{"jobsToStop": ids})
		return http.StatusOK, "application/json", string(data)
	case "job-done", "job-stream", "ping":
		return http.StatusOK, "application/json", "{}"
	}
	return http.StatusNotFound, "text/plain", "404 page not found"
}

func (p *Platform) take(r *http.Request, batch bool, n int) (int, string, string) {
	v, ok := p.await(r, func() (any, bool) {
		if len(p.answers) > 0 {
			a := p.answers[0]
			p.answers = p.answers[1:]
			return a, true
		}
		if len(p.jobs) == 0 {
			return nil, false
		}
		n = min(n, len(p.jobs))
		got := p.jobs[:n]
		p.jobs = p.jobs[n:]
		if !batch {
			return Answer{Code: 200, ContentType: "application/json", Body: string(got[0])}, true
		}
		data, _ := json.Marshal(got)
		return Answer{Code: 200, ContentType: "application/json", Body: string(data)}, true
	})
	if !ok {
		return http.StatusNoContent, "", ""
	}
	a := v.(Answer)
	return a.Code, a.ContentType, a.Body
}

// await holds a request up to Hold until pick finds something.
func (p *Platform) await(r *http.Request, pick func() (any, bool)) (any, bool) {
	deadline := time.NewTimer(p.Hold)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		v, ok := pick()
		ch := p.changed
		p.mu.Unlock()
		if ok {
			return v, true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return nil, false
		case <-r.Context().Done():
			return nil, false
		}
	}
}

// batchSize reads batch_size from a take URI (in its query or, for a
// template without "?", in its path).
func batchSize(uri string) int {
	i := strings.Index(uri, "batch_size=")
	if i < 0 {
		return 1
	}
	v := uri[i+len("batch_size="):]
	if j := strings.IndexAny(v, "&"); j >= 0 {
		v = v[:j]
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// jobIDOf is the job id of a job-done or job-stream URI: its last path
// segment, cut at the first "&" (§A.3).
func jobIDOf(uri string) string {
	path, _, _ := strings.Cut(uri, "?")
	seg := path[strings.LastIndex(path, "/")+1:]
	seg, _, _ = strings.Cut(seg, "&")
	return seg
}
