// Package modeltest is a model file server on loopback for tests of the
// model cache and of the worker: it serves files with ETag and Range
// (http.ServeContent), counts every request and full download per path,
// answers 404 for files it does not have, can cut a response after a
// given number of bytes (a killed download) and can hold responses until
// released (to line concurrent fetches up on one download).
package modeltest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a model file server.
type Server struct {
	*httptest.Server

	mu       sync.Mutex
	files    map[string][]byte
	gets     map[string]int // requests per path
	ranges   map[string]int // requests with a Range header per path
	cutAfter map[string]int64
	stall    map[string]int64
	hold     chan struct{} // nil: answer at once
	headers  []http.Header // request headers, in order
	redirect map[string]string
}

// New starts a server on 127.0.0.1, closed at the test's end.
func New(t testing.TB) *Server {
	s := &Server{files: map[string][]byte{}, gets: map[string]int{}, ranges: map[string]int{}, cutAfter: map[string]int64{},
		stall: map[string]int64{}, redirect: map[string]string{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// File returns n bytes that depend on seed: a model file's stand-in.
func File(seed string, n int) []byte {
	out := make([]byte, 0, n+32)
	for i := 0; len(out) < n; i++ {
		h := sha256.Sum256([]byte(fmt.Sprintf("%s-%d", seed, i)))
		out = append(out, h[:]...)
	}
	return out[:n]
}

// SHA256 is the hex digest of data.
func SHA256(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// Put serves data at p ("/lora.safetensors") and returns its URL.
func (s *Server) Put(p string, data []byte) string {
	s.mu.Lock()
	s.files[p] = data
	s.mu.Unlock()
	return s.URL + p
}

// Redirect answers p with a 302 to the URL to.
func (s *Server) Redirect(p, to string) string {
	s.mu.Lock()
	s.redirect[p] = to
	s.mu.Unlock()
	return s.URL + p
}

// CutAfter makes the next response for p end (the connection closed)
// after n bytes of its body.
func (s *Server) CutAfter(p string, n int64) {
	s.mu.Lock()
	s.cutAfter[p] = n
	s.mu.Unlock()
}

// StallAfter makes the next response for p stop after n bytes of its
// body and wait, the connection open, until the client goes away.
func (s *Server) StallAfter(p string, n int64) {
	s.mu.Lock()
	s.stall[p] = n
	s.mu.Unlock()
}

// Hold makes responses wait until the returned func is called.
func (s *Server) Hold() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.hold = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.hold = nil
			s.mu.Unlock()
			close(ch)
		})
	}
}

// Gets is how many requests p had.
func (s *Server) Gets(p string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[p]
}

// Ranges is how many requests for p asked for a range (resumed).
func (s *Server) Ranges(p string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ranges[p]
}

// Headers are the headers of every request so far.
func (s *Server) Headers() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.headers...)
}

// Hostport is the server's "127.0.0.1:port", for allow lists.
func (s *Server) Hostport() string { return strings.TrimPrefix(s.URL, "http://") }

var modTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	p := r.URL.Path
	s.gets[p]++
	if r.Header.Get("Range") != "" {
		s.ranges[p]++
	}
	s.headers = append(s.headers, r.Header.Clone())
	data, ok := s.files[p]
	cut, doCut := s.cutAfter[p]
	delete(s.cutAfter, p)
	stall, doStall := s.stall[p]
	delete(s.stall, p)
	hold := s.hold
	to, redirect := s.redirect[p]
	s.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	if redirect {
		http.Redirect(w, r, to, http.StatusFound)
		return
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", `"`+SHA256(data)[:16]+`"`)
	if doStall {
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.Header().Set("Last-Modified", modTime.Format(http.TimeFormat))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(data[:min(stall, int64(len(data)))])
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		<-r.Context().Done()
		return
	}
	if !doCut {
		http.ServeContent(w, r, p, modTime, bytes.NewReader(data))
		return
	}
	// Send the headers and n bytes, then drop the connection.
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	w.Header().Set("Last-Modified", modTime.Format(http.TimeFormat))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data[:min(cut, int64(len(data)))])
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = conn.Close()
		}
	}
}
