package main

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestConfigurationDoc: docs/configuration.md lists every setting of this
// binary with its flag, variable and default; a setting added, renamed or
// given another default without its documentation fails here.
func TestConfigurationDoc(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	var cfg config
	if problems := configdoc.Check(doc, "dispatcher", settings(&cfg).Settings()); len(problems) > 0 {
		t.Fatalf("docs/configuration.md is out of date:\n\n%s", strings.Join(problems, "\n\n"))
	}
}
