package worker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// withControls gives a worker the operator's controls (the bundle's Redis).
func (b *bundle) withControls() workerOpts {
	return workerOpts{deps: func(d *worker.Deps) { d.Controls = b.db }}
}

// requireStaysQueued checks, for a while, that the job is not taken.
func (b *bundle) requireStaysQueued(id string) {
	b.t.Helper()
	require.Never(b.t, func() bool {
		rec, err := b.db.Get(context.Background(), id)
		return err != nil || rec.Status != proto.StatusInQueue
	}, 500*time.Millisecond, 20*time.Millisecond, "job %s must stay queued", id)
}

// A paused lane is not pulled and its jobs stay queued; the worker says
// in its heartbeat which lanes it skips; once the lane is resumed the job
// runs, without a restart.
func TestPausedLaneIsNotPulled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.startWorker("w1", worker.Config{}, b.withControls())
	b.heartbeat("w1", func(h proto.Heartbeat) bool { return h.State == proto.WorkerIdle })

	require.NoError(t, b.db.SetPaused(ctx, proto.DefaultPool, []proto.Lane{proto.LaneBatch}, true))
	require.NoError(t, b.q.PublishControl())
	lane := proto.PausedLane(proto.DefaultPool, proto.LaneBatch)
	b.heartbeat("w1", func(h proto.Heartbeat) bool { return slices.Contains(h.Paused, lane) })
	b.enqueue("held", txt2img("1", 64, 64, ""))
	b.requireStaysQueued("held")
	// The other lane still runs.
	job := &proto.Job{ID: "inter", Input: []byte(txt2img("2", 64, 64, "")), Source: proto.SourceAPI, Lane: proto.LaneInteractive}
	b.enqueueJob(job)
	b.wait("inter", proto.StatusCompleted)
	require.Equal(t, proto.StatusInQueue, b.getStatus("held"))

	require.NoError(t, b.db.SetPaused(ctx, proto.DefaultPool, []proto.Lane{proto.LaneBatch}, false))
	require.NoError(t, b.q.PublishControl())
	b.wait("held", proto.StatusCompleted)
	b.heartbeat("w1", func(h proto.Heartbeat) bool { return len(h.Paused) == 0 })
}

// A draining worker finishes the job in hand, pulls no more and says
// "draining"; undrained, it pulls again.
func TestDrainingWorkerFinishesAndStopsPulling(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.sim.Server.SetStepDelay(50 * time.Millisecond)
	b.startWorker("w1", worker.Config{}, b.withControls())
	b.enqueue("running", txt2img("1", 64, 64, ""))
	b.wait("running", proto.StatusInProgress)
	require.NoError(t, b.db.SetDraining(ctx, "w1", true))
	require.NoError(t, b.q.PublishControl())
	b.heartbeat("w1", func(h proto.Heartbeat) bool { return h.State == proto.WorkerDraining })
	b.enqueue("next", txt2img("2", 64, 64, ""))
	b.wait("running", proto.StatusCompleted)
	b.heartbeat("w1", func(h proto.Heartbeat) bool { return h.State == proto.WorkerDraining && h.JobID == "" })
	b.requireStaysQueued("next")

	require.NoError(t, b.db.SetDraining(ctx, "w1", false))
	require.NoError(t, b.q.PublishControl())
	b.wait("next", proto.StatusCompleted)
	b.heartbeat("w1", func(h proto.Heartbeat) bool { return h.State == proto.WorkerIdle })
}

func (b *bundle) getStatus(id string) proto.Status {
	b.t.Helper()
	rec, err := b.db.Get(context.Background(), id)
	require.NoError(b.t, err)
	return rec.Status
}
