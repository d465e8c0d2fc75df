package testenv

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// CountingServer is a real HTTP server on a loopback port that records
// every connection it accepts, for tests that prove a guard made none.
type CountingServer struct {
	*httptest.Server
	ln *countingListener
}

// StartCountingServer serves h on 127.0.0.1 until the test ends.
func StartCountingServer(t testing.TB, h http.Handler) *CountingServer {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	ln := &countingListener{Listener: srv.Listener, probes: map[string]bool{}, changed: make(chan struct{})}
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return &CountingServer{Server: srv, ln: ln}
}

// Port is the server's port.
func (s *CountingServer) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// HostPort is "127.0.0.1:<port>".
func (s *CountingServer) HostPort() string { return "127.0.0.1:" + strconv.Itoa(s.Port()) }

// Connections is how many connections the server accepted so far, others
// than its own probes. To count those still in the listen queue too it
// connects once itself and waits until that connection is accepted: the
// queue is first in, first out, so every connection made before the probe
// has been accepted by then.
func (s *CountingServer) Connections(t testing.TB) int {
	t.Helper()
	c, err := net.Dial("tcp", s.ln.Addr().String())
	if err != nil {
		t.Fatalf("probe the counting server: %v", err)
	}
	defer c.Close()
	probe := c.LocalAddr().String()
	timeout := time.After(10 * time.Second)
	for {
		s.ln.mu.Lock()
		changed, n, seen := s.ln.changed, 0, false
		for _, r := range s.ln.remotes {
			if r == probe {
				seen = true
				s.ln.probes[r] = true
			}
		}
		for _, r := range s.ln.remotes {
			if !s.ln.probes[r] {
				n++
			}
		}
		s.ln.mu.Unlock()
		if seen {
			return n
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("the counting server did not accept its probe within 10s")
		}
	}
}

type countingListener struct {
	net.Listener
	mu      sync.Mutex
	remotes []string        // of every accepted connection
	probes  map[string]bool // the remotes of Connections' probes
	changed chan struct{}   // closed and replaced at every accept
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.remotes = append(l.remotes, c.RemoteAddr().String())
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
	return c, err
}
