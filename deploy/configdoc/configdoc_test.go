package configdoc_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const doc = "# Configuration\n\n## tool\n\n<!-- settings: tool -->\n\n" +
	"| Variable | Flag | Default | Meaning |\n|---|---|---|---|\n" +
	"| `NATS_URL` | `--nats-url` | `nats://127.0.0.1:4222` | The NATS server. |\n" +
	"| `API_KEYS` | `--api-keys` | — | Keys, comma-separated; none \\| empty means open. |\n" +
	"| — | `--plain` | `x` | A flag without a variable. |\n" +
	"| `WORKER_ID` | `--worker-id` | (host name) | Worker id. |\n" +
	"\nText after the table.\n| not | part | of | it |\n"

func settings() []flagenv.Setting {
	return []flagenv.Setting{
		{Flag: "nats-url", Env: "NATS_URL", Default: "nats://127.0.0.1:4222", Usage: "NATS server"},
		{Flag: "api-keys", Env: "API_KEYS", Default: "", Usage: "keys"},
		{Flag: "plain", Env: "", Default: "x", Usage: "no variable"},
		{Flag: "worker-id", Env: "WORKER_ID", Default: "(host name)", Usage: "id"},
	}
}

func TestTables(t *testing.T) {
	t.Parallel()
	got, err := configdoc.Tables([]byte(doc))
	require.NoError(t, err)
	require.Equal(t, map[string][]configdoc.Row{"tool": {
		{Env: "NATS_URL", Flag: "nats-url", Default: "nats://127.0.0.1:4222", Meaning: "The NATS server."},
		{Env: "API_KEYS", Flag: "api-keys", Default: "", Meaning: "Keys, comma-separated; none | empty means open."},
		{Env: "", Flag: "plain", Default: "x", Meaning: "A flag without a variable."},
		{Env: "WORKER_ID", Flag: "worker-id", Default: "(host name)", Meaning: "Worker id."},
	}}, got)
}

func TestTablesErrors(t *testing.T) {
	t.Parallel()
	for name, bad := range map[string]string{
		"bad marker":   "<!-- settings: -->\n",
		"no table":     "<!-- settings: a -->\n\nprose\n",
		"twice":        "<!-- settings: a -->\n| h |\n|-|\n<!-- settings: a -->\n",
		"wrong cells":  "<!-- settings: a -->\n| V | F | D | M |\n|---|---|---|---|\n| `X` | `--x` |\n",
		"unterminated": "<!-- settings: a\n",
	} {
		_, err := configdoc.Tables([]byte(bad))
		require.Error(t, err, name)
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	require.Empty(t, configdoc.Check([]byte(doc), "tool", settings()))

	tests := []struct {
		name   string
		change func([]flagenv.Setting) []flagenv.Setting
		want   string
	}{
		{name: "setting added without docs", change: func(s []flagenv.Setting) []flagenv.Setting {
			return append(s, flagenv.Setting{Flag: "grace", Env: "SHUTDOWN_GRACE", Default: "30s", Usage: "grace period"})
		}, want: "setting --grace (SHUTDOWN_GRACE) is not documented; add the row\n| `SHUTDOWN_GRACE` | `--grace` | `30s` | grace period |"},
		{name: "setting removed", change: func(s []flagenv.Setting) []flagenv.Setting { return s[1:] },
			want: "--nats-url is documented but the code binds no such setting"},
		{name: "default changed", change: func(s []flagenv.Setting) []flagenv.Setting { s[0].Default = "nats://nats:4222"; return s },
			want: `--nats-url defaults to "nats://nats:4222" in the code, "nats://127.0.0.1:4222" in the doc`},
		{name: "variable renamed", change: func(s []flagenv.Setting) []flagenv.Setting { s[1].Env = "KEYS"; return s },
			want: "--api-keys reads KEYS in the code, API_KEYS in the doc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := configdoc.Check([]byte(doc), "tool", tt.change(settings()))
			require.Len(t, got, 1, "%q", got)
			require.Contains(t, got[0], tt.want)
		})
	}

	got := configdoc.Check([]byte(doc), "other", settings())
	require.Len(t, got, 1)
	require.Contains(t, got[0], "<!-- settings: other -->")
	require.Contains(t, got[0], "| `NATS_URL` | `--nats-url` | `nats://127.0.0.1:4222` | NATS server |")

	dup := strings.Replace(doc, "| — | `--plain`", "| `NATS_URL` | `--nats-url` | `nats://127.0.0.1:4222` | again |\n| — | `--plain`", 1)
	require.Contains(t, strings.Join(configdoc.Check([]byte(dup), "tool", settings()), "\n"), "documented twice")

	empty := strings.Replace(doc, "A flag without a variable.", "", 1)
	require.Contains(t, strings.Join(configdoc.Check([]byte(empty), "tool", settings()), "\n"), "--plain has no meaning")
}

func TestTableRoundTrips(t *testing.T) {
	t.Parallel()
	s := settings()
	s[1].Usage = "a | b"
	table := "<!-- settings: x -->\n" + configdoc.Table(s)
	require.Empty(t, configdoc.Check([]byte(table), "x", s))
}

func FuzzTables(f *testing.F) {
	f.Add(doc)
	f.Add("<!-- settings: a -->\n| V | F | D | M |\n|---|---|---|---|\n| `X` | `--x` | `` | \\| |\n")
	f.Fuzz(func(t *testing.T, s string) {
		tables, err := configdoc.Tables([]byte(s))
		if err != nil {
			return
		}
		for name, rows := range tables {
			if name == "" {
				t.Fatal("empty table name")
			}
			_ = configdoc.Check([]byte(s), name, nil)
			_ = rows
		}
	})
}
