package s3_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func s3Guard(t *testing.T, allow ...string) *ssrf.Guard {
	t.Helper()
	g, err := ssrf.New(ssrf.Config{Use: "s3Config.endpointUrl", Allow: allow, AllowHTTP: true, AllowSetting: "S3_CONFIG_ALLOW"})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	return g
}

// TestForRequestIsGuarded: a request's store reaches its endpoint only
// through the guard, refuses what it refuses without a retry and without
// a connection, and works on an allowed endpoint.
func TestForRequestIsGuarded(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t, 30*time.Second)
	_, err := s3.ForRequest(nil, &proto.S3Config{AccessID: "a", AccessSecret: "b", BucketName: "bk", EndpointURL: "https://s3.example.com"}, "", nil)
	require.ErrorContains(t, err, "needs an SSRF guard")

	inside := testenv.StartCountingServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	c := &proto.S3Config{AccessID: "a", AccessSecret: "b", BucketName: "bk", EndpointURL: inside.URL}
	_, err = s3.ForRequest(nil, c, "", s3Guard(t))
	require.ErrorIs(t, err, ssrf.ErrForbidden)
	require.EqualError(t, err, "s3Config.endpointUrl: address not allowed: "+inside.HostPort()+" is a loopback address (S3_CONFIG_ALLOW lists exceptions)")

	// A name that resolves inside passes the early check and is refused
	// when it is dialled: once, not retried.
	c.EndpointURL = "http://localhost:" + strings.TrimPrefix(inside.HostPort(), "127.0.0.1:")
	st, err := s3.ForRequest(nil, c, "", s3Guard(t))
	require.NoError(t, err)
	_, err = st.Put(ctx, "k", "", strings.NewReader("x"))
	require.ErrorIs(t, err, ssrf.ErrForbidden)
	require.Regexp(t, `^put k: s3Config\.endpointUrl: address not allowed: (127\.0\.0\.1|\[::1\]):\d+ is a loopback address`, err.Error())
	require.Equal(t, 0, inside.Connections(t))

	// Allowed: the real thing works, with the base's tuning but not its
	// HTTP client.
	srv := gw.Get(t)
	bucket := srv.Bucket(t)
	baseCfg := srv.Config(srv.Bucket(t))
	baseCfg.HTTPClient = &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) {
		return nil, errors.New("the base's client must not be borrowed")
	})}
	base, err := s3.New(baseCfg)
	require.NoError(t, err)
	st, err = s3.ForRequest(base, &proto.S3Config{AccessID: srv.AccessKey, AccessSecret: srv.SecretKey, BucketName: bucket,
		EndpointURL: srv.Endpoint, ObjectPath: "req"}, "", s3Guard(t, strings.TrimPrefix(srv.Endpoint, "http://")))
	require.NoError(t, err)
	_, err = st.Put(ctx, "k", "text/plain", strings.NewReader("hello"))
	require.NoError(t, err)
	_, _, err = st.Get(ctx, "missing")
	require.ErrorIs(t, err, blob.ErrNotFound)
	require.EqualError(t, err, "get req/missing: blob not found (HTTP 404 Not Found)", "the sentinel and the status, not the service's text")
}

func TestEndpointURLIsNeverEchoed(t *testing.T) {
	t.Parallel()
	for _, ep := range []string{"https://key:secret@s3.example.com", "https://s3.example.com/?X-Token=secret", "https://s3.example.com/#secret",
		"ftp://secret@s3.example.com", "http://%zz/secret"} {
		_, err := s3.New(s3.Config{Endpoint: ep, AccessKeyID: "a", SecretAccessKey: "b", Bucket: "bk"})
		require.Error(t, err, ep)
		require.NotContains(t, err.Error(), "secret", ep)
	}
	require.Equal(t, "s3://bk@https://s3.example.com/b?…/p", proto.S3Config{BucketName: "bk", EndpointURL: "https://k:secret@s3.example.com/b?X-Token=secret", ObjectPath: "p"}.String())
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
