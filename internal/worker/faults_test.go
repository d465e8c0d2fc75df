package worker_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestWebSocketDroppedInEveryJob runs 200 jobs on two workers, each with
// its own ComfyUI, prefetching one job, and drops the WebSockets in the
// middle of every prompt: every job completes with its own output.
func TestWebSocketDroppedInEveryJob(t *testing.T) {
	t.Parallel()
	const jobs = 200
	fault := comfysim.Fault{DropWebSocketsAtStep: 2}
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Dir: shmDir(t)})
	sim2 := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond, Dir: shmDir(t)})
	b.sim.SetFault(fault)
	sim2.SetFault(fault)
	quietComfy := func(c *comfy.Config) { c.ReconnectDelay = 5 * time.Millisecond }
	cfg := worker.Config{Prefetch: 1}
	b.startWorker("w1", cfg, workerOpts{comfy: quietComfy, logger: quietLogger(t)})
	b.startWorker("w2", cfg, workerOpts{sim: sim2, comfy: quietComfy, logger: quietLogger(t)})

	for i := range jobs {
		b.enqueue(fmt.Sprintf("drop-%03d", i), input(sampler(fmt.Sprint(1000+i), 4)+save("9", fmt.Sprintf("job%03d", i))))
	}
	for i := range jobs {
		id := fmt.Sprintf("drop-%03d", i)
		rec := b.wait(id, proto.StatusCompleted)
		out := b.output(rec)
		require.Len(t, out.Images, 1, id)
		item := out.Images[0]
		require.Equal(t, fmt.Sprintf("job%03d_00001_.png", i), item.Filename, "the job's own output")
		data := b.blobBytes(item.Blob)
		img, err := png.Decode(bytes.NewReader(data))
		require.NoError(t, err)
		require.Equal(t, image.Rect(0, 0, 64, 64), img.Bounds())
		require.Contains(t, string(data), fmt.Sprintf(`"seed": %d`, 1000+i), "made from the job's own workflow")
	}
	b.requireDrained()
	st1, st2 := b.sim.Stats(), sim2.Stats()
	require.EqualValues(t, jobs, st1.SocketDrops+st2.SocketDrops, "the sockets dropped in every prompt")
	require.EqualValues(t, jobs, st1.PromptsSucceeded+st2.PromptsSucceeded, "each job ran once")
	t.Logf("w1 ran %d jobs, w2 ran %d", st1.PromptsSucceeded, st2.PromptsSucceeded)
}

// TestComfyUIKilledMidJob kills the ComfyUI of the worker running a job:
// the worker notices, gives the job back, and another worker completes it.
func TestComfyUIKilledMidJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	b.startWorker("w1", worker.Config{})
	b.enqueue("killed", input(sampler("1", 4)+save("9", "k")))
	b.wait("killed", proto.StatusInProgress)
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
	sim2 := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
	b.startWorker("w2", worker.Config{}, workerOpts{sim: sim2})

	killed := time.Now()
	b.sim.Restart()
	b.sim.SetDown(true) // connections refused from now on: a dead process
	rec := b.wait("killed", proto.StatusCompleted)
	t.Logf("job completed on %s %v after its ComfyUI died", rec.WorkerID, time.Since(killed))
	require.Equal(t, "w2", rec.WorkerID)
	require.Equal(t, 2, rec.Attempt)
	require.Equal(t, 1, rec.Retries)
	require.Len(t, b.output(rec).Images, 1)
	b.requireDrained()
	eventually(t, func() bool {
		list, err := b.db.Workers(context.Background())
		if err != nil {
			return false
		}
		for _, w := range list {
			if w.ID == "w1" {
				return w.State == "unhealthy"
			}
		}
		return false
	}, "w1 is not marked unhealthy")
}

// TestComfyUIRestartLosesPrompt restarts ComfyUI without a pause: the
// prompt is gone from its queue and history, and the job runs again.
func TestComfyUIRestartLosesPrompt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	b.startWorker("w1", worker.Config{})
	b.enqueue("restart", input(sampler("1", 4)+save("9", "r")))
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
	b.sim.Restart()
	b.sim.SetFault(comfysim.Fault{})
	rec := b.wait("restart", proto.StatusCompleted)
	require.Equal(t, 2, rec.Attempt)
	require.Equal(t, "w1", rec.WorkerID)
	b.requireDrained()
}

func TestExecutionTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	b.startWorker("w1", worker.Config{ExecutionTimeout: time.Hour})
	b.enqueueJob(&proto.Job{ID: "slow", Input: []byte(input(sampler("1", 4) + save("9", "s"))),
		Policy: proto.Policy{ExecutionTimeout: 300}})
	rec := b.wait("slow", proto.StatusTimedOut)
	require.Equal(t, "Job execution timed out after 300ms (policy.executionTimeout); the prompt was interrupted in ComfyUI.", rec.Error)
	eventually(t, func() bool { return b.sim.Stats().PromptsInterrupted == 1 }, "ComfyUI was not interrupted")
	require.Equal(t, "", b.sim.Stats().Running)
	b.requireDrained()

	// The worker's default applies when the job names none, and the worker
	// goes on with the next job.
	b.sim.SetFault(comfysim.Fault{})
	b.enqueue("after", input(sampler("2", 2)+save("9", "a")))
	b.wait("after", proto.StatusCompleted)
}

func TestDefaultExecutionTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	b.startWorker("w1", worker.Config{ExecutionTimeout: 200 * time.Millisecond})
	b.enqueue("slow", input(sampler("1", 4)+save("9", "s")))
	rec := b.wait("slow", proto.StatusTimedOut)
	require.Equal(t, "Job execution timed out after 200ms (policy.executionTimeout); the prompt was interrupted in ComfyUI.", rec.Error)
	eventually(t, func() bool { return b.sim.Stats().PromptsInterrupted == 1 }, "ComfyUI was not interrupted")
}

func TestStallDetection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	b.startWorker("w1", worker.Config{StallTimeout: 300 * time.Millisecond})
	b.enqueue("stall", input(sampler("1", 4)+save("9", "s")))
	rec := b.wait("stall", proto.StatusTimedOut)
	require.Equal(t, "Job stalled: no progress from ComfyUI for 300ms; the prompt was interrupted in ComfyUI.", rec.Error)
	eventually(t, func() bool { return b.sim.Stats().PromptsInterrupted == 1 }, "ComfyUI was not interrupted")
	b.requireDrained()
}

// TestCancelRunningJob cancels a job while its prompt runs: the prompt is
// interrupted, the status stays CANCELLED, and the worker moves on.
func TestCancelRunningJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	b.startWorker("w1", worker.Config{})
	b.enqueue("cancel-me", input(sampler("1", 4)+save("9", "c")))
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")

	_, err := b.core.Cancel(context.Background(), "cancel-me") // what the canceller does: CANCELLED, then the fan-out
	require.NoError(t, err)
	eventually(t, func() bool { return b.sim.Stats().PromptsInterrupted == 1 }, "ComfyUI was not interrupted")
	b.requireDrained()
	rec := b.wait("cancel-me", proto.StatusCancelled)
	require.Empty(t, rec.Output, "the worker did not overwrite the cancelled record")

	b.sim.SetFault(comfysim.Fault{})
	b.enqueue("next", input(sampler("2", 2)+save("9", "n")))
	b.wait("next", proto.StatusCompleted)
	rec = b.wait("cancel-me", proto.StatusCancelled)
	require.Empty(t, rec.Error)
}

// TestCancelPipelinedJob cancels a job whose prompt waits in ComfyUI's
// queue behind another: it is removed from the queue and never runs.
func TestCancelPipelinedJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	b.startWorker("w1", worker.Config{Prefetch: 1})
	b.enqueue("first", input(sampler("1", 4)+save("9", "f")))
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
	b.enqueue("second", input(sampler("2", 4)+save("9", "s")))
	eventually(t, func() bool { return b.sim.Stats().QueueRemaining == 2 }, "the second prompt was not queued in ComfyUI")

	_, err := b.core.Cancel(context.Background(), "second")
	require.NoError(t, err)
	eventually(t, func() bool { return b.sim.Stats().QueueRemaining == 1 }, "the second prompt is still in ComfyUI's queue")

	b.sim.SetFault(comfysim.Fault{})
	b.wait("first", proto.StatusCompleted)
	b.requireDrained()
	require.EqualValues(t, 1, b.sim.Stats().PromptsExecuted, "the cancelled prompt never ran")
	b.wait("second", proto.StatusCancelled)
}

// TestPipelinedJobsKeepTheirInputs queues two jobs whose inputs share a
// name in one ComfyUI at once: each reads its own file.
func TestPipelinedJobsKeepTheirInputs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	b.startWorker("w1", worker.Config{Prefetch: 2})
	b.enqueue("blocker", input(sampler("1", 4)+save("9", "blocker")))
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
	small := pngBytes(t, 8, 8, color.RGBA{R: 255, A: 255})
	large := pngBytes(t, 16, 16, color.RGBA{B: 255, A: 255})
	b.enqueue("a", input(loadAndSave("in.png", "a"), `"images":[{"name":"in.png","image":"`+b64(small)+`"}]`))
	b.enqueue("b", input(loadAndSave("in.png", "b"), `"images":[{"name":"in.png","image":"`+b64(large)+`"}]`))
	eventually(t, func() bool { return b.sim.Stats().QueueRemaining == 3 }, "both jobs were not queued in ComfyUI")
	require.EqualValues(t, 2, b.sim.Stats().Uploads, "both inputs are in ComfyUI before either runs")

	b.sim.SetFault(comfysim.Fault{})
	for id, want := range map[string]int{"a": 8, "b": 16} {
		rec := b.wait(id, proto.StatusCompleted)
		out := b.output(rec)
		require.Len(t, out.Images, 1)
		img, err := png.Decode(bytes.NewReader(b.blobBytes(out.Images[0].Blob)))
		require.NoError(t, err)
		require.Equal(t, want, img.Bounds().Dx(), "job %s read its own in.png", id)
	}
	b.requireDrained()
}

// TestHeartbeatKeepsTheLease runs a job longer than the ack wait (which
// is shorter than the lease, 3 s): the worker's heartbeats keep its
// delivery, so the idle second worker never gets it, not even to give it
// back.
func TestHeartbeatKeepsTheLease(t *testing.T) {
	t.Parallel()
	b := setup(t, comfysim.Config{StepDelay: 10 * time.Millisecond})
	cfg := worker.Config{AckWait: time.Second}
	b.startWorker("w1", cfg)
	b.enqueue("long", input(sampler("1", 250)+save("9", "l")))
	b.wait("long", proto.StatusInProgress)
	sim2 := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
	log2, logs2 := observed(t)
	b.startWorker("w2", cfg, workerOpts{sim: sim2, logger: log2})
	rec := b.wait("long", proto.StatusCompleted)
	require.Equal(t, 1, rec.Attempt)
	require.Equal(t, "w1", rec.WorkerID)
	require.Equal(t, 0, rec.Retries)
	require.Zero(t, sim2.Stats().PromptsQueued)
	b.requireDrained()
	require.Zero(t, logs2.FilterField(zap.String("job_id", "long")).Len(), "w2 got the job: %v", logs2.All())
}

// TestWarmupRunsBeforeTheFirstJob gives the worker a warm-up workflow.
func TestWarmupRunsBeforeTheFirstJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	warm := []byte(`{"workflow":{"1":{"class_type":"PreviewAny","inputs":{"source":"warming up"}}}}`)
	b.enqueue("first", input(sampler("1", 2)+save("9", "f")))
	b.startWorker("w1", worker.Config{WarmupWorkflow: warm})
	b.wait("first", proto.StatusCompleted)
	ids := promptIDs(b.sim)
	require.Len(t, ids, 2)
	h := getJSON(t, b.sim.URL+"/history/"+ids[0])
	require.Contains(t, fmt.Sprint(h), "warming up", "the first prompt was the warm-up")
}

// TestStopDuringDownComfyUI stops a worker whose ComfyUI never came up.
func TestStopDuringDownComfyUI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetDown(true)
	w := b.startWorker("w1", worker.Config{})
	b.enqueue("waits", input(sampler("1", 2)+save("9", "w")))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.Stop() }()
	wg.Wait()
	rec, err := b.db.Get(context.Background(), "waits")
	require.NoError(t, err)
	require.Equal(t, proto.StatusInQueue, rec.Status, "never pulled while ComfyUI was down")
}
