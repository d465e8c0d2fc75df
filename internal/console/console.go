package console

import (
	"context"
	"embed"
	"errors"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
)

//go:embed assets
var assets embed.FS

// Path is where the console's page is served.
const Path = "/console/"

// Deps are the console's collaborators.
type Deps struct {
	DB    *rdb.DB
	Queue *queue.Client
	// Core cancels and retries jobs.
	Core *lifecycle.Core
	// Blobs holds the outputs the job page shows.
	Blobs blob.Store
	// View reads the fleet view; nil reads fleet.ReadView on DB and Queue.
	View   func(ctx context.Context) (*fleet.View, error)
	Logger *zap.Logger
}

// Config tunes the console; the zero value is the default.
type Config struct {
	// FleetEvery is how often the fleet view is read while a browser
	// watches; 0 means 1 s.
	FleetEvery time.Duration
	// ClientBuffer is how many updates a browser may fall behind before
	// it is dropped; 0 means 256.
	ClientBuffer int
}

// Console serves the console. Build it with New, Start it, Stop it.
type Console struct {
	cfg  Config
	d    Deps
	log  *zap.Logger
	hub  *hub
	mu   sync.Mutex
	stop func()
	done chan struct{}
}

// New builds a console.
func New(cfg Config, d Deps) (*Console, error) {
	if d.DB == nil || d.Queue == nil || d.Core == nil || d.Blobs == nil {
		return nil, errors.New("console: DB, Queue, Core and Blobs are required")
	}
	if cfg.FleetEvery <= 0 {
		cfg.FleetEvery = time.Second
	}
	if cfg.ClientBuffer <= 0 {
		cfg.ClientBuffer = 256
	}
	if d.View == nil {
		db, q := d.DB, d.Queue
		d.View = func(ctx context.Context) (*fleet.View, error) { return fleet.ReadView(ctx, db, q) }
	}
	log := d.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("console")
	return &Console{cfg: cfg, d: d, log: log, hub: newHub(cfg.ClientBuffer, log)}, nil
}

// Start subscribes to every job's events and starts the fleet reader; it
// returns once both run.
func (c *Console) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return errors.New("start console: already started")
	}
	unsub, err := c.d.Queue.SubscribeAll(c.hub.event)
	if err != nil {
		return err
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.fleetLoop(lctx)
	}()
	c.done = done
	c.stop = func() {
		unsub()
		cancel()
		<-done
	}
	return nil
}

// Stop ends the subscription, the fleet reader and every event stream.
// It is idempotent and safe without Start.
func (c *Console) Stop() {
	c.CloseStreams()
	c.mu.Lock()
	stop := c.stop
	c.stop = nil
	c.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// CloseStreams ends every browser's event stream and refuses new ones:
// for an HTTP server's shutdown, which would otherwise wait for them.
func (c *Console) CloseStreams() { c.hub.close() }

// fleetLoop reads the fleet view every FleetEvery, or at once when asked,
// while a browser watches, and sends it when it changed.
func (c *Console) fleetLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.FleetEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.hub.nudged:
		}
		if c.hub.watchers() == 0 {
			continue
		}
		c.sendFleet(ctx)
	}
}

// sendFleet reads the fleet view and sends it to every browser when it
// changed since the last one sent.
func (c *Console) sendFleet(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	v, err := c.d.View(rctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("read fleet view", zap.Error(err))
		}
		return
	}
	c.hub.fleet(v)
}

// Route is one route of the console. Public routes (the page and its
// assets, which hold no data) are served without a key; the others must
// be put behind the admin keys.
type Route struct {
	Pattern string
	Handler http.Handler
	Public  bool
}

// Routes are the console's page, assets and API.
func (c *Console) Routes() []Route {
	static := func(fixed string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name := fixed
			if name == "" {
				name = r.PathValue("name")
			}
			if _, err := fs.Stat(assets, "assets/"+name); err != nil || !fs.ValidPath(name) {
				http.NotFound(w, r)
				return
			}
			securePage(w)
			http.ServeFileFS(w, r, assets, "assets/"+name)
		})
	}
	return append([]Route{
		{Pattern: "GET /console/{$}", Handler: static("index.html"), Public: true},
		{Pattern: "GET /console/assets/{name}", Handler: static(""), Public: true},
		{Pattern: "GET /console", Handler: http.RedirectHandler(Path, http.StatusMovedPermanently), Public: true},
	}, c.apiRoutes()...)
}

// securePage sets the headers of the page and its assets: the page runs
// its own script and style only, is never framed and sends no referrer.
func securePage(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: http:; media-src 'self' blob: https: http:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

// apiRoutes are the routes behind the admin keys.
func (c *Console) apiRoutes() []Route {
	return []Route{
		{Pattern: "GET /console/api/session", Handler: http.HandlerFunc(c.session)},
		{Pattern: "GET /console/api/events", Handler: http.HandlerFunc(c.events)},
		{Pattern: "GET /console/api/fleet", Handler: http.HandlerFunc(c.fleetView)},
		{Pattern: "GET /console/api/jobs", Handler: http.HandlerFunc(c.jobs)},
		{Pattern: "GET /console/api/jobs/{id}", Handler: http.HandlerFunc(c.job)},
		{Pattern: "GET /console/api/jobs/{id}/blob", Handler: http.HandlerFunc(c.blob)},
		{Pattern: "POST /console/api/jobs/{id}/cancel", Handler: http.HandlerFunc(c.cancel)},
		{Pattern: "POST /console/api/jobs/{id}/retry", Handler: http.HandlerFunc(c.retry)},
		{Pattern: "GET /console/api/batches", Handler: http.HandlerFunc(c.batches)},
		{Pattern: "POST /console/api/pause", Handler: c.pause(true)},
		{Pattern: "POST /console/api/resume", Handler: c.pause(false)},
		{Pattern: "POST /console/api/workers/{id}/drain", Handler: c.drain(true)},
		{Pattern: "POST /console/api/workers/{id}/undrain", Handler: c.drain(false)},
	}
}
