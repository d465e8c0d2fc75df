package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
	"github.com/comfyfleet/comfyfleet/internal/bench"
)

// TestBenchRuns: the command runs a scenario on a stack of its own (its
// embedded Redis) and writes the figures where asked.
func TestBenchRuns(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "figures.json")
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"bench", "overhead", "--pairs", "2", "--size", "16", "--json", path, "--dir", t.TempDir()}, &stdout, &stderr)
	require.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	require.Contains(t, stdout.String(), "difference per pair")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var rep bench.Report
	require.NoError(t, json.Unmarshal(data, &rep))
	require.NotNil(t, rep.Overhead)
	require.Equal(t, 2, rep.Overhead.Stack.N)
	require.Equal(t, 16, rep.Settings.Size)
}

// TestBenchConfigurationDoc: docs/configuration.md lists every setting of
// `comfyfleet bench`.
func TestBenchConfigurationDoc(t *testing.T) {
	t.Parallel()
	var c bench.Config
	var logLevel string
	configdoc.Require(t, "../../docs/configuration.md", "comfyfleet bench", benchSettings(&c, &logLevel).Settings())
}
