package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// TestFleetOverTLS: the operator commands reach a deployment whose NATS
// and Redis speak TLS only, with a user and password from a file and an
// ACL user, given by flags or variables.
func TestFleetOverTLS(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: pki.ServerCert, KeyFile: pki.ServerKey})
	require.NoError(t, err)
	srv := testenv.StartNATSOptions(t, &server.Options{TLS: true, TLSConfig: tc, TLSTimeout: 2,
		Users: []*server.User{{Username: "operator", Password: "op-pw"}}})
	natsURL := "tls://" + srv.Addr().String()
	redis := testenv.StartRedisTLS(t, pki, "optional")
	pwFile := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(pwFile, []byte("op-pw\n"), 0o600))

	// The streams, as the fleet's processes make them.
	b, err := backend.Open(testenv.Context(t, 30*time.Second), backend.Config{Name: "fleet", NATSURL: natsURL, RedisURL: redis.URL(0),
		NATSAuth: backend.NATSAuth{User: "operator", Password: "op-pw", TLS: backend.TLSFiles{CA: pki.CA}}, RedisTLS: backend.TLSFiles{CA: pki.CA}})
	require.NoError(t, err)
	b.Close()

	args := []string{"fleet", "--json", "--nats-url", natsURL, "--nats-user", "operator", "--nats-password-file", pwFile,
		"--nats-tls-ca", pki.CA, "--redis-url", redis.URL(0), "--redis-tls-ca", pki.CA}
	var out bytes.Buffer
	code := run(t.Context(), args, &out, &out)
	require.Equal(t, exitOK, code, out.String())
	require.Contains(t, out.String(), `"workers"`)

	// Without the CA the server is not trusted, and the command says where.
	out.Reset()
	code = run(t.Context(), []string{"fleet", "--nats-url", natsURL, "--nats-user", "operator", "--nats-password-file", pwFile,
		"--redis-url", redis.URL(0), "--redis-tls-ca", pki.CA}, &out, &out)
	require.Equal(t, exitNotAllDone, code, out.String())
	require.Contains(t, out.String(), "NATS at "+natsURL+" unreachable")
	require.Contains(t, out.String(), "certificate signed by unknown authority")
	require.NotContains(t, out.String(), redis.Password)
}
