package bench

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// The bench's producer connection to a running stack takes the stack's
// NATS credentials and TLS files, as every other connection does.
func TestDialBusOverTLS(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: pki.ServerCert, KeyFile: pki.ServerKey})
	require.NoError(t, err)
	srv := testenv.StartNATSOptions(t, &server.Options{TLS: true, TLSConfig: tc, TLSTimeout: 2,
		Users: []*server.User{{Username: "operator", Password: "pw"}}})
	url := "tls://" + srv.Addr().String()
	ctx := testenv.Context(t, 30*time.Second)
	b, err := dialBus(ctx, url, backend.NATSAuth{User: "operator", Password: "pw", TLS: backend.TLSFiles{CA: pki.CA}})
	require.NoError(t, err)
	require.NoError(t, b.nc.Flush())
	b.close()

	_, err = dialBus(ctx, url, backend.NATSAuth{User: "operator", Password: "pw"})
	require.ErrorContains(t, err, "certificate signed by unknown authority")
	_, err = dialBus(ctx, url, backend.NATSAuth{User: "operator", Password: "wrong", TLS: backend.TLSFiles{CA: pki.CA}})
	require.ErrorContains(t, err, "Authorization Violation")
}
