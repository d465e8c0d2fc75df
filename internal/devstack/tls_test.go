package devstack_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// TestDevOnAnOutsideFleetOverTLS: with NATS_URL and REDIS_URL naming
// servers that speak TLS only and want users, dev connects every role
// with the security settings, and a job runs through them.
func TestDevOnAnOutsideFleetOverTLS(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, CaFile: pki.CA, Verify: true})
	require.NoError(t, err)
	seed, pub := testenv.NKeyUser(t)
	srv := testenv.StartNATSOptions(t, &server.Options{TLS: true, TLSVerify: true, TLSConfig: tc, TLSTimeout: 2,
		Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	redis := testenv.StartRedisTLS(t, pki, "yes")
	cfg := config(t, map[string]string{
		"COMFYFLEET_DIR": t.TempDir(), "LISTEN_ADDR": "127.0.0.1:0", "COMFYFLEET_WORKERS": "1", "SHUTDOWN_GRACE": "5s",
		"NATS_URL": "tls://" + srv.Addr().String(), "NATS_NKEY_SEED_FILE": seed,
		"NATS_TLS_CA": pki.CA, "NATS_TLS_CERT": pki.ClientCert, "NATS_TLS_KEY": pki.ClientKey,
		"REDIS_URL": redis.URL(2), "REDIS_TLS_CA": pki.CA, "REDIS_TLS_CERT": pki.ClientCert, "REDIS_TLS_KEY": pki.ClientKey,
	})
	cfg.Logger = zaptest.NewLogger(t)
	stack, err := devstack.Start(testenv.Context(t, time.Minute), cfg)
	require.NoError(t, err)
	t.Cleanup(stack.Stop)
	b := &bundle{stack: stack}
	code, out := b.post(t, "/runsync", example(t))
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
}

// TestDevEmbeddedIgnoresNATSSecurity: the embedded NATS has no users and
// no TLS, so the NATS settings meant for an outside server (TLS here, which
// the embedded server would refuse) do not stop dev from using it.
func TestDevEmbeddedIgnoresNATSSecurity(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	b := setup(t, "NATS_TLS_CA", pki.CA, "NATS_USER", "worker", "NATS_PASSWORD", "pw", "COMFYFLEET_WORKERS", "1")
	code, out := b.post(t, "/runsync", example(t))
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
}

// TestDevEmbeddedRedisDoesNotWait: dev's own Redis has no replicas, so a
// REDIS_WAIT_REPLICAS meant for a Redis with some (which would fail every
// transition there) does not stop a job.
func TestDevEmbeddedRedisDoesNotWait(t *testing.T) {
	t.Parallel()
	// REDIS_URL unset: dev runs a redis-server of its own.
	b := setup(t, "REDIS_URL", "", "REDIS_WAIT_REPLICAS", "1", "REDIS_WAIT_TIMEOUT", "100ms", "COMFYFLEET_WORKERS", "1")
	require.Equal(t, "redis-server", b.stack.Info.Redis)
	code, out := b.post(t, "/runsync", example(t))
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
}
