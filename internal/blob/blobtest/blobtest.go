package blobtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/blob"
)

// Run runs the suite; newStore returns an empty store for one subtest.
// Keys are given to Put and Get as is; Info.Key may add a prefix.
func Run(t *testing.T, newStore func(t *testing.T) blob.Store) {
	t.Run("put get delete", func(t *testing.T) {
		t.Parallel()
		st := newStore(t)
		ctx := testCtx(t)
		info, err := st.Put(ctx, "out/j1/1/9/a.png", "image/png", bytes.NewReader([]byte("hello")))
		require.NoError(t, err)
		require.EqualValues(t, 5, info.Size)
		require.Equal(t, "image/png", info.Mime)

		r, got, err := st.Get(ctx, "out/j1/1/9/a.png")
		require.NoError(t, err)
		data, err := io.ReadAll(r)
		require.NoError(t, err)
		require.NoError(t, r.Close())
		require.Equal(t, "hello", string(data))
		require.EqualValues(t, 5, got.Size)
		require.Equal(t, "image/png", got.Mime)

		require.NoError(t, st.Delete(ctx, "out/j1/1/9/a.png"))
		require.NoError(t, st.Delete(ctx, "out/j1/1/9/a.png"), "a missing blob is not an error")
		_, _, err = st.Get(ctx, "out/j1/1/9/a.png")
		require.ErrorIs(t, err, blob.ErrNotFound)
	})
	t.Run("missing", func(t *testing.T) {
		t.Parallel()
		_, _, err := newStore(t).Get(testCtx(t), "never/written")
		require.ErrorIs(t, err, blob.ErrNotFound)
	})
	t.Run("replace", func(t *testing.T) {
		t.Parallel()
		st := newStore(t)
		ctx := testCtx(t)
		_, err := st.Put(ctx, "k", "text/plain", bytes.NewReader([]byte("first")))
		require.NoError(t, err)
		_, err = st.Put(ctx, "k", "text/plain", bytes.NewReader([]byte("second, longer")))
		require.NoError(t, err)
		r, _, err := st.Get(ctx, "k")
		require.NoError(t, err)
		defer r.Close()
		data, _ := io.ReadAll(r)
		require.Equal(t, "second, longer", string(data))
	})
	t.Run("empty", func(t *testing.T) {
		t.Parallel()
		st := newStore(t)
		info, err := st.Put(testCtx(t), "empty", "", bytes.NewReader(nil))
		require.NoError(t, err)
		require.Zero(t, info.Size)
	})
	t.Run("large streamed", func(t *testing.T) {
		t.Parallel()
		st := newStore(t)
		ctx := testCtx(t)
		const size = 17<<20 + 3 // several chunks or parts, the last short
		h := sha256.New()
		info, err := st.Put(ctx, "big", "application/octet-stream", io.TeeReader(io.LimitReader(rand.Reader, size), h))
		require.NoError(t, err)
		require.EqualValues(t, size, info.Size)
		r, _, err := st.Get(ctx, "big")
		require.NoError(t, err)
		defer r.Close()
		h2 := sha256.New()
		n, err := io.Copy(h2, r)
		require.NoError(t, err)
		require.EqualValues(t, size, n)
		require.Equal(t, h.Sum(nil), h2.Sum(nil))
	})
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}
