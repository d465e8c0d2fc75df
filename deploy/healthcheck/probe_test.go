package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func probe(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	code := run(context.Background(), args, envOf(env), &out)
	return code, strings.TrimSpace(out.String())
}

func TestHTTP(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
		case "/auth":
			if r.Header.Get("Authorization") != "Bearer k1" {
				w.WriteHeader(http.StatusUnauthorized)
			}
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	keyFile := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.WriteFile(keyFile, []byte("# keys\n\nk1\nk2\n"), 0o600))

	tests := []struct {
		name     string
		env      map[string]string
		path     string
		wantCode int
		wantOut  string
	}{
		{name: "2xx", path: "/ok", wantCode: 0, wantOut: "healthy"},
		{name: "503", path: "/down", wantCode: 1, wantOut: "HTTP 503"},
		{name: "no key", path: "/auth", wantCode: 1, wantOut: "HTTP 401"},
		{name: "first of API_KEYS", env: map[string]string{"API_KEYS": " k1 ,k2"}, path: "/auth", wantCode: 0},
		{name: "API_KEYS_FILE", env: map[string]string{"API_KEYS_FILE": keyFile}, path: "/auth", wantCode: 0},
		{name: "missing key file", env: map[string]string{"API_KEYS_FILE": keyFile + ".gone"}, path: "/ok", wantCode: 1, wantOut: "API_KEYS_FILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out := probe(t, tt.env, "http", srv.URL+tt.path)
			require.Equal(t, tt.wantCode, code, out)
			require.Contains(t, out, tt.wantOut)
		})
	}
	code, out := probe(t, nil, "http", "http://127.0.0.1:1/")
	require.Equal(t, 1, code, out)
}

func TestUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{nil, {"http"}, {"nope"}, {"-timeout", "soon", "backends"}, {"backends", "extra"}} {
		code, out := probe(t, nil, args...)
		require.Equal(t, 2, code, "%v: %s", args, out)
	}
}

// listenAndDial returns the port of a loopback listener that has one
// established connection; cleanup closes both ends.
func listenAndDial(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	if s, ok := <-accepted; ok {
		t.Cleanup(func() { s.Close() })
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// unusedPort is a loopback port nothing is connected to.
func unusedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	return port
}

func TestBackends(t *testing.T) {
	t.Parallel()
	nats, redisPort, idle := listenAndDial(t), listenAndDial(t), unusedPort(t)
	tests := []struct {
		name     string
		env      map[string]string
		wantCode int
		wantOut  string
	}{
		{name: "both live", env: map[string]string{"NATS_URL": "nats://127.0.0.1:" + nats, "REDIS_URL": "redis://localhost:" + redisPort + "/3"}, wantCode: 0},
		{name: "one of several NATS servers", env: map[string]string{"NATS_URL": "nats://127.0.0.1:" + idle + ", nats://127.0.0.1:" + nats, "REDIS_URL": "redis://127.0.0.1:" + redisPort}, wantCode: 0},
		{name: "no NATS connection", env: map[string]string{"NATS_URL": "nats://127.0.0.1:" + idle, "REDIS_URL": "redis://127.0.0.1:" + redisPort}, wantCode: 1, wantOut: "no live connection to NATS_URL"},
		{name: "no Redis connection", env: map[string]string{"NATS_URL": "127.0.0.1:" + nats, "REDIS_URL": "redis://127.0.0.1:" + idle}, wantCode: 1, wantOut: "REDIS_URL"},
		{name: "unix socket redis", env: map[string]string{"NATS_URL": "nats://127.0.0.1:" + nats, "REDIS_URL": "unix:///run/redis.sock"}, wantCode: 0},
		{name: "bad host", env: map[string]string{"NATS_URL": "nats://no-such-host.invalid:4222"}, wantCode: 1, wantOut: "resolve"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out := probe(t, tt.env, "-timeout", "5s", "backends")
			require.Equal(t, tt.wantCode, code, out)
			require.Contains(t, out, tt.wantOut)
		})
	}
}

func TestWorker(t *testing.T) {
	t.Parallel()
	rdb, _ := testenv.Redis(t)
	ctx := testenv.Context(t, 10*time.Second)
	nats := listenAndDial(t)
	id := "healthcheck-test-" + uuid.NewString()
	t.Cleanup(func() { rdb.Del(context.Background(), proto.WorkerKey(id)) })
	env := map[string]string{"WORKER_ID": id, "REDIS_URL": testenv.RedisURL(), "NATS_URL": "nats://127.0.0.1:" + nats}

	code, out := probe(t, env, "worker")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "has no heartbeat")

	for _, tt := range []struct {
		state    string
		wantCode int
	}{{"initializing", 0}, {"idle", 0}, {"running", 0}, {"unhealthy", 1}} {
		require.NoError(t, rdb.HSet(ctx, proto.WorkerKey(id), "state", tt.state).Err())
		code, out := probe(t, env, "worker")
		require.Equal(t, tt.wantCode, code, "%s: %s", tt.state, out)
	}

	require.NoError(t, rdb.HSet(ctx, proto.WorkerKey(id), "state", "idle").Err())
	noNATS := map[string]string{"WORKER_ID": id, "REDIS_URL": testenv.RedisURL(), "NATS_URL": "nats://127.0.0.1:" + unusedPort(t)}
	code, out = probe(t, noNATS, "worker")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "NATS_URL")

	// Without WORKER_ID the probe looks for gpuworker's default id.
	host, err := os.Hostname()
	require.NoError(t, err)
	code, out = probe(t, map[string]string{"REDIS_URL": testenv.RedisURL(), "NATS_URL": env["NATS_URL"]}, "worker")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "worker "+proto.HostWorkerID(host)+" has no heartbeat")
}

func TestParseProcNetTCP(t *testing.T) {
	t.Parallel()
	const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:108E 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0A00000A:C351 0B00000A:18EB 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
`
	got, err := parseProcNetTCP(strings.NewReader(tcp))
	require.NoError(t, err)
	require.Len(t, got, 2, "the listening socket is not a connection")
	require.Equal(t, "127.0.0.1", got[0].IP.String())
	require.Equal(t, "4238", got[0].Port)
	require.Equal(t, "10.0.0.11", got[1].IP.String())
	require.Equal(t, "6379", got[1].Port)

	const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000001000000:C350 0000000000000000FFFF00000100007F:108E 01 00000000:00000000
   1: 00000000000000000000000001000000:C351 00000000000000000000000001000000:18EB 01 00000000:00000000
`
	got, err = parseProcNetTCP(strings.NewReader(tcp6))
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.True(t, got[0].IP.Equal(net.ParseIP("127.0.0.1")), got[0].IP.String())
	require.Equal(t, "::1", got[1].IP.String())

	_, err = parseProcNetTCP(strings.NewReader("header\n 0: zz:1 0100007F:GG 01\n"))
	require.Error(t, err)
}

func TestEstablishedConnsReadsProcRoot(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	_, err := establishedConns(root)
	require.ErrorContains(t, err, "no "+root+"/net/tcp")
	require.NoError(t, os.MkdirAll(filepath.Join(root, "net"), 0o755))
	line := fmt.Sprintf("h\n 0: 0100007F:0001 0100007F:%04X 01\n", 4222)
	require.NoError(t, os.WriteFile(filepath.Join(root, "net", "tcp"), []byte(line), 0o644))
	got, err := establishedConns(root)
	require.NoError(t, err)
	require.Equal(t, []endpoint{{IP: net.IP{127, 0, 0, 1}, Port: "4222"}}, got)
}

func FuzzParseProcNetTCP(f *testing.F) {
	f.Add("h\n 0: 0100007F:1F90 0100007F:108E 01 0\n")
	f.Add("h\n 0: 00000000000000000000000001000000:C350 0000000000000000FFFF00000100007F:108E 01\n")
	f.Add("h\n 0: 1:2 3:4 01\n")
	f.Fuzz(func(t *testing.T, s string) {
		conns, err := parseProcNetTCP(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, c := range conns {
			if len(c.IP) != net.IPv4len && len(c.IP) != net.IPv6len {
				t.Fatalf("bad IP length %d", len(c.IP))
			}
		}
	})
}
