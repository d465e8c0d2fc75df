package batch

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

func TestDownloadEveryKind(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t, 30*time.Second)
	n := testenv.StartNATS(t)
	store, err := queue.OpenObjectStore(ctx, n.JS, queue.ObjectStoreConfig{Bucket: "t-blobs"})
	require.NoError(t, err)
	_, err = store.Put(ctx, "out/j/1/9/a.png", "image/png", strings.NewReader("PNGDATA"))
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v.mp4" {
			w.Write([]byte("MP4"))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()

	out := t.TempDir()
	guard, err := DownloadGuard([]string{strings.TrimPrefix(srv.URL, "http://")}, true, Endpoints{})
	require.NoError(t, err)
	t.Cleanup(guard.Close)
	d := &downloader{blobs: store, guard: guard, out: out}
	r := Result{Item: "001", Files: []File{
		{Kind: "images", Filename: "a.png", Blob: "out/j/1/9/a.png", Size: 7, NodeID: "9"},
		{Kind: "images", Filename: "a.png", Blob: "out/j/1/9/a.png", Size: 7, NodeID: "12"},
		{Kind: "videos", Filename: "v.mp4", URL: srv.URL + "/v.mp4"},
		{Kind: "text", NodeID: "11", data: "hello"},
		{Kind: "images", Filename: "inline.png", data: base64.StdEncoding.EncodeToString([]byte("INLINE"))},
		{Kind: "images", Filename: "../../escape.png", Blob: "out/j/1/9/a.png"},
	}}
	d.fetch(ctx, &r)
	require.Empty(t, r.DownloadError)
	want := map[string]string{
		"001/001_a.png": "PNGDATA", "001/001_12_a.png": "PNGDATA", "001/001_v.mp4": "MP4",
		"001/001_text-11.txt": "hello", "001/001_inline.png": "INLINE", "001/001_escape.png": "PNGDATA",
	}
	for _, f := range r.Files {
		data, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(f.Path)))
		require.NoError(t, err, f.Path)
		require.Equal(t, want[f.Path], string(data), f.Path)
		delete(want, f.Path)
	}
	require.Empty(t, want)
	require.True(t, filesPresent(out, r))

	// Missing blobs and bad URLs are reported, the rest still downloaded,
	// and no partial file is left behind.
	r2 := Result{Item: "002", Files: []File{
		{Kind: "images", Filename: "gone.png", Blob: "out/j/1/9/gone.png"},
		{Kind: "videos", Filename: "missing.mp4", URL: srv.URL + "/missing.mp4"},
		{Kind: "images", Filename: "a.png", Blob: "out/j/1/9/a.png"},
	}}
	d.fetch(context.Background(), &r2)
	require.Contains(t, r2.DownloadError, "the blob is gone")
	require.Empty(t, r2.Files[0].Path)
	require.Empty(t, r2.Files[1].Path)
	require.Equal(t, "002/002_a.png", r2.Files[2].Path)
	entries, err := os.ReadDir(filepath.Join(out, "002"))
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the whole file")
	require.False(t, filesPresent(out, r2))
}

// TestDownloadsAreGuarded: the CLI fetches s3_url outputs through the SSRF
// guard (the URLs come from job records), allows the dev stack's own S3,
// and never repeats a URL's query or what the server said.
func TestDownloadsAreGuarded(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t, 30*time.Second)
	inside := testenv.StartCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte("EVIL-BODY"))
			return
		}
		_, _ = w.Write([]byte("DATA"))
	}))
	port := inside.Port()
	fetchOne := func(t *testing.T, g *ssrf.Guard, rawURL string) string {
		t.Helper()
		d := &downloader{guard: g, out: t.TempDir()}
		r := Result{Item: "001", Files: []File{{Kind: "images", Filename: "x.png", URL: rawURL}}}
		d.fetch(ctx, &r)
		return r.DownloadError
	}
	guard := func(t *testing.T, allow []string, allowHTTP bool, ep Endpoints) *ssrf.Guard {
		t.Helper()
		g, err := DownloadGuard(allow, allowHTTP, ep)
		require.NoError(t, err)
		t.Cleanup(g.Close)
		return g
	}

	none := guard(t, nil, true, Endpoints{})
	got := fetchOne(t, none, fmt.Sprintf("http://2130706433:%d/x.png?X-Amz-Signature=sig-secret", port))
	require.Equal(t, fmt.Sprintf("download x.png from http://2130706433:%d/x.png?…: download: address not allowed: 127.0.0.1:%d is a loopback address (DOWNLOAD_URL_ALLOW lists exceptions)", port, port), got)
	got = fetchOne(t, none, fmt.Sprintf("http://localhost:%d/x.png", port))
	require.Contains(t, got, "download: address not allowed")
	require.Equal(t, 0, inside.Connections(t), "nothing reached the loopback service")

	httpsOnly := guard(t, []string{inside.HostPort()}, false, Endpoints{})
	require.Contains(t, fetchOne(t, httpsOnly, inside.URL+"/x.png"), "download: only https URLs are accepted, not http (DOWNLOAD_URL_ALLOW_HTTP allows http)")
	require.Equal(t, 0, inside.Connections(t))

	// The dev stack's own S3, from its stack file: allowed on its port,
	// http included.
	dev := guard(t, nil, false, Endpoints{S3Origins: []string{inside.URL}})
	require.Empty(t, fetchOne(t, dev, inside.URL+"/x.png?X-Amz-Signature=sig"))
	require.Equal(t, 1, inside.Connections(t))
	got = fetchOne(t, dev, inside.URL+"/fail?X-Amz-Signature=sig-secret")
	require.Equal(t, "download x.png from "+inside.URL+"/fail?…: GET answered HTTP 500 Internal Server Error", got)
	require.Contains(t, fetchOne(t, dev, fmt.Sprintf("http://127.0.0.1:%d/x.png", port+1)), "allows it on other ports only", "its port only")

	_, err := DownloadGuard([]string{"10.0.0.0/99"}, false, Endpoints{})
	require.ErrorContains(t, err, `DOWNLOAD_URL_ALLOW: allow-list entry "10.0.0.0/99"`)
}
