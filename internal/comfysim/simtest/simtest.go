package simtest

import (
	"net/http/httptest"
	"testing"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

// Sim is a running emulator: URL is its base URL (http://127.0.0.1:port,
// no trailing slash) and the embedded Server gives the fault-injection API.
type Sim struct {
	URL string
	*comfysim.Server
	// ControlURL is the base URL of the fault-injection HTTP API.
	ControlURL string
}

// Start runs a fresh emulator on a random loopback port for the test and
// closes it at cleanup. A zero cfg.Dir uses a fresh temporary directory.
func Start(t testing.TB, cfg comfysim.Config) *Sim {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	srv, err := comfysim.New(cfg)
	if err != nil {
		t.Fatalf("simtest: start emulator: %v", err)
	}
	api := httptest.NewServer(srv.Handler())
	ctl := httptest.NewServer(srv.ControlHandler())
	t.Cleanup(func() {
		// Close the emulator first: it closes its WebSockets, which
		// httptest.Server.Close does not track once hijacked.
		_ = srv.Close()
		api.Close()
		ctl.Close()
	})
	return &Sim{URL: api.URL, Server: srv, ControlURL: ctl.URL}
}
