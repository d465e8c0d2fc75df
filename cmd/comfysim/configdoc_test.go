package main

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

// TestConfigurationDoc: docs/configuration.md lists every setting of the
// emulator with its flag, variable and default; a setting added, renamed
// or given another default without its documentation fails here.
func TestConfigurationDoc(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	var all []flagenv.Setting
	for _, s := range settings {
		all = append(all, flagenv.Setting{Flag: s.flag, Env: s.env, Default: s.def, Usage: s.usage})
	}
	if problems := configdoc.Check(doc, "comfysim", all); len(problems) > 0 {
		t.Fatalf("docs/configuration.md is out of date:\n\n%s", strings.Join(problems, "\n\n"))
	}
}
