package batch

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/queue"
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
	d := &downloader{blobs: store, http: srv.Client(), out: out}
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
		"001/a.png": "PNGDATA", "001/12_a.png": "PNGDATA", "001/v.mp4": "MP4",
		"001/text-11.txt": "hello", "001/inline.png": "INLINE", "001/escape.png": "PNGDATA",
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
	require.Equal(t, "002/a.png", r2.Files[2].Path)
	entries, err := os.ReadDir(filepath.Join(out, "002"))
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the whole file")
	require.False(t, filesPresent(out, r2))
}
