package deploy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// TestComposeNATSCluster: nats-cluster.conf, as compose runs it on nats,
// nats-2 and nats-3 (each with its NATS_SERVER_NAME and store), is
// nats.conf (its users, JetStream) plus a cluster with a route to every
// node, under the node's own name. (R3 streams on a running cluster are
// tested in internal/queue and internal/chaos.)
func TestComposeNATSCluster(t *testing.T) {
	t.Parallel()
	composeNATSOptions(t) // the users' passwords in the environment
	conf := readFile(t, "deploy", "compose", "nats-cluster.conf")
	require.Contains(t, conf, "include ./nats.conf")
	require.Contains(t, conf, "server_name: $NATS_SERVER_NAME")
	names := []string{"nats", "nats-2", "nats-3"}
	routePorts := map[string]string{}
	for _, name := range names {
		require.Contains(t, conf, "nats-route://"+name+":6222", "a route to every node")
		_, port, _ := strings.Cut(testenv.FreeAddr(t), ":")
		routePorts[name] = port
	}
	for _, name := range names {
		c := strings.Replace(conf, "server_name: $NATS_SERVER_NAME", "server_name: "+name, 1)
		c = strings.Replace(c, "listen: 0.0.0.0:6222", "listen: 127.0.0.1:"+routePorts[name], 1)
		for _, other := range names {
			c = strings.Replace(c, "nats-route://"+other+":6222", "nats-route://127.0.0.1:"+routePorts[other], 1)
		}
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "nats-cluster.conf"), []byte(c), 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "nats.conf"), []byte(readFile(t, "deploy", "compose", "nats.conf")), 0o600))
		opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats-cluster.conf"))
		require.NoError(t, err)
		require.Equal(t, name, opts.ServerName, "the node's name overrides nats.conf's")
		require.Equal(t, "comfyfleet", opts.Cluster.Name)
		require.Len(t, opts.Routes, 3)
		require.NotEmpty(t, opts.Users, "nats.conf's users come with the include")
		require.True(t, opts.JetStream, name)
		require.Equal(t, "/data", opts.StoreDir, "%s stores on its own volume", name)
	}
}
