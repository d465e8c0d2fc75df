package deploy_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// TestComposeRedisTLSOverride: redis-tls.yaml, over compose.yaml, runs the
// real redis-server with its very command (the certificates' folder and
// the ports moved to the test's): the ACL user gets in over TLS with the
// CA, the default user is off on both ports, and compose's services use
// FLEET_REDIS_URL.
func TestComposeRedisTLSOverride(t *testing.T) {
	t.Parallel()
	const password = "fleet-pw-1"
	var env []string
	for k, v := range dotEnv(t) {
		env = append(env, k+"="+v)
	}
	env = append(env, "REDIS_FLEET_PASSWORD="+password, "FLEET_REDIS_URL=redis://fleet:"+password+"@redis:6379/0")
	dir := filepath.Dir(composeFile())
	opts, err := cli.NewProjectOptions([]string{composeFile(), filepath.Join(dir, "redis-tls.yaml")},
		cli.WithWorkingDirectory(dir), cli.WithEnv(env), cli.WithProfiles([]string{"sim"}), cli.WithName("comfyfleet"))
	require.NoError(t, err)
	p, err := opts.LoadProject(context.Background())
	require.NoError(t, err)
	redis := p.Services["redis"]
	require.Equal(t, "redis://fleet:"+password+"@redis:6379/0", deref(p.Services["dispatcher"].Environment["REDIS_URL"]))
	var targets []uint32
	for _, port := range redis.Ports {
		targets = append(targets, port.Target)
	}
	require.ElementsMatch(t, []uint32{6379, 6380}, targets)
	require.Equal(t, password, deref(redis.Environment["REDISCLI_AUTH"]), "the health check's password")

	// Without the password, the override refuses to load.
	bare, err := cli.NewProjectOptions([]string{composeFile(), filepath.Join(dir, "redis-tls.yaml")},
		cli.WithWorkingDirectory(dir), cli.WithEnv(nil), cli.WithName("comfyfleet"))
	require.NoError(t, err)
	_, err = bare.LoadProject(context.Background())
	require.ErrorContains(t, err, "REDIS_FLEET_PASSWORD")

	// The command, for real.
	pki := testenv.NewPKI(t)
	tlsDir := t.TempDir()
	for from, to := range map[string]string{pki.ServerCert: "server.pem", pki.ServerKey: "server-key.pem", pki.CA: "ca.pem"} {
		data, err := os.ReadFile(from)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(tlsDir, to), data, 0o600))
	}
	tlsAddr, plainAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	_, plainPort, _ := net.SplitHostPort(plainAddr)
	args := []string(redis.Command)
	require.Equal(t, "redis-server", args[0])
	for i, a := range args {
		switch {
		case strings.HasPrefix(a, "/tls/"):
			args[i] = filepath.Join(tlsDir, strings.TrimPrefix(a, "/tls/"))
		case a == "/data":
			args[i] = t.TempDir()
		case a == "6380" && args[i-1] == "--tls-port":
			args[i] = tlsPort
		}
	}
	args = append(args[1:], "--port", plainPort, "--bind", "127.0.0.1", "--appendonly", "no")
	bin, err := exec.LookPath("redis-server")
	require.NoError(t, err, "redis-server is not on PATH (scripts/ensure-redis.sh installs it)")
	cmd := exec.Command(bin, args...)
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	n := testenv.StartNATS(t)
	open := func(url string, files backend.TLSFiles) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b, err := backend.Open(ctx, backend.Config{Name: t.Name(), NATSURL: n.URL, RedisURL: url, RedisTLS: files})
		if err == nil {
			b.Close()
		}
		return err
	}
	url := "rediss://fleet:" + password + "@" + tlsAddr + "/0"
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := open(url, backend.TLSFiles{CA: pki.CA})
		if err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "redis-server with redis-tls.yaml's command: %v", err)
		select { // poll the starting process, with a deadline
		case werr := <-exited:
			t.Fatalf("redis-server with redis-tls.yaml's command exited: %v", werr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	require.ErrorContains(t, open("rediss://"+tlsAddr+"/0", backend.TLSFiles{CA: pki.CA}), "Redis at", "the default user is off")
	require.ErrorContains(t, open("redis://"+plainAddr+"/0", backend.TLSFiles{}), "Redis at", "on the plain port too")
	require.NoError(t, open("redis://fleet:"+password+"@"+plainAddr+"/0", backend.TLSFiles{}), "compose's services, on the plain port")
}
