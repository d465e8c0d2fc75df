package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// asMain makes the test binary run main with the arguments after "--"
// when the test of a process starts it again.
const asMain = "CF_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		for i, a := range os.Args {
			if a == "--" {
				os.Args = append([]string{"runpod-adapter"}, os.Args[i+1:]...)
				break
			}
		}
		main()
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// TestConfigurationDoc: docs/configuration.md lists every setting of this
// binary with its flag, variable and default; a setting added, renamed or
// given another default without its documentation fails here.
func TestConfigurationDoc(t *testing.T) {
	t.Parallel()
	var cfg config
	configdoc.Require(t, "../../docs/configuration.md", "runpod-adapter", settings(&cfg).Settings())
}

// binary runs the binary's main with args and env, and returns its exit
// code, stdout and stderr.
func binary(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$", "--"}, args...)...)
	cmd.Env = append([]string{asMain + "=1", "PATH=" + os.Getenv("PATH")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return code, stdout.String(), stderr.String()
}

// --help is on standard output with exit 0; a bad flag is one line on
// standard error with exit 2.
func TestHelpAndBadFlag(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := binary(t, nil, "--help")
	require.Equal(t, 0, code)
	require.Empty(t, stderr)
	require.Contains(t, stdout, "--listen  (env LISTEN_ADDR)")
	require.NotContains(t, stdout, `(default "")`)

	code, stdout, stderr = binary(t, nil, "--listen-addr", "x")
	require.Equal(t, 2, code)
	require.Empty(t, stdout)
	require.Equal(t, "runpod-adapter: flag provided but not defined: -listen-addr (see --help)\n", stderr)
}

// A listen address in use ends the binary with one line that says so,
// exit 1: no log record with a stack.
func TestListenAddrInUse(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	code, _, stderr := binary(t, []string{"NATS_URL=" + n.URL, "REDIS_URL=" + testenv.RedisURL(), "LISTEN_ADDR=" + ln.Addr().String(), "LOG_LEVEL=error"})
	require.Equal(t, 1, code, stderr)
	require.Equal(t, "runpod-adapter: LISTEN_ADDR: listen tcp "+ln.Addr().String()+": bind: address already in use"+
		" (another process listens there, perhaps another comfyfleet: stop it or choose another address)\n", stderr)
	require.False(t, strings.Contains(stderr, "stacktrace"))
}
