package deploy_test

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func dbPrefix(prefix string) rdb.Options { return rdb.Options{Prefix: prefix} }

// startComposeNATSTLS runs nats-server with deploy/compose/nats-tls.conf
// as compose does with NATS_CONFIG=nats-tls.conf: both files side by side
// (the include is relative), with the certificates of pki where the
// container has them (/etc/nats/tls, here a temp dir). verify turns on
// client certificates, as the file's comment says.
func startComposeNATSTLS(t *testing.T, pki *testenv.PKI, verify bool) string {
	t.Helper()
	composeNATSOptions(t) // the users' passwords in the environment
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	require.NoError(t, os.Mkdir(tlsDir, 0o700))
	for from, to := range map[string]string{pki.ServerCert: "server.pem", pki.ServerKey: "server-key.pem", pki.CA: "ca.pem"} {
		data, err := os.ReadFile(from)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(tlsDir, to), data, 0o600))
	}
	conf := readFile(t, "deploy", "compose", "nats-tls.conf")
	require.Contains(t, conf, "include ./nats.conf")
	require.Contains(t, conf, "verify: false", "client certificates are optional by default")
	conf = strings.ReplaceAll(conf, "/etc/nats/tls/", tlsDir+"/")
	if verify {
		conf = strings.Replace(conf, "verify: false", "verify: true", 1)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nats-tls.conf"), []byte(conf), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nats.conf"), []byte(readFile(t, "deploy", "compose", "nats.conf")), 0o600))
	opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats-tls.conf"))
	require.NoError(t, err)
	require.NotNil(t, opts.TLSConfig, "the tls block")
	require.Equal(t, verify, opts.TLSConfig.ClientAuth == tls.RequireAndVerifyClientCert, "verify")
	require.NotEmpty(t, opts.Users, "nats.conf's users come with the include")
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.HTTPPort = 0
	opts.StoreDir = ""
	srv := testenv.StartNATSOptions(t, opts)
	return "tls://" + srv.Addr().String()
}

// TestComposeNATSTLSConfig: nats-tls.conf is nats.conf with TLS: a
// worker joins with NATS_TLS_CA and the WORKER user's password (from a
// file), its permissions still apply, and without the CA, or without a
// client certificate once verify is on, it is refused.
func TestComposeNATSTLSConfig(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	url := startComposeNATSTLS(t, pki, false)
	pwFile := filepath.Join(t.TempDir(), "worker-password")
	require.NoError(t, os.WriteFile(pwFile, []byte(natsEnv.vars["NATS_WORKER_PASSWORD"]+"\n"), 0o600))
	worker := backend.NATSAuth{User: "worker", PasswordFile: pwFile, TLS: backend.TLSFiles{CA: pki.CA}}

	// The streams, as the dispatcher makes them, then the worker's start.
	opPW := natsEnv.vars["NATS_OPERATOR_PASSWORD"]
	_, prefix := testenv.Redis(t)
	ctx := testenv.Context(t, time.Minute)
	op, err := backend.Open(ctx, backend.Config{Name: "operator", NATSURL: url, RedisURL: testenv.RedisURL(),
		NATSAuth: backend.NATSAuth{User: "operator", Password: opPW, TLS: backend.TLSFiles{CA: pki.CA}}, DB: dbPrefix(prefix)})
	require.NoError(t, err)
	op.Close()
	w, err := backend.Open(ctx, backend.Config{Name: "worker", NATSURL: url, RedisURL: testenv.RedisURL(), NATSAuth: worker, DB: dbPrefix(prefix)})
	require.NoError(t, err)
	defer w.Close()
	// The WORKER permissions of nats.conf: no submitting.
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = w.Queue.Submit(sctx, proto.SourceBatch, &proto.Job{V: proto.Version, ID: "tls-1", Input: []byte(`{}`)})
	cancel()
	require.Error(t, err, "a worker cannot submit, over TLS too")

	_, err = backend.Open(ctx, backend.Config{Name: "worker", NATSURL: url, RedisURL: testenv.RedisURL(),
		NATSAuth: backend.NATSAuth{User: "worker", PasswordFile: pwFile}, DB: dbPrefix(prefix)})
	require.ErrorContains(t, err, "certificate signed by unknown authority")

	verified := startComposeNATSTLS(t, pki, true)
	_, err = backend.Open(ctx, backend.Config{Name: "worker", NATSURL: verified, RedisURL: testenv.RedisURL(), NATSAuth: worker, DB: dbPrefix(prefix)})
	require.Error(t, err, "verify: true wants a client certificate")
	worker.TLS.Cert, worker.TLS.Key = pki.ClientCert, pki.ClientKey
	w2, err := backend.Open(ctx, backend.Config{Name: "worker", NATSURL: verified, RedisURL: testenv.RedisURL(), NATSAuth: worker, DB: dbPrefix(prefix)})
	require.NoError(t, err)
	w2.Close()
}

// TestComposeNATSRunPodUser: the runpod user (a RunPod serverless worker:
// the adapter in serverless mode and a gpuworker in one container) makes
// the streams, submits as RunPod, reads the controls, and may not submit
// as the API or a batch producer, publish admitted jobs' intake, or read
// the intake.
func TestComposeNATSRunPodUser(t *testing.T) {
	t.Parallel()
	addr, _ := startComposeNATS(t)
	ctx := testenv.Context(t, time.Minute)
	rc, errs := natsUser(t, addr, "runpod")
	q, err := queue.New(rc)
	require.NoError(t, err)
	require.NoError(t, q.Ensure(ctx, queue.Config{}), "each process ensures the streams at its start")
	_, err = q.Submit(ctx, proto.SourceRunPod, &proto.Job{V: proto.Version, ID: "rp-1", Input: []byte(`{}`), Tenant: "default"})
	require.NoError(t, err, "serverless mode submits as RunPod")
	for _, subject := range []string{"cf.ctl.control", "cf.ctl.cancel"} {
		_, err := rc.SubscribeSync(subject)
		require.NoError(t, err)
	}
	require.NoError(t, rc.Flush())
	for _, subject := range []string{"cf.submit.api.acme", "cf.submit.batch.producer", "cf.rejects.default"} {
		require.NoError(t, rc.Publish(subject, []byte(`{}`)))
		refused(t, errs, `Publish to "`+subject+`"`)
	}
	js, err := jetstream.New(rc)
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = js.CreateOrUpdateConsumer(short, proto.SubmitStream, jetstream.ConsumerConfig{Durable: "steal", FilterSubject: proto.SubmitSubjects})
	require.Error(t, err, "no reading the intake")
	refused(t, errs, `Publish to "$JS.API.CONSUMER.CREATE.CF_SUBMIT.steal`)
}
