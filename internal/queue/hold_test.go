package queue_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func heldJob(id, tenant string) *proto.Job {
	j := job(id, proto.LaneBatch)
	j.Pool, j.Tenant = "sdxl", tenant
	return j
}

// TestHoldKeepsEachTenantsOrderAndReleasesOnce: held jobs are counted per
// lane and tenant, each tenant's come back oldest first, a release puts
// the job on its lane and out of the hold, and a second release of the
// same job (another dispatcher's, or one repeated after a crash) queues
// nothing twice.
func TestHoldKeepsEachTenantsOrderAndReleasesOnce(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	for _, j := range []*proto.Job{heldJob("a1", "acme"), heldJob("b1", "beta"), heldJob("a2", "acme")} {
		require.NoError(t, q.HoldJob(ctx, j, j.ID))
	}
	require.ErrorIs(t, q.HoldJob(ctx, heldJob("a1", "acme"), "a1"), queue.ErrDuplicate, "held twice under one message id")

	holds, err := q.Holds(ctx)
	require.NoError(t, err)
	lane := queue.LaneKey{Pool: "sdxl", Lane: proto.LaneBatch}
	require.Equal(t, map[queue.LaneKey]map[string]uint64{lane: {"acme": 2, "beta": 1}}, holds)

	h, err := q.FirstHeld(ctx, "sdxl", proto.LaneBatch, "acme")
	require.NoError(t, err)
	require.Equal(t, "a1", h.JobID, "a tenant's oldest first")
	require.Equal(t, "acme", h.Tenant)
	require.NoError(t, q.Release(ctx, h))
	require.NoError(t, q.Release(ctx, h), "a repeated release is no error")

	onLane, err := q.LanesWaiting(ctx)
	require.NoError(t, err)
	require.Equal(t, map[queue.LaneKey]uint64{lane: 1}, onLane, "released once, onto its lane")
	h, err = q.FirstHeld(ctx, "sdxl", proto.LaneBatch, "acme")
	require.NoError(t, err)
	require.Equal(t, "a2", h.JobID)

	// A held job counts as queued for its lane, its pool and the fleet.
	queued, err := q.LaneQueued(ctx, "sdxl", proto.LaneBatch)
	require.NoError(t, err)
	require.EqualValues(t, 3, queued, "one on the lane, two held")
	queued, running, err := q.PoolDepth(ctx, "sdxl")
	require.NoError(t, err)
	require.Equal(t, [2]uint64{3, 0}, [2]uint64{queued, running})
	queued, _, err = q.Depth(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 3, queued)

	// Purge-queue's walk finds held jobs with their pool and tenant.
	var found []queue.Queued
	require.NoError(t, q.EachQueued(ctx, "", "", func(m queue.Queued) error {
		found = append(found, m)
		return nil
	}))
	require.Len(t, found, 3)
	require.Equal(t, proto.HoldStream, found[0].Stream)
	require.Equal(t, "b1", found[0].JobID, "the hold's oldest after a1's release")
	require.Equal(t, "beta", found[0].Tenant)
	require.Equal(t, "sdxl", found[0].Pool)
	require.Equal(t, proto.JobsStream, found[2].Stream)

	require.NoError(t, q.DropHeld(ctx, h))
	_, err = q.FirstHeld(ctx, "sdxl", proto.LaneBatch, "acme")
	require.ErrorIs(t, err, queue.ErrNoMessage, "acme has nothing held left")
}

// TestHeldConsumerCountsThePoolsHeldJobs: the never-pulled consumer the
// autoscaler reads (proto.HoldConsumer) has the pool's held jobs, and only
// those, as its backlog, and a release takes a job out of it.
func TestHeldConsumerCountsThePoolsHeldJobs(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, q.EnsureLaneConsumers(ctx, "sdxl"))
	for _, j := range []*proto.Job{heldJob("a1", "acme"), heldJob("a2", "acme")} {
		require.NoError(t, q.HoldJob(ctx, j, j.ID))
	}
	other := heldJob("elsewhere", "acme")
	other.Pool = "flux"
	require.NoError(t, q.HoldJob(ctx, other, other.ID))

	pending := func() uint64 {
		c, err := n.JS.Consumer(ctx, proto.HoldStream, proto.HoldConsumer("sdxl"))
		require.NoError(t, err)
		info, err := c.Info(ctx)
		require.NoError(t, err)
		return info.NumPending
	}
	require.EqualValues(t, 2, pending(), "sdxl's two held jobs, not flux's")
	h, err := q.FirstHeld(ctx, "sdxl", proto.LaneBatch, "acme")
	require.NoError(t, err)
	require.NoError(t, q.Release(ctx, h))
	require.EqualValues(t, 1, pending(), "a released job leaves the held backlog")
}
