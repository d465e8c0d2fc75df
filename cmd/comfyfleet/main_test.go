package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/role"
	"github.com/comfyfleet/comfyfleet/internal/standalone"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	s3Server.Stop()
	if code == 0 {
		// The tests that write to the object store in process meet the
		// nats.go bug testenv.LeakOptions names.
		if err := goleak.Find(testenv.LeakOptions()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// roleSettings are the settings of the binaries dev embeds, bound as
// their cmd packages bind them, by the name of their table.
func roleSettings() map[string][]flagenv.Setting {
	bind := func(name string, b func(*flagenv.Set)) []flagenv.Setting {
		var c role.Common
		fs := flagenv.New(name, "")
		c.Bind(fs)
		b(fs)
		return fs.Settings()
	}
	var d role.DispatcherConfig
	var w role.WorkerConfig
	var a role.AdapterConfig
	return map[string][]flagenv.Setting{
		"dispatcher":     bind("dispatcher", d.Bind),
		"gpuworker":      bind("gpuworker", w.Bind),
		"runpod-adapter": bind("runpod-adapter", a.Bind),
	}
}

// TestConfigurationDoc: docs/configuration.md documents every setting of
// `comfyfleet dev`: its own ones (and the ones it gives a meaning of its
// own: the listener, the ComfyUI URLs, the servers to use instead of
// embedding) in its table, with flag, variable and default; every other
// one is a setting of the dispatcher, gpuworker or runpod-adapter, bound
// the same way, and so documented by that binary's table. A setting
// added, renamed or given another default without its documentation fails
// here.
func TestConfigurationDoc(t *testing.T) {
	t.Parallel()
	var cfg devstack.Config
	requireSettingsDocumented(t, "comfyfleet dev", devSettings(&cfg))
}

// TestStandaloneConfigurationDoc: the same for `comfyfleet standalone`,
// whose own settings (and the ones it gives other defaults) are in its
// table.
func TestStandaloneConfigurationDoc(t *testing.T) {
	t.Parallel()
	var cfg standalone.Config
	requireSettingsDocumented(t, "comfyfleet standalone", standaloneSettings(&cfg))
}

// requireSettingsDocumented checks that each of fs's settings is a role's,
// in that role's table, or in the table of command name.
func requireSettingsDocumented(t *testing.T, name string, fs *flagenv.Set) {
	t.Helper()
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	tables, err := configdoc.Tables(doc)
	require.NoError(t, err)
	roles := roleSettings()
	var own []flagenv.Setting
	for _, s := range fs.Settings() {
		var in []string
		for role, settings := range roles {
			for _, r := range settings {
				if r == s {
					in = append(in, role)
				}
			}
		}
		if len(in) == 0 {
			own = append(own, s)
			continue
		}
		for _, role := range in {
			documented := false
			for _, row := range tables[role] {
				documented = documented || row.Flag == s.Flag && row.Env == s.Env
			}
			require.True(t, documented, "%s: --%s (%s) is not in the %s table", name, s.Flag, s.Env, role)
		}
	}
	if problems := configdoc.Check(doc, name, own); len(problems) > 0 {
		t.Fatalf("docs/configuration.md is out of date:\n\n%s", strings.Join(problems, "\n\n"))
	}
}
