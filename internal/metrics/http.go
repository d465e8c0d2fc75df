package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Instrument counts the requests h serves, by method and status code, as
// <name>_requests_total, and their durations as <name>_request_seconds.
func Instrument(reg *Registry, name string, h http.Handler) http.Handler {
	count := reg.Counter(name+"_requests_total", "HTTP requests by method and status code.", "method", "code")
	took := reg.Histogram(name+"_request_seconds", "HTTP request durations by method.", DurationBuckets, "method")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		cw := &codeWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(cw, r)
		method := r.Method
		switch method {
		case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodHead, http.MethodOptions, http.MethodPatch:
		default:
			method = "other" // keep the label set small
		}
		count.Inc(method, strconv.Itoa(cw.code))
		took.ObserveDuration(time.Since(start), method)
	})
}

type codeWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (c *codeWriter) WriteHeader(code int) {
	if !c.wrote {
		c.code, c.wrote = code, true
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *codeWriter) Write(b []byte) (int, error) {
	c.wrote = true
	return c.ResponseWriter.Write(b)
}

// Flush lets streaming handlers (long polls, SSE) flush through.
func (c *codeWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the underlying writer.
func (c *codeWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// Server serves a registry on GET /metrics, for binaries that have no
// HTTP server of their own. Start it, then Stop it; Stop is idempotent and
// safe without Start.
type Server struct {
	srv *http.Server
	mu  sync.Mutex
	ln  net.Listener
	res chan error
}

// NewServer serves metrics (a Registry's Handler, perhaps behind a
// guard) on GET /metrics at addr.
func NewServer(addr string, metrics http.Handler) *Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	return &Server{srv: &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
}

// Start listens and serves in the background.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return errors.New("start metrics server: already started")
	}
	ln, err := net.Listen("tcp", s.srv.Addr)
	if err != nil {
		return err // "listen tcp <addr>: bind: address already in use"
	}
	s.ln, s.res = ln, make(chan error, 1)
	go func() { s.res <- s.srv.Serve(ln) }()
	return nil
}

// Addr is the address the server listens on, "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Stop shuts the server down.
func (s *Server) Stop() {
	s.mu.Lock()
	res := s.res
	s.mu.Unlock()
	if res == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-res
	s.mu.Lock()
	s.res = nil
	s.mu.Unlock()
}
