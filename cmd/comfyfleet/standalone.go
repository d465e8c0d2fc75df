package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/standalone"
)

// standaloneMode runs the worker image's standalone mode until ctx ends
// (SIGTERM: drain); a second signal exits at once, as the gpuworker's does.
func standaloneMode(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg standalone.Config
	fs := standaloneSettings(&cfg)
	fs.SetOutput(stdout, stderr)
	if err := fs.Parse(args, nil); err != nil {
		if errors.Is(err, flagenv.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "comfyfleet standalone: %v\n", err)
		return exitUsage
	}
	if setting, err := cfg.Finish(); err != nil {
		fmt.Fprintf(stderr, "comfyfleet standalone: %s: %v\n", setting, err)
		return exitUsage
	}
	log, _ := cfg.Stack.Common.Logger()
	defer log.Sync()

	// The first signal ends ctx (main's signal context): the stack drains.
	// The second exits at once. Both are counted here, registered before
	// the stack starts, so a second signal cannot slip past.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	drained := make(chan struct{})
	defer close(drained)
	go func() {
		for n := 1; ; n++ {
			select {
			case <-sigs:
				if n >= 2 {
					log.Warn("second signal, exiting now")
					_ = log.Sync()
					os.Exit(1)
				}
			case <-drained:
				return
			}
		}
	}()
	if err := standalone.Run(ctx, cfg, log); err != nil {
		fmt.Fprintf(stderr, "comfyfleet standalone: %v\n", err)
		return 1
	}
	return exitOK
}

// standaloneSettings binds the settings of `comfyfleet standalone`: its
// own, then every setting of the dispatcher, the gpuworker and the
// runpod-adapter under their binaries' names.
func standaloneSettings(cfg *standalone.Config) *flagenv.Set {
	fs := flagenv.New("comfyfleet standalone", "comfyfleet standalone is the worker image's standalone mode: the whole fleet in one\n"+
		"RunPod serverless worker, a drop-in for worker-comfyui. It runs an embedded NATS server and\n"+
		"Redis-protocol server, one dispatcher, one GPU worker on the container's ComfyUI and, when\n"+
		"RUNPOD_WEBHOOK_GET_JOB is set, the RunPod worker that takes the endpoint's jobs; the\n"+
		"RunPod-compatible API listens on loopback. Every setting of the dispatcher, gpuworker and\n"+
		"runpod-adapter binaries applies too (docs/configuration.md). SIGTERM drains it.")
	cfg.Bind(fs)
	return fs
}
