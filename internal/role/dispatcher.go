package role

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/console"
	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
)

// DispatcherConfig are the control plane's settings.
type DispatcherConfig struct {
	Dispatch dispatch.Config
	Webhooks dispatch.WebhookConfig
	Models   dispatch.ModelCheckConfig
	// Listen is the address of the HTTP API (fleet view, metrics, dead
	// letters); "" serves none (the dev stack mounts Routes itself).
	Listen string
	// Keys are the admin keys and allowed origins of the HTTP API.
	Keys Keys
	// Weights and Caps are TENANT_WEIGHTS and TENANT_CAPS as given;
	// Finish parses them into Dispatch.FairShare.
	Weights, Caps string

	admins *auth.Keyring // of Keys, by Finish
}

// Bind binds the dispatcher's settings.
func (c *DispatcherConfig) Bind(fs *flagenv.Set) {
	fs.String(&c.Dispatch.DefaultPool, "pool", "POOL", "default", "pool of jobs that name none")
	fs.String(&c.Listen, "listen", "LISTEN_ADDR", "", "address of the HTTP API, e.g. :8080 (fleet view: GET /fleet; Prometheus: GET /metrics; dead letters: GET /dlq, POST /dlq/{seq}/replay; web console: /console/); empty: none")
	fs.Duration(&c.Dispatch.AckWait, "intake-ack-wait", "INTAKE_ACK_WAIT", 30*time.Second, "a submission a replica took but did not admit (it died) goes to another replica after this long")
	fs.Int(&c.Dispatch.Concurrency, "intake-concurrency", "INTAKE_CONCURRENCY", dispatch.DefaultConcurrency, "submissions one replica admits at once (those of one job id one after the other, in intake order); 1: one at a time")
	fs.Duration(&c.Dispatch.Sweeper.Every, "sweep-interval", "SWEEP_INTERVAL", time.Second, "how often queued jobs past their TTL are timed out and the jobs of silent workers handed back")
	fs.Duration(&c.Dispatch.Sweeper.ExecutionGrace, "execution-grace", "EXECUTION_GRACE", 30*time.Second, "a silent worker's job this long past its execution timeout ends TIMED_OUT instead of being retried")
	fs.Duration(&c.Dispatch.Sweeper.LeaseGrace, "lease-grace", "LEASE_GRACE", 30*time.Second, "after a gap in the sweeps (Redis or every dispatcher was down), how long lease reclaims wait for the workers to renew; keep it above the workers' LEASE_TTL")
	fs.String(&c.Weights, "tenant-weights", "TENANT_WEIGHTS", "", "fair share: tenants' weights in each lane's round-robin, comma-separated tenant=n pairs (e.g. acme=3,beta=1); a tenant not named weighs 1")
	fs.String(&c.Caps, "tenant-caps", "TENANT_CAPS", "", "fair share: the most jobs of a tenant on lanes or running across the fleet, comma-separated tenant=n pairs (e.g. acme=8); a tenant not named has no cap")
	fs.Int(&c.Dispatch.FairShare.Ahead, "lane-ahead", "LANE_AHEAD", -1, "fair share: jobs a lane keeps waiting ahead of its workers before new jobs are held for their tenant's weighted turn (TENANT_WEIGHTS); -1: as many as the pool has live workers (at least 1); 0: no round-robin, jobs go onto their lane in arrival order (TENANT_CAPS still hold)")
	fs.Duration(&c.Dispatch.FairShare.Every, "fair-share-interval", "FAIR_SHARE_INTERVAL", 100*time.Millisecond, "fair share: how often a replica reads the lanes and releases held jobs (a job it holds wakes it at once)")
	fs.String(&c.Webhooks.Secret, "webhook-secret", "WEBHOOK_SECRET", "", "signs webhooks Standard Webhooks style (webhook-id, webhook-timestamp, webhook-signature); whsec_<base64> or raw; empty: unsigned")
	fs.Int(&c.Webhooks.Retries, "webhook-retries", "WEBHOOK_RETRIES", 2, "retries of a failed webhook delivery (RunPod: 2); negative: none")
	fs.Duration(&c.Webhooks.RetryDelay, "webhook-retry-delay", "WEBHOOK_RETRY_DELAY", 10*time.Second, "wait before the first webhook retry; each later one waits twice as long")
	fs.Duration(&c.Webhooks.Timeout, "webhook-timeout", "WEBHOOK_TIMEOUT", 10*time.Second, "bound of one webhook POST")
	fs.List(&c.Webhooks.Allow, "webhook-allow", "WEBHOOK_ALLOW", nil, "hosts, IPs and CIDR prefixes, each with its port (host:port, host:* for any; without a port only 80/443), webhooks may reach although the SSRF guard forbids them (loopback, private, link-local); webhooks never follow redirects")
	c.Keys.bindAdmin(fs)
	c.Keys.bindOrigins(fs)
	fs.Bool(&c.Models.Off, "no-model-check", "NO_MODEL_CHECK", false, "admit jobs even when no live worker of their pool has their models")
}

// Finish checks the settings, naming the one at fault.
func (c *DispatcherConfig) Finish() (setting string, err error) {
	for _, t := range []struct {
		setting, value string
		into           *map[string]int
	}{{"TENANT_WEIGHTS", c.Weights, &c.Dispatch.FairShare.Weights}, {"TENANT_CAPS", c.Caps, &c.Dispatch.FairShare.Caps}} {
		m, err := lifecycle.ParseTenantNumbers(t.value)
		if err != nil {
			return t.setting, err
		}
		*t.into = m
	}
	if err := c.Dispatch.FairShare.Validate(); err != nil {
		return "TENANT_WEIGHTS, TENANT_CAPS, LANE_AHEAD or FAIR_SHARE_INTERVAL", err
	}
	if err := c.Dispatch.Validate(); err != nil {
		return "POOL, INTAKE_ACK_WAIT, INTAKE_CONCURRENCY or SWEEP_*", err
	}
	if err := c.Webhooks.Validate(); err != nil {
		return "WEBHOOK_SECRET, WEBHOOK_ALLOW or WEBHOOK_*", err
	}
	rings, setting, err := c.Keys.finish(auth.Admin)
	if err != nil {
		return setting, err
	}
	c.admins = rings.Admin
	// Its routes replay dead letters with the settings they were sent
	// with: never without a key where other hosts reach them.
	if err := exposedWithoutAdmin(c.Listen, c.admins, "the HTTP API (fleet, dead letters, metrics)"); err != nil {
		return "ADMIN_KEYS", err
	}
	return "", nil
}

// Dispatcher is the control plane's process: admission and sweeps, webhook
// delivery, and its HTTP routes.
type Dispatcher struct {
	cfg     DispatcherConfig
	disp    *dispatch.Dispatcher
	hooks   *dispatch.Webhooks
	console *console.Console
	srv     *dispatch.HTTPServer
	routes  []dispatch.Route
	log     *zap.Logger
}

// NewDispatcher builds the control plane on b; its metrics go to reg.
func NewDispatcher(cfg DispatcherConfig, b *backend.Backend, reg *metrics.Registry, log *zap.Logger) (*Dispatcher, error) {
	view := func(ctx context.Context) (*fleet.View, error) { return fleet.ReadView(ctx, b.DB, b.Queue) }
	m := dispatch.NewMetrics(reg, view)
	adm := dispatch.Admission{Metrics: m}
	if !cfg.Models.Off {
		adm.Models = dispatch.NewModelCheck(cfg.Models, b.DB)
	}
	disp, err := dispatch.New(cfg.Dispatch, b.Queue, b.Core, adm, log)
	if err != nil {
		return nil, err
	}
	hooks, err := dispatch.NewWebhooks(cfg.Webhooks, dispatch.WebhookDeps{Queue: b.Queue, DB: b.DB, Blobs: b.Blobs, Metrics: m}, log)
	if err != nil {
		return nil, err
	}
	con, err := console.New(console.Config{}, console.Deps{DB: b.DB, Queue: b.Queue, Core: b.Core, Blobs: b.Blobs, View: view, Logger: log})
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{cfg: cfg, disp: disp, hooks: hooks, console: con, log: log}
	d.routes = append(d.routes, dispatch.DeadLetterRoutes(b.Queue, b.Core, log)...)
	d.routes = append(d.routes, dispatch.FleetRoutes(view, reg, log)...)
	for _, r := range con.Routes() {
		d.routes = append(d.routes, dispatch.Route{Pattern: r.Pattern, Handler: r.Handler, Public: r.Public})
	}
	if cfg.Listen != "" {
		g, _, err := cfg.Keys.guard(cfg.admins)
		if err != nil {
			return nil, err
		}
		d.srv = dispatch.NewHTTPServer(cfg.Listen, adminRoutes(g, d.routes), log)
		d.srv.OnShutdown(con.CloseStreams)
	}
	return d, nil
}

// CloseStreams ends the console's event streams, for the shutdown of a
// server of the caller's that serves Routes: it would wait for them.
func (d *Dispatcher) CloseStreams() { d.console.CloseStreams() }

// Routes are the control plane's HTTP routes, for a server of the
// caller's when Listen is empty; that server must put them behind its
// admin keys (AdapterOptions.Routes does).
func (d *Dispatcher) Routes() []dispatch.Route { return d.routes }

// Addr is the HTTP API's address once started, "" without one.
func (d *Dispatcher) Addr() string {
	if d.srv == nil {
		return ""
	}
	return d.srv.Addr()
}

// Core exposes the dispatcher for tests that sweep by hand.
func (d *Dispatcher) Core() *dispatch.Dispatcher { return d.disp }

// Start starts webhook delivery, then admission and the sweeper, then the
// HTTP API. Webhooks start first, so their durable consumer exists before
// the first job can end.
func (d *Dispatcher) Start(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := d.hooks.Start(sctx); err != nil {
		return err
	}
	if err := d.disp.Start(sctx); err != nil {
		d.hooks.Stop()
		return err
	}
	if err := d.console.Start(sctx); err != nil {
		d.disp.Stop()
		d.hooks.Stop()
		return err
	}
	if d.srv != nil {
		if err := d.srv.Start(); err != nil {
			d.console.Stop()
			d.disp.Stop()
			d.hooks.Stop()
			return fmt.Errorf("LISTEN_ADDR: %w", err)
		}
	}
	d.log.Info("dispatcher running", zap.String("listen", d.cfg.Listen))
	return nil
}

// Stop shuts down in order: the HTTP API first (no new replays; the
// console's event streams end), then the console, admission and the
// sweeper, then webhook delivery (deliveries in flight are handed to
// another replica).
func (d *Dispatcher) Stop() {
	if d.srv != nil {
		d.srv.Stop()
	}
	d.console.Stop()
	d.disp.Stop()
	d.hooks.Stop()
}
