package runpodtest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// Recorder sits in front of a handler (the job-take host, or the fake
// Platform), records every request a worker makes and can answer some
// job-done posts itself with a scripted status, as a platform in trouble
// would. It is the one request recorder of the RunPod tests.
type Recorder struct {
	next http.Handler

	mu       sync.Mutex
	requests []Request
	changed  chan struct{}
	failDone map[string][]int
}

// NewRecorder wraps next.
func NewRecorder(next http.Handler) *Recorder {
	return &Recorder{next: next, changed: make(chan struct{}), failDone: map[string][]int{}}
}

// FailDone makes the next job-done posts for jobID answer these codes
// without reaching the handler.
func (rc *Recorder) FailDone(jobID string, codes ...int) {
	rc.mu.Lock()
	rc.failDone[jobID] = append(rc.failDone[jobID], codes...)
	rc.mu.Unlock()
}

// Requests returns every request so far.
func (rc *Recorder) Requests() []Request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Request(nil), rc.requests...)
}

// WaitFor waits until cond holds for the requests so far; it fails the
// test after 20 s.
func (rc *Recorder) WaitFor(t testing.TB, what string, cond func([]Request) bool) []Request {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		rc.mu.Lock()
		reqs := append([]Request(nil), rc.requests...)
		ch := rc.changed
		rc.mu.Unlock()
		if cond(reqs) {
			return reqs
		}
		select {
		case <-ch:
		case <-deadline.C:
			var b strings.Builder
			for _, r := range reqs {
				fmt.Fprintf(&b, "\n  %s %s -> %d %s", r.Method, r.URI, r.Code, r.Body)
			}
			t.Fatalf("recorder: gave up waiting for %s; requests:%s", what, b.String())
		}
	}
}

type codeWriter struct {
	http.ResponseWriter
	code int
}

func (w *codeWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *codeWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (rc *Recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	req := Request{Method: r.Method, URI: r.RequestURI, Header: r.Header.Clone(), Body: body, At: time.Now()}
	code := 0
	if req.Kind() == "job-done" {
		rc.mu.Lock()
		id := jobIDOf(req.URI)
		if codes := rc.failDone[id]; len(codes) > 0 {
			code, rc.failDone[id] = codes[0], codes[1:]
		}
		rc.mu.Unlock()
	}
	if code != 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"error":"injected"}`)
	} else {
		cw := &codeWriter{ResponseWriter: w, code: http.StatusOK}
		rc.next.ServeHTTP(cw, r)
		code = cw.code
	}
	req.Code = code
	rc.mu.Lock()
	rc.requests = append(rc.requests, req)
	close(rc.changed)
	rc.changed = make(chan struct{})
	rc.mu.Unlock()
}
