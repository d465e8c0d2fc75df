// Command tracerec records the traces of package trace from a real ComfyUI
// and writes them to internal/comfysim/testdata/traces, where the replay
// test plays them against the emulator:
//
//	go run ./internal/comfysim/tracerec -url http://127.0.0.1:8188 -commit 3cd7b32
//
// The server must have empty input/ and output/ folders (file-name counters
// start at 1) and the custom node of testdata/realcomfy/fidelity_nodes
// loaded. It is a client of ComfyUI only; nothing of ComfyUI is here.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/trace"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tracerec:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tracerec", flag.ContinueOnError)
	url := fs.String("url", "http://127.0.0.1:8188", "the ComfyUI to record")
	out := fs.String("out", "internal/comfysim/testdata/traces", "folder the traces are written to")
	commit := fs.String("commit", "", "the ComfyUI commit the server runs (required: the API does not tell)")
	only := fs.String("only", "", "comma-separated scenario names to record (default: all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *commit == "" {
		return fmt.Errorf("-commit is required")
	}
	version, err := comfyVersion(ctx, *url)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n != "" {
			want[n] = true
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	for _, sc := range trace.Scenarios() {
		if len(want) > 0 && !want[sc.Name] {
			continue
		}
		steps, err := trace.Play(ctx, *url, sc.Steps)
		if err != nil {
			return fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
		t := &trace.Trace{Scenario: sc.Name, Doc: sc.Doc, ComfyUI: trace.Source{Version: version, Commit: *commit}, Steps: steps}
		data, err := trace.Encode(t)
		if err != nil {
			return fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
		path := filepath.Join(*out, sc.Name+".json")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return err
		}
		fmt.Printf("%s: %d steps\n", path, len(steps))
	}
	return nil
}

// comfyVersion is system_stats' comfyui_version.
func comfyVersion(ctx context.Context, base string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+"/system_stats", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET /system_stats: %w", err)
	}
	defer resp.Body.Close()
	var st struct {
		System struct {
			Version string `json:"comfyui_version"`
		} `json:"system"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", fmt.Errorf("GET /system_stats: %w", err)
	}
	if st.System.Version == "" {
		return "", fmt.Errorf("GET /system_stats: no comfyui_version")
	}
	return st.System.Version, nil
}
