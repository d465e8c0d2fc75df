package rdb_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestControls: pausing and resuming lanes and draining workers are read
// back as the workers and the console see them.
func TestControls(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		c, err := b.db.ReadControls(b.ctx)
		require.NoError(t, err)
		require.Equal(t, &rdb.Controls{Paused: []string{}, Draining: []string{}}, c)
		require.NoError(t, b.db.SetPaused(b.ctx, "p", []proto.Lane{proto.LaneInteractive, proto.LaneBatch}, true))
		require.NoError(t, b.db.SetPaused(b.ctx, "q", []proto.Lane{proto.LaneBatch}, true))
		require.NoError(t, b.db.SetDraining(b.ctx, "w2", true))
		require.NoError(t, b.db.SetDraining(b.ctx, "w1", true))
		c, err = b.db.ReadControls(b.ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"p/batch", "p/interactive", "q/batch"}, c.Paused)
		require.Equal(t, []string{"w1", "w2"}, c.Draining)
		require.NoError(t, b.db.SetPaused(b.ctx, "p", []proto.Lane{proto.LaneInteractive}, false))
		require.NoError(t, b.db.SetDraining(b.ctx, "w2", false))
		c, err = b.db.ReadControls(b.ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"p/batch", "q/batch"}, c.Paused)
		require.Equal(t, []string{"w1"}, c.Draining)
	})
}

// TestRecentJobs: every record made enters the recent index, newest
// first; a filter picks among them; expired records leave the index when
// they are met.
func TestRecentJobs(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		for i := range 5 {
			job := &proto.Job{ID: fmt.Sprintf("r%d", i), Pool: "p", Lane: proto.LaneBatch, BatchID: fmt.Sprintf("b%d", i%2)}
			_, _, err := b.db.Create(b.ctx, rdb.ParamsFor(job), time.Time{}, false)
			require.NoError(t, err)
		}
		all, err := b.db.RecentJobs(b.ctx, 0, nil)
		require.NoError(t, err)
		require.Len(t, all, 5)
		ids := map[string]bool{}
		for _, r := range all {
			ids[r.ID] = true
		}
		require.Len(t, ids, 5)
		odd, err := b.db.RecentJobs(b.ctx, 10, func(r *proto.Record) bool { return r.BatchID == "b1" })
		require.NoError(t, err)
		require.Len(t, odd, 2)
		two, err := b.db.RecentJobs(b.ctx, 2, nil)
		require.NoError(t, err)
		require.Len(t, two, 2)

		require.NoError(t, b.rdb.Del(b.ctx, b.key("r3")).Err())
		all, err = b.db.RecentJobs(b.ctx, 0, nil)
		require.NoError(t, err)
		require.Len(t, all, 4)
		n, err := b.rdb.ZCard(b.ctx, b.prefix+proto.RecentKey).Result()
		require.NoError(t, err)
		require.EqualValues(t, 4, n)
	})
}

// TestLaneRates: every job that ends counts for its lane's jobs/min.
func TestLaneRates(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		for i := range 3 {
			lane := proto.LaneBatch
			if i == 0 {
				lane = proto.LaneInteractive
			}
			job := &proto.Job{ID: fmt.Sprintf("e%d", i), Pool: "p", Lane: lane}
			_, _, err := b.db.Create(b.ctx, rdb.ParamsFor(job), time.Time{}, false)
			require.NoError(t, err)
			_, err = b.db.CancelQueued(b.ctx, job.ID)
			require.NoError(t, err)
		}
		rates, err := b.db.LaneRates(b.ctx)
		require.NoError(t, err)
		// A minute's turn between the ends and the read weighs the
		// earlier minute by almost 1.
		require.Len(t, rates, 2)
		require.InDelta(t, 1, rates["p/interactive"], 0.05)
		require.InDelta(t, 2, rates["p/batch"], 0.05)
	})
}
