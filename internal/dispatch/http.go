package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/metrics"
)

// Route is one route of the dispatcher's HTTP surface (LISTEN_ADDR). Each
// part of the control plane returns its own; cmd/dispatcher mounts them
// all on one HTTPServer:
//
//	GET /fleet    the fleet view (fleet.View) as JSON, for the CLI and the dashboard (FleetRoutes)
//	GET /metrics  Prometheus text format (FleetRoutes)
//	GET /healthz  200 "ok" while the process runs (always)
//	GET /dlq…     dead letters (DeadLetterRoutes)
//	/console/…    the web console (package console, mounted by package role)
type Route struct {
	// Pattern is an http.ServeMux pattern, e.g. "GET /dlq".
	Pattern string
	Handler http.Handler
	// Public routes are served without a key: pages and assets that hold
	// no data (the console's). Every other route is an operator route.
	Public bool
}

// FleetRoutes serves the fleet view on GET /fleet and the metrics on GET
// /metrics; either may be nil to leave its route out.
func FleetRoutes(view ViewReader, reg *metrics.Registry, log *zap.Logger) []Route {
	if log == nil {
		log = zap.NewNop()
	}
	var routes []Route
	if reg != nil {
		routes = append(routes, Route{Pattern: "GET /metrics", Handler: reg.Handler()})
	}
	if view != nil {
		routes = append(routes, Route{Pattern: "GET /fleet", Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v, err := view(r.Context())
			if err != nil {
				unavailable(w, log, "read fleet view", err)
				return
			}
			writeJSON(w, http.StatusOK, v)
		})})
	}
	return routes
}

// NewMux returns a handler that serves routes and GET /healthz.
func NewMux(routes []Route) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	for _, r := range routes {
		mux.Handle(r.Pattern, r.Handler)
	}
	return mux
}

// HTTPServer serves routes on an address. Start it, then Stop it; Stop is
// idempotent and safe without Start.
type HTTPServer struct {
	addr string
	srv  *http.Server
	log  *zap.Logger

	mu   sync.Mutex
	ln   net.Listener
	done chan struct{}
}

// NewHTTPServer builds a server of routes (plus /healthz) on addr.
func NewHTTPServer(addr string, routes []Route, log *zap.Logger) *HTTPServer {
	if log == nil {
		log = zap.NewNop()
	}
	return &HTTPServer{
		addr: addr,
		srv:  &http.Server{Handler: NewMux(routes), ReadHeaderTimeout: 10 * time.Second},
		log:  log.Named("http"),
	}
}

// Start listens and serves in the background; it returns once the
// listener is open.
func (s *HTTPServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		return errors.New("start http server: already started")
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err // "listen tcp <addr>: bind: address already in use"
	}
	s.ln, s.done = ln, make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("serve", zap.Error(err))
		}
	}()
	s.log.Info("listening", zap.String("addr", ln.Addr().String()))
	return nil
}

// OnShutdown registers fn to run when Stop begins: for handlers that
// hold a request open (event streams), which Stop would wait for.
func (s *HTTPServer) OnShutdown(fn func()) { s.srv.RegisterOnShutdown(fn) }

// Addr is the address the server listens on, "" before Start.
func (s *HTTPServer) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Stop shuts the server down, letting requests in flight finish for up to
// 5 s.
func (s *HTTPServer) Stop() {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-done
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers {"error": msg}, the shape of RunPod's errors.
// unavailable answers 503 for a failure of NATS or Redis: the log has the
// error, the answer a fixed text, as the errors of their clients name
// their addresses.
func unavailable(w http.ResponseWriter, log *zap.Logger, what string, err error) {
	log.Warn(what, zap.Error(err))
	writeError(w, http.StatusServiceUnavailable, what+": the fleet's backend is unavailable, try again")
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
