package main

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
	"github.com/comfyfleet/comfyfleet/internal/devstack"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestConfigurationDoc: docs/configuration.md lists every setting of
// `comfyfleet dev` with its flag, variable and default; a setting added,
// renamed or given another default without its documentation fails here.
func TestConfigurationDoc(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	var cfg devstack.Config
	var logLevel string
	if problems := configdoc.Check(doc, "comfyfleet dev", devSettings(&cfg, &logLevel).Settings()); len(problems) > 0 {
		t.Fatalf("docs/configuration.md is out of date:\n\n%s", strings.Join(problems, "\n\n"))
	}
}
