package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

// config is the command's settings; flag beats env beats default.
type config struct {
	Listen      string
	ControlAddr string
	Dir         string
	ModelsDir   string
	Checkpoints []string
	StepDelay   time.Duration
	LoadDelay   time.Duration
	LogLevel    zapcore.Level
}

// setting is one flag with its environment variable.
type setting struct {
	flag, env, def, usage string
}

var settings = []setting{
	{"listen", "COMFYSIM_LISTEN", "127.0.0.1:8188", "address of the ComfyUI API (HTTP and WebSocket)"},
	{"control-addr", "COMFYSIM_CONTROL_ADDR", "", "address of the fault-injection API; empty = off"},
	{"dir", "COMFYSIM_DIR", "", "root folder holding input/, output/ and temp/; empty = a temporary folder removed at exit"},
	{"models-dir", "COMFYSIM_MODELS_DIR", "", "a models folder as ComfyUI's (checkpoints/, loras/, vae/, …): files that appear in it are offered too, as ComfyUI offers them once the folder changes; point a gpuworker's COMFYUI_MODELS_DIR at it to fetch models by URL; empty = none"},
	{"checkpoints", "COMFYSIM_CHECKPOINTS", strings.Join(comfysim.StackCheckpoints(), ","), "comma-separated ckpt_name options of CheckpointLoaderSimple; the other model folders hold the files of every worker image variant"},
	{"step-delay", "COMFYSIM_STEP_DELAY", comfysim.DefaultStepDelay.String(), "sleep per KSampler step (Go duration); 0 or negative = none"},
	{"model-load-delay", "COMFYSIM_MODEL_LOAD_DELAY", "0s", "time a prompt takes to load models other than the ones in VRAM, which holds one prompt's models at a time (Go duration); 0 = loads take no time"},
	{"log-level", "COMFYSIM_LOG_LEVEL", "info", "log level: debug, info, warn, error"},
}

// loadConfig parses args over the environment over the defaults. The error
// names the setting and the bad value.
func loadConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	fs := flag.NewFlagSet("comfysim", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the caller prints an error once; the help goes to out
	vals := map[string]*string{}
	for _, s := range settings {
		def := s.def
		if v := getenv(s.env); v != "" {
			def = v
		}
		vals[s.flag] = fs.String(s.flag, def, s.usage)
	}
	fs.Usage = func() {}
	usage := func() {
		fmt.Fprintf(out, "Usage: comfysim [flags]\n\nRuns a ComfyUI %s API emulator. Each flag can also be set through its environment variable;\na flag beats the environment, which beats the default.\n\nFlags:\n", comfysim.ComfyUIVersion)
		for _, s := range settings {
			fmt.Fprintf(out, "  --%s (env %s, default %q)\n      %s\n", s.flag, s.env, s.def, s.usage)
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
		}
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg := config{
		Listen:      strings.TrimSpace(*vals["listen"]),
		ControlAddr: strings.TrimSpace(*vals["control-addr"]),
		Dir:         *vals["dir"],
		ModelsDir:   *vals["models-dir"],
	}
	if cfg.Listen == "" {
		return config{}, errors.New("listen (COMFYSIM_LISTEN): must not be empty")
	}
	for _, c := range strings.Split(*vals["checkpoints"], ",") {
		if c = strings.TrimSpace(c); c != "" {
			cfg.Checkpoints = append(cfg.Checkpoints, c)
		}
	}
	if len(cfg.Checkpoints) == 0 {
		return config{}, fmt.Errorf("checkpoints (COMFYSIM_CHECKPOINTS): %q lists no checkpoint", *vals["checkpoints"])
	}
	d, err := time.ParseDuration(*vals["step-delay"])
	if err != nil {
		return config{}, fmt.Errorf("step-delay (COMFYSIM_STEP_DELAY): %q is not a duration", *vals["step-delay"])
	}
	if d == 0 {
		d = -1 // an explicit 0 means no sleep; comfysim.Config reads 0 as the default
	}
	cfg.StepDelay = d
	if cfg.LoadDelay, err = time.ParseDuration(*vals["model-load-delay"]); err != nil || cfg.LoadDelay < 0 {
		return config{}, fmt.Errorf("model-load-delay (COMFYSIM_MODEL_LOAD_DELAY): %q is not a duration of 0 or more", *vals["model-load-delay"])
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(*vals["log-level"])); err != nil {
		return config{}, fmt.Errorf("log-level (COMFYSIM_LOG_LEVEL): %q is not a level", *vals["log-level"])
	}
	return cfg, nil
}

func main() {
	cfg, err := loadConfig(os.Args[1:], os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "comfysim:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// A second signal forces the exit.
		<-ctx.Done()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
		fmt.Fprintln(os.Stderr, "comfysim: forced exit")
		os.Exit(1)
	}()
	err = run(ctx, cfg, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "comfysim:", flagenv.Explain(err))
		os.Exit(1)
	}
}

// run serves until ctx ends. ready, when not nil, receives the bound API and
// control addresses once both listen.
//
// Shutdown order: stop accepting HTTP (graceful, 5 s), close the emulator
// (executor, then WebSockets), then the control API.
func run(ctx context.Context, cfg config, ready func(api, control string)) error {
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(cfg.LogLevel)
	log, err := logCfg.Build()
	if err != nil {
		return fmt.Errorf("build logger: %w", err)
	}
	defer func() { _ = log.Sync() }()

	sim, err := comfysim.New(comfysim.Config{Dir: cfg.Dir, ModelsDir: cfg.ModelsDir, Checkpoints: cfg.Checkpoints, StepDelay: cfg.StepDelay, ModelLoadDelay: cfg.LoadDelay, Logger: log}.WithVariantModels())
	if err != nil {
		return fmt.Errorf("start emulator: %w", err)
	}
	defer func() { _ = sim.Close() }()

	apiLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	api := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- api.Serve(apiLn) }()

	var ctl *http.Server
	controlAddr := ""
	if cfg.ControlAddr != "" {
		ctlLn, err := net.Listen("tcp", cfg.ControlAddr)
		if err != nil {
			_ = api.Close()
			return fmt.Errorf("listen %s: %w", cfg.ControlAddr, err)
		}
		controlAddr = ctlLn.Addr().String()
		ctl = &http.Server{Handler: sim.ControlHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- ctl.Serve(ctlLn) }()
	}
	log.Info("comfysim listening", zap.String("api_addr", apiLn.Addr().String()), zap.String("control_addr", controlAddr),
		zap.String("root", sim.Dir()))
	if ready != nil {
		ready(apiLn.Addr().String(), controlAddr)
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	// WebSocket connections are hijacked, so Shutdown does not wait for
	// them; the emulator closes them.
	_ = api.Shutdown(shutdownCtx)
	_ = sim.Close()
	if ctl != nil {
		_ = ctl.Shutdown(shutdownCtx)
	}
	log.Info("comfysim stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	return nil
}
