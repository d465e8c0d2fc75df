package flagenv_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

type settings struct {
	url     string
	n       int
	on      bool
	wait    time.Duration
	delay   time.Duration
	keys    []string
	noEnv   string
	out     string
	fs      *flagenv.Set
	helpOut *bytes.Buffer
	errOut  *bytes.Buffer
}

func newSet() *settings {
	s := &settings{fs: flagenv.New("tool", "tool does things."), helpOut: &bytes.Buffer{}, errOut: &bytes.Buffer{}}
	s.fs.SetOutput(s.helpOut, s.errOut)
	s.fs.String(&s.url, "nats-url", "NATS_URL", "nats://127.0.0.1:4222", "NATS server")
	s.fs.Int(&s.n, "workers", "WORKERS", 2, "how many")
	s.fs.Bool(&s.on, "refresh", "REFRESH_WORKER", false, "free after each job")
	s.fs.Duration(&s.wait, "grace", "GRACE", 30*time.Second, "grace period")
	s.fs.Seconds(&s.delay, "reconnect-delay", "WEBSOCKET_RECONNECT_DELAY_S", 3*time.Second, "delay")
	s.fs.List(&s.keys, "api-keys", "API_KEYS", nil, "keys")
	s.fs.String(&s.noEnv, "plain", "", "x", "no variable")
	s.fs.String(&s.out, "out", "", "", "results folder (default: ./<batch id>)")
	return s
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestPrecedence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, s *settings)
	}{
		{name: "defaults", check: func(t *testing.T, s *settings) {
			require.Equal(t, "nats://127.0.0.1:4222", s.url)
			require.Equal(t, 2, s.n)
			require.False(t, s.on)
			require.Equal(t, 3*time.Second, s.delay)
			require.Nil(t, s.keys)
		}},
		{name: "env beats default", env: map[string]string{"NATS_URL": "nats://x:1", "WORKERS": "5", "REFRESH_WORKER": "TRUE", "WEBSOCKET_RECONNECT_DELAY_S": "0.5", "API_KEYS": "a, b"},
			check: func(t *testing.T, s *settings) {
				require.Equal(t, "nats://x:1", s.url)
				require.Equal(t, 5, s.n)
				require.True(t, s.on)
				require.Equal(t, 500*time.Millisecond, s.delay)
				require.Equal(t, []string{"a", "b"}, s.keys)
			}},
		{name: "flag beats env", args: []string{"--nats-url", "nats://flag:2", "--api-keys", "k1", "--api-keys", "k2"}, env: map[string]string{"NATS_URL": "nats://env:1", "API_KEYS": "e"},
			check: func(t *testing.T, s *settings) {
				require.Equal(t, "nats://flag:2", s.url)
				require.Equal(t, []string{"k1", "k2"}, s.keys)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSet()
			require.NoError(t, s.fs.Parse(tt.args, env(tt.env)))
			tt.check(t, s)
		})
	}
}

func TestBadValuesNameTheSetting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{name: "env int", env: map[string]string{"WORKERS": "many"}, wantErr: `setting WORKERS (--workers): invalid value "many"`},
		{name: "env seconds", env: map[string]string{"WEBSOCKET_RECONNECT_DELAY_S": "3s"}, wantErr: "WEBSOCKET_RECONNECT_DELAY_S (--reconnect-delay)"},
		{name: "env bool", env: map[string]string{"REFRESH_WORKER": "yes"}, wantErr: "want true or false"},
		{name: "flag", args: []string{"--grace", "soon"}, wantErr: `invalid value "soon" for flag -grace: want a duration such as 30s or 1m30s (see --help)`},
		{name: "unknown flag", args: []string{"--gracee", "1s"}, wantErr: "flag provided but not defined: -gracee (see --help)"},
		{name: "missing value", args: []string{"--grace"}, wantErr: "flag needs an argument: -grace (see --help)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSet()
			err := s.fs.Parse(tt.args, env(tt.env))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			require.NotContains(t, err.Error(), "\n", "one line")
			require.Empty(t, s.helpOut.String(), "no help after a bad flag")
			require.Empty(t, s.errOut.String(), "the caller prints the error, once")
		})
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	t.Parallel()
	s := newSet()
	err := s.fs.Parse([]string{"--help"}, env(nil))
	require.ErrorIs(t, err, flagenv.ErrHelp)
	help := s.helpOut.String()
	require.True(t, strings.HasPrefix(help, "tool does things."))
	for _, want := range []string{"--nats-url  (env NATS_URL)", "(default nats://127.0.0.1:4222)", "--reconnect-delay  (env WEBSOCKET_RECONNECT_DELAY_S)", "(default 3)", "--plain\n"} {
		require.Contains(t, help, want)
	}
	require.Empty(t, s.errOut.String(), "the help goes to standard output alone")
	// Each default once: an empty one is not printed after the text that
	// says what empty means.
	require.Contains(t, help, "        results folder (default: ./<batch id>)\n")
	require.NotContains(t, help, `(default "")`)
	require.Equal(t, 1, strings.Count(help, "(default nats://127.0.0.1:4222)"))
	for _, line := range strings.Split(help, "\n") {
		require.LessOrEqual(t, strings.Count(line, "(default"), 1, line)
	}
}

func TestRepeatedKeepsCommas(t *testing.T) {
	t.Parallel()
	var sets []string
	fs := flagenv.New("tool", "tool does things.")
	fs.Repeated(&sets, "set", "", "a value per flag")
	require.NoError(t, fs.Parse([]string{"--set", "6.inputs.text=a cat, sitting", "--set=3.inputs.seed=1..3"}, env(nil)))
	require.Equal(t, []string{"6.inputs.text=a cat, sitting", "3.inputs.seed=1..3"}, sets)
	require.Equal(t, []flagenv.Setting{{Flag: "set", Default: "", Usage: "a value per flag"}}, fs.Settings())
}

// TestSharedName: a name bound by several components (as the dev stack
// binds the dispatcher's, the worker's and the adapter's POOL) feeds every
// one of them, each parsing the value as its own type, and each keeps its
// own default when none is given; the help lists the setting once.
func TestSharedName(t *testing.T) {
	t.Parallel()
	type parts struct {
		pool  string
		pools []string
		grace time.Duration
		other time.Duration
	}
	bind := func() (*flagenv.Set, *parts) {
		var p parts
		fs := flagenv.New("dev", "dev runs everything.")
		fs.String(&p.pool, "pool", "POOL", "default", "pool of the API's jobs")
		fs.List(&p.pools, "pool", "POOL", []string{"default"}, "pools of the workers")
		fs.Duration(&p.grace, "grace", "SHUTDOWN_GRACE", 30*time.Second, "worker grace")
		fs.Duration(&p.other, "grace", "SHUTDOWN_GRACE", 10*time.Second, "API grace")
		return fs, &p
	}
	fs, p := bind()
	require.NoError(t, fs.Parse(nil, env(nil)))
	require.Equal(t, parts{pool: "default", pools: []string{"default"}, grace: 30 * time.Second, other: 10 * time.Second}, *p,
		"each target keeps its own default")

	fs, p = bind()
	require.NoError(t, fs.Parse(nil, env(map[string]string{"POOL": "sdxl", "SHUTDOWN_GRACE": "5s"})))
	require.Equal(t, parts{pool: "sdxl", pools: []string{"sdxl"}, grace: 5 * time.Second, other: 5 * time.Second}, *p)

	fs, p = bind()
	require.NoError(t, fs.Parse([]string{"--pool", "a", "--pool", "b"}, env(map[string]string{"POOL": "ignored"})))
	require.Equal(t, []string{"a", "b"}, p.pools, "a repeated flag appends to the list")
	require.Equal(t, "b", p.pool, "the string takes the last")

	fs, _ = bind()
	err := fs.Parse(nil, env(map[string]string{"SHUTDOWN_GRACE": "soon"}))
	require.ErrorContains(t, err, `setting SHUTDOWN_GRACE (--grace): invalid value "soon"`)

	fs, _ = bind()
	require.Len(t, fs.Settings(), 2, "one row per name")
	require.Equal(t, "pool of the API's jobs", fs.Settings()[0].Usage, "the first binding's text")

	require.Panics(t, func() {
		var a, b string
		fs := flagenv.New("x", "")
		fs.String(&a, "pool", "POOL", "", "")
		fs.String(&b, "pool", "OTHER_POOL", "", "")
	}, "one flag, two variables")
}
