package s3_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/blob/blobtest"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3/s3test"
)

var gw s3test.Lazy

func TestMain(m *testing.M) {
	code := m.Run()
	gw.Stop()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

func TestConformance(t *testing.T) {
	t.Parallel()
	blobtest.Run(t, func(t *testing.T) blob.Store {
		st, _ := newStore(t, func(c *s3.Config) { c.Prefix = "p"; c.PartSize = s3.MinPartSize })
		return st
	})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func newStore(t *testing.T, tweak func(*s3.Config)) (*s3.Store, *s3test.Server) {
	t.Helper()
	srv := gw.Get(t)
	cfg := srv.Config(srv.Bucket(t))
	if tweak != nil {
		tweak(&cfg)
	}
	st, err := s3.New(cfg)
	require.NoError(t, err)
	return st, srv
}

func TestPutGetDeleteSmall(t *testing.T) {
	t.Parallel()
	st, _ := newStore(t, func(c *s3.Config) { c.Prefix = "/out/" })
	info, err := st.Put(ctx(t), "job1/a.png", "image/png", strings.NewReader("hello"))
	require.NoError(t, err)
	require.Equal(t, blob.Info{Key: "out/job1/a.png", Size: 5, Mime: "image/png"}, info)

	r, got, err := st.Get(ctx(t), "job1/a.png")
	require.NoError(t, err)
	data, err := io.ReadAll(r)
	require.NoError(t, err)
	r.Close()
	require.Equal(t, "hello", string(data))
	require.Equal(t, "image/png", got.Mime)
	require.EqualValues(t, 5, got.Size)

	// The presigned URL works without credentials, with the content type.
	u, err := st.URL(ctx(t), "job1/a.png")
	require.NoError(t, err)
	require.Contains(t, u, "X-Amz-Expires=604800", "7 days by default")
	resp, err := http.Get(u)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.Equal(t, "hello", string(body))
	require.Equal(t, "image/png", resp.Header.Get("Content-Type"))

	require.NoError(t, st.Delete(ctx(t), "job1/a.png"))
	require.NoError(t, st.Delete(ctx(t), "job1/a.png"), "deleting a missing key is fine")
	_, _, err = st.Get(ctx(t), "job1/a.png")
	require.ErrorIs(t, err, blob.ErrNotFound)
}

func TestMultipartStreamsLargeBody(t *testing.T) {
	t.Parallel()
	st, _ := newStore(t, func(c *s3.Config) { c.PartSize = s3.MinPartSize; c.Concurrency = 3 })
	const size = 3*s3.MinPartSize + 12345 // four parts, the last short
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.Reader, size), h)
	info, err := st.Put(ctx(t), "big.bin", "application/octet-stream", src)
	require.NoError(t, err)
	require.EqualValues(t, size, info.Size)

	r, got, err := st.Get(ctx(t), "big.bin")
	require.NoError(t, err)
	defer r.Close()
	require.EqualValues(t, size, got.Size)
	h2 := sha256.New()
	n, err := io.Copy(h2, r)
	require.NoError(t, err)
	require.EqualValues(t, size, n)
	require.Equal(t, h.Sum(nil), h2.Sum(nil))

	// Exactly one part: still a multipart upload of one part.
	info, err = st.Put(ctx(t), "one.bin", "", bytes.NewReader(make([]byte, s3.MinPartSize)))
	require.NoError(t, err)
	require.EqualValues(t, s3.MinPartSize, info.Size)
}

// failingReader fails after n bytes the way a cut HTTP body does.
type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	k := min(len(p), f.n)
	f.n -= k
	return k, nil
}

func TestFailedBodyAbortsUpload(t *testing.T) {
	t.Parallel()
	st, _ := newStore(t, func(c *s3.Config) { c.PartSize = s3.MinPartSize })
	_, err := st.Put(ctx(t), "broken.bin", "", &failingReader{n: 2*s3.MinPartSize + 1})
	require.ErrorContains(t, err, "read body")
	_, _, err = st.Get(ctx(t), "broken.bin")
	require.ErrorIs(t, err, blob.ErrNotFound, "nothing was completed")
}

func TestErrorsAreTranslated(t *testing.T) {
	t.Parallel()
	srv := gw.Get(t)
	st, err := s3.New(srv.Config("no-such-bucket-here"))
	require.NoError(t, err)
	_, err = st.Put(ctx(t), "x", "", strings.NewReader("x"))
	require.ErrorIs(t, err, blob.ErrNoBucket)

	cfg := srv.Config(srv.Bucket(t))
	cfg.SecretAccessKey = "wrong-secret"
	st, err = s3.New(cfg)
	require.NoError(t, err)
	_, err = st.Put(ctx(t), "x", "", strings.NewReader("x"))
	require.ErrorIs(t, err, blob.ErrDenied)
	require.NotContains(t, err.Error(), "wrong-secret")
}

// An endpoint that does not answer is named in no error: they reach a
// job's submitter.
func TestUnreachableEndpointIsNotNamed(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	st, err := s3.New(s3.Config{Endpoint: "http://" + addr, Bucket: "b", AccessKeyID: "a", SecretAccessKey: "s", MaxAttempts: 1})
	require.NoError(t, err)
	_, err = st.Put(ctx(t), "out/x", "", strings.NewReader("x"))
	require.ErrorContains(t, err, "connection refused")
	require.NotContains(t, err.Error(), addr)
	_, _, err = st.Get(ctx(t), "out/x")
	require.Error(t, err)
	require.NotContains(t, err.Error(), addr)
}

func TestPublicBaseURL(t *testing.T) {
	t.Parallel()
	st, err := s3.New(s3.Config{Endpoint: "https://s3.example.com", AccessKeyID: "a", SecretAccessKey: "b", Bucket: "bk",
		Prefix: "p", PublicBaseURL: "https://cdn.example.com/files/"})
	require.NoError(t, err)
	u, err := st.URL(context.Background(), "job 1/a#b.png")
	require.NoError(t, err)
	require.Equal(t, "https://cdn.example.com/files/p/job%201/a%23b.png", u)
}

func TestConfig(t *testing.T) {
	t.Parallel()
	ok := s3.Config{Endpoint: "http://127.0.0.1:9000", AccessKeyID: "a", SecretAccessKey: "b", Bucket: "x"}
	tests := []struct {
		name    string
		change  func(*s3.Config)
		wantErr string
	}{
		{name: "ok", change: func(*s3.Config) {}},
		{name: "no endpoint", change: func(c *s3.Config) { c.Endpoint = "" }, wantErr: "endpoint URL is empty"},
		{name: "bad endpoint", change: func(c *s3.Config) { c.Endpoint = "s3.example.com" }, wantErr: "want http(s)://"},
		{name: "no key", change: func(c *s3.Config) { c.AccessKeyID = "" }, wantErr: "credentials missing"},
		{name: "no secret", change: func(c *s3.Config) { c.SecretAccessKey = "" }, wantErr: "credentials missing"},
		{name: "no bucket", change: func(c *s3.Config) { c.Bucket = "" }, wantErr: "bucket name is empty"},
		{name: "bucket from AWS endpoint", change: func(c *s3.Config) {
			c.Bucket, c.Endpoint = "", "https://my-bucket.s3.eu-west-1.amazonaws.com"
		}},
		{name: "expiry", change: func(c *s3.Config) { c.URLExpiry = 8 * 24 * time.Hour }, wantErr: "URL expiry"},
		{name: "part size", change: func(c *s3.Config) { c.PartSize = 1 << 20 }, wantErr: "part size"},
		{name: "addressing", change: func(c *s3.Config) { c.Addressing = "dns" }, wantErr: "addressing style"},
		{name: "public URL", change: func(c *s3.Config) { c.PublicBaseURL = "cdn" }, wantErr: "public base URL"},
	}
	for _, tt := range tests {
		c := ok
		tt.change(&c)
		err := c.Validate()
		if tt.wantErr == "" {
			require.NoError(t, err, tt.name)
			continue
		}
		require.ErrorContains(t, err, tt.wantErr, tt.name)
	}

	// An AWS virtual-host endpoint names the bucket and the region.
	st, err := s3.New(s3.Config{Endpoint: "https://my-bucket.s3.eu-west-1.amazonaws.com", AccessKeyID: "a", SecretAccessKey: "b"})
	require.NoError(t, err)
	require.Equal(t, "my-bucket", st.Bucket())
	u, err := st.URL(context.Background(), "k.png")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(u, "https://my-bucket.s3.eu-west-1.amazonaws.com/k.png?"), u)
	require.Contains(t, u, "eu-west-1")
}

// TestPartBuffersOutliveCollections: a store makes one upload's worth of
// part buffers (Concurrency+1) and reuses them across uploads, however
// often the garbage collector runs, so a worker streaming large outputs
// holds that much and no more.
func TestPartBuffersOutliveCollections(t *testing.T) {
	t.Parallel()
	st, _ := newStore(t, func(c *s3.Config) { c.PartSize = s3.MinPartSize; c.Concurrency = 2 })
	for i := range 4 {
		runtime.GC()
		runtime.GC() // twice: a sync.Pool is empty after two
		info, err := st.Put(ctx(t), fmt.Sprintf("big-%d.bin", i), "", io.LimitReader(zeros{}, 4*s3.MinPartSize+1))
		require.NoError(t, err)
		require.EqualValues(t, 4*s3.MinPartSize+1, info.Size)
	}
	require.LessOrEqual(t, st.PartsMade(), int64(3), "one upload's buffers, reused")
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
