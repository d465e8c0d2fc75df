package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/proto"
)

// getJSON decodes a GET's JSON answer.
func getJSON(t *testing.T, method, url string, v any) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, url)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}

// TestRetriesDeadLetterAndReplay: a job that runs out of memory on every
// attempt is retried with backoff up to MAX_ATTEMPTS (3), fails with the
// last error, and lands on CF_DLQ with every attempt's error; listed and
// replayed through the dispatcher's HTTP API once the GPU is fine, it
// completes.
func TestRetriesDeadLetterAndReplay(t *testing.T) {
	t.Parallel()
	f := newFleet(t, fleetConfig{workers: 1, dispatchers: 1, stepDelay: time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f.sims[0].SetFault(comfysim.Fault{FailClass: "KSampler", FailOOM: true})
	ids := f.load(ctx, "oom", 1, nil)
	tl := f.await(ids, 30*time.Second)
	require.Equal(t, 1, tl.byStatus[proto.StatusFailed], tl.String())
	rec, err := f.b.DB.Get(ctx, ids[0])
	require.NoError(t, err)
	require.Equal(t, 3, rec.Attempt)

	var list struct {
		DeadLetters []queue.DeadLetter `json:"dead_letters"`
	}
	require.Eventually(t, func() bool {
		getJSON(t, http.MethodGet, f.apis[0]+"/dlq", &list)
		return len(list.DeadLetters) == 1
	}, 10*time.Second, 20*time.Millisecond)
	dl := list.DeadLetters[0]
	require.Equal(t, ids[0], dl.JobID)
	require.Len(t, dl.Attempts, 3, "every attempt's error: %v", dl.Attempts)
	for i, a := range dl.Attempts {
		require.Contains(t, a, fmt.Sprintf("attempt %d: ComfyUI ran out of memory", i+1))
	}
	// The record's error and the failure's cause, on one line.
	require.True(t, strings.HasPrefix(dl.Reason, rec.Error+": Workflow execution error: Node Type: KSampler, Node ID: 3, Message: CUDA out of memory."), dl.Reason)
	require.NotContains(t, dl.Reason, "\n")

	f.sims[0].SetFault(comfysim.Fault{})
	var replayed map[string]any
	getJSON(t, http.MethodPost, fmt.Sprintf("%s/dlq/%d/replay", f.apis[0], dl.Seq), &replayed)
	require.Equal(t, string(proto.StatusInQueue), replayed["status"])
	require.Eventually(t, func() bool {
		rec, err := f.b.DB.Get(ctx, ids[0])
		return err == nil && rec.Status == proto.StatusCompleted
	}, 20*time.Second, 20*time.Millisecond, "the replayed job completes")
	f.check("replayed", f.await(ids, 20*time.Second), nil)
	getJSON(t, http.MethodGet, f.apis[0]+"/dlq", &list)
	require.Empty(t, list.DeadLetters)
}

// TestSilentWorkerPastItsDeadlineTimesOut: the worker running a hung job
// is SIGKILLed before its own execution timeout fires; once its lease
// lapses and the deadline plus EXECUTION_GRACE passed, the dispatcher
// ends the job TIMED_OUT instead of retrying it.
func TestSilentWorkerPastItsDeadlineTimesOut(t *testing.T) {
	t.Parallel()
	f := newFleet(t, fleetConfig{workers: 1, dispatchers: 1, stepDelay: time.Millisecond, execGrace: 100 * time.Millisecond, leaseTTL: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f.sims[0].SetFault(comfysim.Fault{HangAtStep: 2})
	ids := f.load(ctx, "hang", 1, func(int) proto.Policy { return proto.Policy{ExecutionTimeout: 1500} })
	require.Eventually(t, func() bool {
		rec, err := f.b.DB.Get(ctx, ids[0])
		return err == nil && rec.Status == proto.StatusInProgress
	}, 10*time.Second, 5*time.Millisecond)
	// Killed well before its own timeout (1.5 s) fires; its lease (3 s,
	// renewed every second) lapses after the deadline plus the grace.
	for id, p := range f.workers {
		p.kill()
		delete(f.workers, id)
	}
	tl := f.await(ids, 20*time.Second)
	f.check("silent worker", tl, map[string]proto.Status{ids[0]: proto.StatusTimedOut})
	rec, err := f.b.DB.Get(ctx, ids[0])
	require.NoError(t, err)
	require.Contains(t, rec.Error, "went silent")
	require.Equal(t, 1, rec.Attempt, "not retried")
}
