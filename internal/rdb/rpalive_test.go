package rdb_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestMarkAlive: the first job-stop poll makes a RunPod worker's mark of
// life; other signs only move an existing one on; a mark that is not a
// number is reported as corrupt.
func TestMarkAlive(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		_, ok, err := b.db.LastAlive(b.ctx, "w1")
		require.NoError(t, err)
		require.False(t, ok, "no mark yet")
		at := time.UnixMilli(time.Now().UnixMilli())
		require.NoError(t, b.db.MarkAlive(b.ctx, "w1", at, false))
		_, ok, err = b.db.LastAlive(b.ctx, "w1")
		require.NoError(t, err)
		require.False(t, ok, "a sign other than a job-stop poll makes no mark")

		require.NoError(t, b.db.MarkAlive(b.ctx, "w1", at, true))
		got, ok, err := b.db.LastAlive(b.ctx, "w1")
		require.NoError(t, err)
		require.True(t, ok)
		require.True(t, at.Equal(got), "%v != %v", at, got)
		later := at.Add(1500 * time.Millisecond)
		require.NoError(t, b.db.MarkAlive(b.ctx, "w1", later, false))
		got, _, err = b.db.LastAlive(b.ctx, "w1")
		require.NoError(t, err)
		require.True(t, later.Equal(got), "moved on")
		ttl, err := b.rdb.PTTL(b.ctx, b.prefix+proto.RunPodAliveKey("w1")).Result()
		require.NoError(t, err)
		require.Greater(t, ttl, time.Hour, "the mark outlives any lease, and then goes")

		require.NoError(t, b.rdb.Set(b.ctx, b.prefix+proto.RunPodAliveKey("w2"), "soon", 0).Err())
		_, _, err = b.db.LastAlive(b.ctx, "w2")
		var ce *rdb.CorruptError
		require.ErrorAs(t, err, &ce)
		require.ErrorIs(t, err, rdb.ErrCorrupt)
	})
}
