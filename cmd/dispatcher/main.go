// Command dispatcher is comfyfleet's control plane: it admits submissions
// from the intake stream, records them, and routes them to their pool and
// lane. Run two or more; they share the intake consumer.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/logging"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
)

type config struct {
	backend  backend.Config
	dispatch dispatch.Config
	listen   string
	webhooks dispatch.WebhookConfig
	models   dispatch.ModelCheckConfig
	logLevel string
}

func main() {
	var cfg config
	fs := settings(&cfg)
	fs.ParseOrExit(os.Args[1:])
	if err := cfg.dispatch.Validate(); err != nil {
		fs.Exit("POOL", err)
	}
	if err := cfg.webhooks.Validate(); err != nil {
		fs.Exit("WEBHOOK_SECRET, WEBHOOK_ALLOW or WEBHOOK_*", err)
	}
	log, err := logging.New(cfg.logLevel)
	if err != nil {
		fs.Exit("LOG_LEVEL", err)
	}
	defer log.Sync()
	cfg.backend.Name, cfg.backend.Logger = "dispatcher", log

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("dispatcher failed", zap.Error(err))
		os.Exit(1)
	}
}

// run starts the dispatcher and stops it when ctx ends.
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, err := backend.Open(startCtx, cfg.backend)
	if err != nil {
		return err
	}
	defer b.Close()
	d, err := dispatch.New(cfg.dispatch, b.Queue, b.Status, log)
	if err != nil {
		return err
	}
	view := func(ctx context.Context) (*fleet.View, error) {
		return fleet.ReadView(ctx, fleet.Sources{Workers: b.Fleet, JetStream: b.Queue.JetStream(), Counts: b.Status.Counts})
	}
	reg := metrics.NewRegistry()
	m := dispatch.NewMetrics(reg, view)
	targets := dispatch.NewWebhookTargets(b.Redis, cfg.backend.KeyPrefix, cfg.webhooks.TargetTTL)
	adm := dispatch.Admission{Webhooks: targets, Metrics: m}
	if !cfg.models.Off {
		adm.Models = dispatch.NewModelCheck(cfg.models, b.Fleet, b.Status)
	}
	d.SetAdmission(adm)
	hooks, err := dispatch.NewWebhooks(cfg.webhooks, dispatch.WebhookDeps{
		JetStream: b.Queue.JetStream(), Targets: targets, Records: b.Status, Blobs: b.Blobs, Metrics: m,
	}, log)
	if err != nil {
		return err
	}
	// Webhooks start before admission, so their durable consumer exists
	// before the first job can end.
	if err := hooks.Start(startCtx); err != nil {
		return err
	}
	defer hooks.Stop()
	if err := d.Start(startCtx); err != nil {
		return err
	}
	// Shutdown order: the HTTP API first (no new replays), then the
	// admission loop and the sweeper.
	var routes []dispatch.Route
	routes = append(routes, dispatch.NewDeadLetters(b.Queue, b.Status).Routes()...)
	routes = append(routes, dispatch.FleetRoutes(view, reg, log)...)
	srv := dispatch.NewHTTPServer(cfg.listen, routes, log)
	if cfg.listen != "" {
		if err := srv.Start(); err != nil {
			d.Stop()
			return err
		}
	}
	log.Info("dispatcher running")
	<-ctx.Done()
	srv.Stop()
	d.Stop()
	return nil
}

// settings binds every setting of the binary to a flag and a variable.
func settings(cfg *config) *flagenv.Set {
	fs := flagenv.New("dispatcher", "dispatcher admits comfyfleet jobs from NATS (CF_SUBMIT), records them in Redis and routes\nthem to their pool and lane (CF_JOBS). Run two or more replicas.")
	fs.String(&cfg.backend.NATSURL, "nats-url", "NATS_URL", backend.DefaultNATSURL, "NATS server")
	fs.String(&cfg.backend.RedisURL, "redis-url", "REDIS_URL", backend.DefaultRedisURL, "Redis server")
	fs.String(&cfg.dispatch.DefaultPool, "pool", "POOL", "default", "pool of jobs that name none")
	fs.String(&cfg.listen, "listen", "LISTEN_ADDR", "", "address of the HTTP API, e.g. :8080 (fleet view: GET /fleet; Prometheus: GET /metrics; dead letters: GET /dlq, POST /dlq/{seq}/replay); empty: none")
	fs.Duration(&cfg.dispatch.AckWait, "intake-ack-wait", "INTAKE_ACK_WAIT", 30*time.Second, "a submission a replica took but did not admit (it died) goes to another replica after this long")
	fs.Duration(&cfg.dispatch.SweepEvery, "sweep-interval", "SWEEP_INTERVAL", time.Second, "how often queued jobs past their TTL are timed out and the jobs of silent workers handed back")
	fs.Duration(&cfg.dispatch.ExecutionGrace, "execution-grace", "EXECUTION_GRACE", 30*time.Second, "a silent worker's job this long past its execution timeout ends TIMED_OUT instead of being retried")
	fs.String(&cfg.webhooks.Secret, "webhook-secret", "WEBHOOK_SECRET", "", "signs webhooks Standard Webhooks style (webhook-id, webhook-timestamp, webhook-signature); whsec_<base64> or raw; empty: unsigned")
	fs.Int(&cfg.webhooks.Retries, "webhook-retries", "WEBHOOK_RETRIES", 2, "retries of a failed webhook delivery (RunPod: 2); negative: none")
	fs.Duration(&cfg.webhooks.RetryDelay, "webhook-retry-delay", "WEBHOOK_RETRY_DELAY", 10*time.Second, "wait before the first webhook retry; each later one waits twice as long")
	fs.Duration(&cfg.webhooks.Timeout, "webhook-timeout", "WEBHOOK_TIMEOUT", 10*time.Second, "bound of one webhook POST")
	fs.List(&cfg.webhooks.Allow, "webhook-allow", "WEBHOOK_ALLOW", nil, "hosts, IPs and CIDR prefixes webhooks may reach although the SSRF guard forbids them (loopback, private, link-local)")
	fs.Bool(&cfg.models.Off, "no-model-check", "NO_MODEL_CHECK", false, "admit jobs even when no live worker of their pool has their models")
	fs.String(&cfg.logLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	return fs
}
