package backend_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// tlsNATS starts a JetStream server that speaks TLS only (certificates of
// pki) and, with verify, asks every client for a certificate of pki's CA.
func tlsNATS(t *testing.T, pki *testenv.PKI, verify bool, configure func(*server.Options)) string {
	t.Helper()
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, CaFile: pki.CA, Verify: verify})
	require.NoError(t, err)
	opts := &server.Options{TLSConfig: tc, TLS: true, TLSVerify: verify, TLSTimeout: 2}
	if configure != nil {
		configure(opts)
	}
	srv := testenv.StartNATSOptions(t, opts)
	return "tls://" + srv.Addr().String()
}

// open opens a backend on natsURL with auth, on the test Redis, and checks
// that JetStream works through it (the streams are ensured by Open; a
// blob put and get round-trips).
func open(t *testing.T, natsURL string, auth backend.NATSAuth) (*backend.Backend, error) {
	t.Helper()
	_, prefix := testenv.Redis(t)
	cfg := backend.Config{Name: t.Name(), NATSURL: natsURL, NATSAuth: auth, RedisURL: testenv.RedisURL()}
	cfg.DB.Prefix = prefix
	ctx := testenv.Context(t, 30*time.Second)
	b, err := backend.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(b.Close)
	return b, nil
}

func requireJetStream(t *testing.T, b *backend.Backend) {
	t.Helper()
	ctx := testenv.Context(t, 10*time.Second)
	key := "tls-probe/" + strings.ReplaceAll(t.Name(), "/", "_")
	_, err := b.Blobs.Put(ctx, key, "text/plain", strings.NewReader("through TLS"))
	require.NoError(t, err)
	rc, _, err := b.Blobs.Get(ctx, key)
	require.NoError(t, err)
	defer rc.Close()
	data, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.Equal(t, "through TLS", string(data))
}

func TestNATSOverTLSWithClientCertificate(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	url := tlsNATS(t, pki, true, nil)

	b, err := open(t, url, backend.NATSAuth{TLS: backend.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey}})
	require.NoError(t, err)
	requireJetStream(t, b)

	t.Run("without the CA", func(t *testing.T) {
		t.Parallel()
		_, err := open(t, url, backend.NATSAuth{TLS: backend.TLSFiles{Cert: pki.ClientCert, Key: pki.ClientKey}})
		require.Error(t, err)
		require.Contains(t, err.Error(), "NATS at "+url+" unreachable")
		require.Contains(t, err.Error(), "certificate signed by unknown authority")
	})
	t.Run("with another CA", func(t *testing.T) {
		t.Parallel()
		_, err := open(t, url, backend.NATSAuth{TLS: backend.TLSFiles{CA: pki.OtherCA, Cert: pki.ClientCert, Key: pki.ClientKey}})
		require.ErrorContains(t, err, "certificate signed by unknown authority")
	})
	t.Run("without a client certificate", func(t *testing.T) {
		t.Parallel()
		_, err := open(t, url, backend.NATSAuth{TLS: backend.TLSFiles{CA: pki.CA}})
		require.ErrorContains(t, err, "NATS at "+url+" unreachable")
	})
	t.Run("with the wrong server name", func(t *testing.T) {
		t.Parallel()
		_, err := open(t, url, backend.NATSAuth{TLS: backend.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey, ServerName: "nats.example.com"}})
		require.ErrorContains(t, err, "nats.example.com")
	})
}

func TestNATSOverTLSWithPassword(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	url := tlsNATS(t, pki, false, func(o *server.Options) {
		o.Users = []*server.User{{Username: "worker", Password: "right-pw"}}
	})
	pwFile := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(pwFile, []byte("right-pw\n"), 0o600))

	for _, tt := range []struct {
		name    string
		url     string
		auth    backend.NATSAuth
		wantErr string
	}{
		{name: "NATS_USER and NATS_PASSWORD", url: url, auth: backend.NATSAuth{User: "worker", Password: "right-pw", TLS: backend.TLSFiles{CA: pki.CA}}},
		{name: "NATS_PASSWORD_FILE", url: url, auth: backend.NATSAuth{User: "worker", PasswordFile: pwFile, TLS: backend.TLSFiles{CA: pki.CA}}},
		{name: "in the URL", url: strings.Replace(url, "tls://", "tls://worker:right-pw@", 1), auth: backend.NATSAuth{TLS: backend.TLSFiles{CA: pki.CA}}},
		{name: "wrong password", url: url, auth: backend.NATSAuth{User: "worker", Password: "wrong", TLS: backend.TLSFiles{CA: pki.CA}},
			wantErr: "Authorization Violation"},
		{name: "no password", url: url, auth: backend.NATSAuth{TLS: backend.TLSFiles{CA: pki.CA}}, wantErr: "Authorization Violation"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := open(t, tt.url, tt.auth)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.NotContains(t, err.Error(), "right-pw")
				require.NotContains(t, err.Error(), "wrong")
				return
			}
			require.NoError(t, err)
			requireJetStream(t, b)
		})
	}
}

func TestNATSWithNKeySeedFile(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	seed, pub := testenv.NKeyUser(t)
	other, _ := testenv.NKeyUser(t)
	url := tlsNATS(t, pki, false, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })

	b, err := open(t, url, backend.NATSAuth{NKeySeedFile: seed, TLS: backend.TLSFiles{CA: pki.CA}})
	require.NoError(t, err)
	requireJetStream(t, b)

	_, err = open(t, url, backend.NATSAuth{NKeySeedFile: other, TLS: backend.TLSFiles{CA: pki.CA}})
	require.ErrorContains(t, err, "Authorization Violation")
}

func TestNATSWithCredsFileInOperatorMode(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	op := testenv.NewOperator(t)
	url := tlsNATS(t, pki, true, func(o *server.Options) { op.Configure(t, o) })

	b, err := open(t, url, backend.NATSAuth{CredsFile: op.CredsFile, TLS: backend.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey}})
	require.NoError(t, err)
	requireJetStream(t, b)

	// Another operator's user is not let in.
	stranger := testenv.NewOperator(t)
	_, err = open(t, url, backend.NATSAuth{CredsFile: stranger.CredsFile, TLS: backend.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey}})
	require.ErrorContains(t, err, "Authorization Violation")
}

func TestRedisOverTLSWithACLUser(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	nts := testenv.StartNATS(t)
	withCerts := testenv.StartRedisTLS(t, pki, "yes")
	optional := testenv.StartRedisTLS(t, pki, "optional")
	for _, tt := range []struct {
		name    string
		url     string
		files   backend.TLSFiles
		wantErr string
	}{
		{name: "client certificate required", url: withCerts.URL(3), files: backend.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey}},
		{name: "client certificate optional", url: optional.URL(1), files: backend.TLSFiles{CA: pki.CA}},
		{name: "server name given", url: optional.URL(1), files: backend.TLSFiles{CA: pki.CA, ServerName: "localhost"}},
		{name: "without the CA", url: optional.URL(1), wantErr: "certificate signed by unknown authority"},
		{name: "another CA", url: optional.URL(1), files: backend.TLSFiles{CA: pki.OtherCA}, wantErr: "certificate signed by unknown authority"},
		{name: "without a client certificate", url: withCerts.URL(1), files: backend.TLSFiles{CA: pki.CA}, wantErr: "Redis at rediss://fleet:xxxxx@"},
		{name: "wrong password", url: "rediss://fleet:wrong-pw@" + optional.Addr + "/0", files: backend.TLSFiles{CA: pki.CA}, wantErr: "WRONGPASS"},
		{name: "default user is off", url: "rediss://" + optional.Addr + "/0", files: backend.TLSFiles{CA: pki.CA}, wantErr: "Redis at rediss://"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := backend.Config{Name: t.Name(), NATSURL: nts.URL, RedisURL: tt.url, RedisTLS: tt.files}
			cfg.DB.Prefix = "tls:" + t.Name() + ":"
			b, err := backend.Open(testenv.Context(t, 30*time.Second), cfg)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.NotContains(t, err.Error(), withCerts.Password)
				require.NotContains(t, err.Error(), "wrong-pw")
				return
			}
			require.NoError(t, err)
			defer b.Close()
			ctx := testenv.Context(t, 10*time.Second)
			c := b.DB.Client()
			require.NoError(t, c.Set(ctx, cfg.DB.Prefix+"k", "v", time.Minute).Err())
			who, err := c.Do(ctx, "ACL", "WHOAMI").Text()
			require.NoError(t, err)
			require.Equal(t, "fleet", who)
		})
	}
}

func TestSecuritySettingsAreCheckedBeforeConnecting(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	garbage := filepath.Join(dir, "garbage")
	require.NoError(t, os.WriteFile(garbage, []byte("not a key\n"), 0o600))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	seed, _ := testenv.NKeyUser(t)
	op := testenv.NewOperator(t)
	for _, tt := range []struct {
		name        string
		auth        backend.NATSAuth
		wantSetting string
		wantErr     string
	}{
		{name: "missing CA", auth: backend.NATSAuth{TLS: backend.TLSFiles{CA: missing}}, wantSetting: "NATS_TLS_CA", wantErr: "no such file"},
		{name: "CA not PEM", auth: backend.NATSAuth{TLS: backend.TLSFiles{CA: garbage}}, wantSetting: "NATS_TLS_CA", wantErr: "holds no PEM certificate"},
		{name: "cert without key", auth: backend.NATSAuth{TLS: backend.TLSFiles{Cert: pki.ClientCert}}, wantSetting: "NATS_TLS_KEY", wantErr: "empty while the client certificate"},
		{name: "key without cert", auth: backend.NATSAuth{TLS: backend.TLSFiles{Key: pki.ClientKey}}, wantSetting: "NATS_TLS_CERT", wantErr: "empty while the client key"},
		{name: "missing key", auth: backend.NATSAuth{TLS: backend.TLSFiles{Cert: pki.ClientCert, Key: missing}}, wantSetting: "NATS_TLS_KEY", wantErr: "no such file"},
		{name: "key of another cert", auth: backend.NATSAuth{TLS: backend.TLSFiles{Cert: pki.ClientCert, Key: pki.ServerKey}}, wantSetting: "NATS_TLS_CERT", wantErr: "private key does not match"},
		{name: "missing creds", auth: backend.NATSAuth{CredsFile: missing}, wantSetting: "NATS_CREDS", wantErr: "no such file"},
		{name: "creds not creds", auth: backend.NATSAuth{CredsFile: garbage}, wantSetting: "NATS_CREDS", wantErr: "no user JWT"},
		{name: "missing seed", auth: backend.NATSAuth{NKeySeedFile: missing}, wantSetting: "NATS_NKEY_SEED_FILE", wantErr: "no such file"},
		{name: "seed not a seed", auth: backend.NATSAuth{NKeySeedFile: garbage}, wantSetting: "NATS_NKEY_SEED_FILE", wantErr: garbage},
		{name: "two ways", auth: backend.NATSAuth{CredsFile: op.CredsFile, NKeySeedFile: seed}, wantSetting: "NATS_CREDS/NATS_NKEY_SEED_FILE/NATS_USER", wantErr: "one way"},
		{name: "password without user", auth: backend.NATSAuth{Password: "pw"}, wantSetting: "NATS_USER", wantErr: "empty while a NATS password is set"},
		{name: "password twice", auth: backend.NATSAuth{User: "u", Password: "pw", PasswordFile: garbage}, wantSetting: "NATS_PASSWORD_FILE", wantErr: "not both"},
		{name: "missing password file", auth: backend.NATSAuth{User: "u", PasswordFile: missing}, wantSetting: "NATS_PASSWORD_FILE", wantErr: "no such file"},
		{name: "empty password file", auth: backend.NATSAuth{User: "u", PasswordFile: empty}, wantSetting: "NATS_PASSWORD_FILE", wantErr: "is empty"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			setting, err := tt.auth.Check()
			require.Equal(t, tt.wantSetting, setting)
			require.ErrorContains(t, err, tt.wantErr)
			// Open refuses the same before it dials anything.
			_, err = backend.Open(context.Background(), backend.Config{NATSURL: "nats://127.0.0.1:1", NATSAuth: tt.auth})
			require.ErrorContains(t, err, tt.wantSetting+": ")
		})
	}
	for _, good := range []backend.NATSAuth{
		{}, {CredsFile: op.CredsFile}, {NKeySeedFile: seed}, {User: "u", Password: "p"},
		{TLS: backend.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey, ServerName: "nats"}},
	} {
		setting, err := good.Check()
		require.NoError(t, err, setting)
	}

	for _, tt := range []struct {
		url         string
		files       backend.TLSFiles
		wantSetting string
		wantErr     string
	}{
		{url: "redis://fleet:pw@redis:6379/0", files: backend.TLSFiles{CA: pki.CA}, wantSetting: "REDIS_URL", wantErr: "redis://fleet:xxxxx@redis:6379/0 is not a rediss:// URL"},
		{url: "rediss://redis:6379/0", files: backend.TLSFiles{CA: missing}, wantSetting: "REDIS_TLS_CA", wantErr: "no such file"},
		{url: "rediss://redis:6379/0", files: backend.TLSFiles{Cert: pki.ClientCert}, wantSetting: "REDIS_TLS_KEY", wantErr: "empty while"},
		{url: "http://fleet:pw@redis:6379/0", wantSetting: "REDIS_URL", wantErr: "scheme"},
		{url: "rediss://fleet:pw%zz@redis:6379/0", wantSetting: "REDIS_URL", wantErr: "invalid URL escape"},
	} {
		setting, err := backend.CheckRedis(tt.url, tt.files)
		require.Equal(t, tt.wantSetting, setting, tt.url)
		require.ErrorContains(t, err, tt.wantErr)
		require.NotContains(t, err.Error(), ":pw@")
	}
	for _, good := range []string{"rediss://fleet:pw@redis:6380/2", "redis://redis:6379/0"} {
		_, err := backend.CheckRedis(good, backend.TLSFiles{})
		require.NoError(t, err)
	}
	_, err := backend.CheckRedis("rediss://redis:6380/0", backend.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey})
	require.NoError(t, err)

	for _, tt := range []struct{ url, wantErr string }{
		{"nats://a:4222,", "server 2 is empty"},
		{"nats://u:se%zzcret@a:4222", "server 1: invalid URL escape"},
		{"http://nats:4222", `scheme "http"`},
		{"tls://", "names no host"},
	} {
		err := backend.CheckNATSURL(tt.url)
		require.ErrorContains(t, err, tt.wantErr, tt.url)
		require.NotContains(t, err.Error(), "cret")
	}
	for _, good := range []string{"nats://a:4222", "tls://u:p@a:4222, tls://b:4222", "a:4222", "wss://nats.example.com"} {
		require.NoError(t, backend.CheckNATSURL(good), good)
	}
}
