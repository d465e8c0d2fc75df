package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// takenPort holds a port on 127.0.0.1 for the test's life.
func takenPort(t *testing.T) (string, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), ln.Addr().(*net.TCPAddr).Port
}

// When the NATS port asked for (--nats-port) is taken, dev says which one
// it took instead, and stack.json names it.
func TestDevSaysWhichNATSPortItTook(t *testing.T) {
	t.Parallel()
	_, port := takenPort(t)
	work := t.TempDir()
	dev := start(t, work, "dev", "--listen", "127.0.0.1:0", "--nats-port", strconv.Itoa(port), "--log-level", "warn")
	info := devUp(t, work, dev)
	require.True(t, info.NATSFallback)
	require.NotEqual(t, fmt.Sprintf("nats://127.0.0.1:%d", port), info.NATSURL)
	require.Eventually(t, func() bool {
		return strings.Contains(dev.out.String(), fmt.Sprintf("NATS port %d is taken; the embedded NATS server listens on %s instead.", port, info.NATSURL))
	}, 10*time.Second, 10*time.Millisecond, dev.out.String())
	devDown(t, work, dev)
}

// A listen address in use ends dev with one line that says so, exit 1:
// no log record, no stack.
func TestDevListenAddrInUse(t *testing.T) {
	t.Parallel()
	addr, _ := takenPort(t)
	work := t.TempDir()
	dev := start(t, work, "dev", "--listen", addr, "--nats-port", "-1", "--log-level", "warn")
	require.Equal(t, 1, dev.wait(t, time.Minute), dev.out.String())
	out := strings.TrimRight(dev.out.String(), "\n")
	require.Equal(t, "comfyfleet dev: dev stack: LISTEN_ADDR: listen tcp "+addr+": bind: address already in use"+
		" (another process listens there, perhaps another comfyfleet: stop it or choose another address)", out)
}
