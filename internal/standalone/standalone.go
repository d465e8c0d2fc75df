// Package standalone is the worker image's standalone mode: the whole
// fleet inside one RunPod serverless worker, so that an endpoint that ran
// worker-comfyui switches to the comfyfleet image with the same
// environment and no fleet of its own. One process holds an embedded NATS
// server, an embedded Redis-protocol server, one dispatcher, one gpuworker
// on the container's ComfyUI and the runpod-adapter in serverless mode
// (it takes the endpoint's jobs from RunPod), with the endpoint API on
// loopback beside it.
//
// It is the dev stack (package devstack) with other defaults: one worker
// on COMFYUI_URL instead of emulators, the embedded Redis server (the
// image has no redis-server), a random NATS port, its data under
// /tmp/comfyfleet, and the worker named WORKER_ID exactly. Every role
// setting applies as in the binaries. Its state lives as long as the
// container: RunPod's queue is the durable one.
package standalone

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// DefaultDir is where the stack keeps its data unless COMFYFLEET_DIR says
// otherwise: the container's own disk, never a network volume that other
// workers share.
const DefaultDir = "/tmp/comfyfleet"

// Config configures standalone mode: the stack's settings, of which
// Finish fixes those standalone decides itself.
type Config struct {
	Stack devstack.Config

	comfyUIURL string
	natsURL    string
}

// Bind binds standalone's own settings, then every setting of the roles
// under their binaries' names. Standalone's bindings come first, so that
// their defaults are the ones in force and in the help.
func (c *Config) Bind(fs *flagenv.Set) {
	fs.String(&c.Stack.Listen, "listen", "LISTEN_ADDR", "127.0.0.1:8000", "address of the RunPod-compatible API and the dispatcher's /fleet, /dlq and /metrics inside the container (loopback: nothing outside reaches it)")
	fs.String(&c.comfyUIURL, "comfyui-url", "COMFYUI_URL", "http://127.0.0.1:8188", "the container's ComfyUI, which the one worker drives")
	fs.String(&c.Stack.Dir, "dir", "COMFYFLEET_DIR", DefaultDir, "folder for the embedded NATS and Redis data and stack.json; the container's own disk, one stack per folder")
	fs.String(&c.Stack.RedisServer, "redis-server", "COMFYFLEET_REDIS_SERVER", "-", "redis-server binary to run under --dir (empty: look it up on PATH; -: never, use the embedded server)")
	fs.String(&c.Stack.RedisURL, "redis-url", "REDIS_URL", "", "use this Redis server instead of the embedded one")
	fs.String(&c.natsURL, "nats-url", "NATS_URL", "", "must be empty: standalone embeds its own NATS (with NATS_URL set the worker image joins that fleet instead)")
	c.Stack.Common.Bind(fs)
	c.Stack.Adapter.Bind(fs)
	c.Stack.Dispatcher.Bind(fs)
	c.Stack.Worker.Bind(fs)
}

// Finish fixes the stack's shape (one worker on COMFYUI_URL, a random
// NATS port) and checks every setting, naming the one at fault.
func (c *Config) Finish() (setting string, err error) {
	if c.natsURL != "" {
		return "NATS_URL", errors.New("set, but standalone mode runs its own NATS: unset it, or run the worker image's joined mode (`comfyfleet-entrypoint worker` with NATS_URL), which joins that fleet")
	}
	if c.comfyUIURL == "" {
		return "COMFYUI_URL", errors.New("empty: standalone runs its one worker on the container's ComfyUI")
	}
	if c.Stack.Dir == "" {
		return "COMFYFLEET_DIR", errors.New("empty")
	}
	c.Stack.ComfyUIURLs = []string{c.comfyUIURL}
	c.Stack.Workers = 1
	c.Stack.NATSPort = -1
	c.Stack.NATSURL = ""
	c.Stack.ExactWorkerID = true
	if c.Stack.Worker.Worker.ID == "" {
		host, _ := os.Hostname()
		c.Stack.Worker.Worker.ID = proto.HostWorkerID(host)
	}
	if setting, err := c.Stack.Finish(); err != nil {
		return setting, err
	}
	// The RunPod job in hand is the gpuworker's job in hand: on SIGTERM it
	// gets SHUTDOWN_GRACE, as the worker's drain does, and no fixed 30 s.
	c.Stack.Adapter.Serverless.Grace = c.Stack.Worker.Worker.Grace
	// The dev stack checks its workers' URLs when it starts them; this
	// one names the setting now.
	comfy := c.Stack.Worker.Comfy
	comfy.BaseURL = c.comfyUIURL
	if err := comfy.Validate(); err != nil {
		return "COMFYUI_URL", err
	}
	return "", nil
}

// startTimeout bounds the start: the servers, the streams and the roles.
// ComfyUI already answers (the entrypoint waits for it).
const startTimeout = time.Minute

// Run brings the stack up and keeps it until ctx ends (SIGTERM: drain) or
// the stack ends by itself: after a job with REFRESH_WORKER, when the
// RunPod worker has asked RunPod for a fresh worker (nil), or when the
// API's listener fails (an error). It then stops the stack in devstack's
// order: the RunPod worker stops taking jobs and lets held ones finish,
// the gpuworker drains, then the dispatcher and the servers.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	cfg.Stack.Logger = log
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	stack, err := devstack.Start(startCtx, cfg.Stack)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("standalone: %s", flagenv.Explain(err))
	}
	serverless := cfg.Stack.Adapter.ServerlessMode()
	log.Info("comfyfleet standalone is up",
		zap.Bool("runpod_serverless", serverless), zap.String("api", stack.Info.APIURL),
		zap.String("nats", stack.Info.NATSURL), zap.String("redis", stack.Info.Redis),
		zap.Strings("comfyui", stack.Info.ComfyUIURLs), zap.String("dir", cfg.Stack.Dir))
	if !serverless {
		log.Info("RUNPOD_WEBHOOK_GET_JOB is unset: no RunPod jobs are taken; jobs come through the API only")
	}
	var ended error
	select {
	case <-ctx.Done():
		log.Info("draining")
	case <-stack.Done():
		if serverless && cfg.Stack.Adapter.Serverless.RefreshWorker {
			log.Info("refresh_worker: the job is reported, stopping so that RunPod starts a fresh worker")
		} else {
			ended = errors.New("standalone: the endpoint API stopped serving")
		}
	}
	stack.Stop()
	return ended
}
