package worker_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// executed lists the filename prefixes of the prompts the emulator ran,
// in the order they started (from /history's execution_start), and the
// prompts it was given but never ran.
func (b *bundle) executed() (order []string, neverRan int) {
	b.t.Helper()
	type run struct {
		prefix string
		start  float64
	}
	var runs []run
	for _, pid := range promptIDs(b.sim) {
		h := getJSON(b.t, b.sim.URL+"/history/"+pid)
		entry, ok := h[pid].(map[string]any)
		if !ok {
			neverRan++
			continue
		}
		wf := entry["prompt"].([]any)[2].(map[string]any)
		prefix := wf["9"].(map[string]any)["inputs"].(map[string]any)["filename_prefix"].(string)
		var start float64
		for _, m := range entry["status"].(map[string]any)["messages"].([]any) {
			if m := m.([]any); m[0] == "execution_start" {
				start = m[1].(map[string]any)["timestamp"].(float64)
			}
		}
		runs = append(runs, run{prefix, start})
	}
	for i := range runs { // few: insertion sort, stable
		for j := i; j > 0 && runs[j].start < runs[j-1].start; j-- {
			runs[j], runs[j-1] = runs[j-1], runs[j]
		}
	}
	for _, r := range runs {
		order = append(order, r.prefix)
	}
	return order, neverRan
}

// TestPrefetchedBatchJobGivesWayToInteractive: at the default PREFETCH a
// batch job is queued in ComfyUI behind the running one; an interactive
// job arriving then has it deleted from ComfyUI's queue and given back
// without counting an attempt, and runs right after the running prompt,
// so it waits for one job, not two. The batch job runs after it.
func TestPrefetchedBatchJobGivesWayToInteractive(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2}) // the running prompt holds until released
	evs := b.events("prefetched")
	b.startWorker("w1", worker.Config{Prefetch: worker.DefaultPrefetch})
	b.enqueue("running", input(sampler("1", 4)+save("9", "running")))
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
	b.enqueue("prefetched", input(sampler("2", 4)+save("9", "prefetched")))
	eventually(t, func() bool { return b.sim.Stats().QueueRemaining == 2 }, "the batch job was not prefetched into ComfyUI")
	require.Equal(t, "w1", b.wait("prefetched", proto.StatusInProgress).WorkerID)

	b.enqueueJob(&proto.Job{ID: "urgent", Source: proto.SourceAPI, Input: json.RawMessage(input(sampler("3", 4) + save("9", "urgent")))})
	// The batch prompt is deleted, the batch job given back and, the
	// worker's slot being free again, taken again behind the urgent one.
	eventually(t, func() bool {
		return b.sim.Stats().QueueRemaining == 3 && len(evs.of(2)) == 1
	}, "the prefetched batch job did not give way (events %v / %v)", evs.of(1), evs.of(2))
	require.Equal(t, []string{"IN_PROGRESS w1 ", "IN_QUEUE w1 gave way to an interactive job (it had not started in ComfyUI)"}, evs.of(1))
	require.Equal(t, "w1", b.wait("urgent", proto.StatusInProgress).WorkerID)

	b.sim.SetFault(comfysim.Fault{})
	for _, id := range []string{"running", "urgent", "prefetched"} {
		b.wait(id, proto.StatusCompleted)
	}
	b.requireDrained()
	order, neverRan := b.executed()
	require.Equal(t, []string{"running", "urgent", "prefetched"}, order, "the interactive job ran right after the running one")
	require.Equal(t, 1, neverRan, "the batch prompt given back never ran")
	attempts, err := b.db.AttemptErrors(context.Background(), "prefetched")
	require.NoError(t, err)
	require.Empty(t, attempts, "giving way cost the batch job no attempt")
	rec := b.wait("prefetched", proto.StatusCompleted)
	require.Equal(t, 2, rec.Attempt)
}

// TestBatchTurnJobDoesNotGiveWay: the batch job taken on the batch lanes'
// turn (BATCH_EVERY) is not given back, so batch work still moves under
// sustained interactive load.
func TestBatchTurnJobDoesNotGiveWay(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	b.startWorker("w1", worker.Config{Prefetch: 1, BatchEvery: 1}) // every take is the batch lanes' turn
	b.enqueue("running", input(sampler("1", 4)+save("9", "running")))
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
	b.enqueue("prefetched", input(sampler("2", 4)+save("9", "prefetched")))
	eventually(t, func() bool { return b.sim.Stats().QueueRemaining == 2 }, "the batch job was not prefetched into ComfyUI")
	b.enqueueJob(&proto.Job{ID: "urgent", Source: proto.SourceAPI, Input: json.RawMessage(input(sampler("3", 4) + save("9", "urgent")))})
	b.wait("running", proto.StatusInProgress)

	b.sim.SetFault(comfysim.Fault{})
	for _, id := range []string{"running", "urgent", "prefetched"} {
		b.wait(id, proto.StatusCompleted)
	}
	order, neverRan := b.executed()
	require.Equal(t, []string{"running", "prefetched", "urgent"}, order)
	require.Zero(t, neverRan)
	require.Equal(t, 1, b.wait("prefetched", proto.StatusCompleted).Attempt)
}

// TestDefaultPrefetchLeavesNoGap: at the default PREFETCH the worker
// queues the next job's prompt while the running one runs, so ComfyUI
// starts it the moment the first ends. The emulator's timestamps are
// whole milliseconds, so a hand-over reads 0 or 1 ms; the median of 2 ms
// leaves room for a loaded machine (a goroutine not scheduled for a
// while), and is still far below what finishing one job and taking the
// next costs without prefetching (tens of milliseconds here).
func TestDefaultPrefetchLeavesNoGap(t *testing.T) {
	t.Parallel()
	// 20-step jobs of about 400 ms: time enough to take and queue the next
	// one while a job runs, even on a loaded machine.
	b := setup(t, comfysim.Config{StepDelay: 20 * time.Millisecond})
	b.startWorker("w1", worker.Config{Prefetch: worker.DefaultPrefetch})
	ids := []string{"g1", "g2", "g3", "g4", "g5"}
	for i, id := range ids {
		b.enqueue(id, input(sampler(string(rune('1'+i)), 20)+save("9", id)))
	}
	eventually(t, func() bool { return b.sim.Stats().QueueRemaining == 2 }, "the next prompt was never queued while one ran")
	for _, id := range ids {
		b.wait(id, proto.StatusCompleted)
	}
	var spans [][2]float64
	for _, pid := range promptIDs(b.sim) {
		h := getJSON(t, b.sim.URL+"/history/"+pid)
		entry := h[pid].(map[string]any)
		var span [2]float64
		for _, m := range entry["status"].(map[string]any)["messages"].([]any) {
			switch m := m.([]any); m[0] {
			case "execution_start":
				span[0] = m[1].(map[string]any)["timestamp"].(float64)
			case "execution_success":
				span[1] = m[1].(map[string]any)["timestamp"].(float64)
			}
		}
		spans = append(spans, span)
	}
	require.Len(t, spans, len(ids))
	var gaps []float64
	for i := 1; i < len(spans); i++ {
		gaps = append(gaps, spans[i][0]-spans[i-1][1])
	}
	sorted := slices.Clone(gaps)
	slices.Sort(sorted)
	require.LessOrEqual(t, sorted[len(sorted)/2], 2.0, "median gap between prompts, gaps %v", gaps)
}

// TestPrefetchedJobOfADeadWorkerIsHandedBack: a prefetched job is claimed
// and leased like the running one. The worker holding both loses Redis
// (as a dead one would, it renews nothing): once the leases lapse the
// sweeper hands both jobs back, another worker runs them, and each
// completes once.
func TestPrefetchedJobOfADeadWorkerIsHandedBack(t *testing.T) {
	t.Parallel()
	const leaseTTL = 1500 * time.Millisecond
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2}) // w1's prompts never finish
	b.startSweeper(lifecycle.SweeperConfig{Every: 25 * time.Millisecond})
	var cut partition
	b.startWorker("w1", worker.Config{LeaseTTL: leaseTTL, Prefetch: worker.DefaultPrefetch}, workerOpts{db: b.partitionedDB(&cut)})
	b.enqueue("running", input(sampler("1", 4)+save("9", "running")))
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
	b.enqueue("prefetched", input(sampler("2", 4)+save("9", "prefetched")))
	eventually(t, func() bool { return b.sim.Stats().QueueRemaining == 2 }, "the job was not prefetched into ComfyUI")
	require.Equal(t, "w1", b.wait("prefetched", proto.StatusInProgress).WorkerID)

	sim2 := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
	cut.cut.Store(true)
	b.startWorker("w2", worker.Config{LeaseTTL: leaseTTL}, workerOpts{sim: sim2})
	for _, id := range []string{"running", "prefetched"} {
		rec := b.wait(id, proto.StatusCompleted)
		require.Equal(t, "w2", rec.WorkerID, "job %s", id)
		require.Equal(t, 2, rec.Attempt, "job %s", id)
	}
	cut.cut.Store(false)
	// w1's renewals now say its leases are lost: it stops both prompts.
	eventually(t, func() bool {
		st := b.sim.Stats()
		return st.Running == "" && st.QueueRemaining == 0
	}, "w1's prompts are still in its ComfyUI")
	b.requireDrained()
	require.Zero(t, b.sim.Stats().PromptsSucceeded, "w1 finished nothing")
	require.EqualValues(t, 2, sim2.Stats().PromptsSucceeded)
	counts, err := b.db.Counts(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 2, counts[proto.StatusCompleted], "each completed once")
}

// TestPrefetchLeavesNewJobsToIdleWorkers replays what the default
// PREFETCH did to RunPod's SDK test: a worker busy with a long job took
// the next job for its prefetch slot while another worker sat idle, so
// that job waited for the long one. A busy worker now prefetches only a
// job that already waits; a new job goes to the worker waiting for work.
func TestPrefetchLeavesNewJobsToIdleWorkers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2}) // w1's job runs until the test ends
	cfg := worker.Config{Prefetch: worker.DefaultPrefetch}
	b.startWorker("w1", cfg)
	b.enqueueJob(&proto.Job{ID: "long", Source: proto.SourceAPI, Input: json.RawMessage(input(sampler("1", 4) + save("9", "long")))})
	require.Equal(t, "w1", b.wait("long", proto.StatusInProgress).WorkerID)
	idle := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
	b.startWorker("w2", cfg, workerOpts{sim: idle})
	for i := range 4 {
		b.heartbeat("w2", func(w proto.Heartbeat) bool { return w.State == proto.WorkerIdle })
		id := "next-" + string(rune('a'+i))
		b.enqueueJob(&proto.Job{ID: id, Source: proto.SourceAPI, Input: json.RawMessage(input(sampler("2", 2) + save("9", id)))})
		// The job takes a few milliseconds: its end says who ran it.
		require.Equal(t, "w2", b.wait(id, proto.StatusCompleted).WorkerID, "job %s went to the busy worker", id)
	}
	require.Equal(t, proto.StatusInProgress, b.wait("long", proto.StatusInProgress).Status)
}
