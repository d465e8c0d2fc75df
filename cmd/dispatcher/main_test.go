package main

import (
	"testing"

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
	var cfg config
	configdoc.Require(t, "../../docs/configuration.md", "dispatcher", settings(&cfg).Settings())
}
