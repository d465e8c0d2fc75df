package batch_test

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func readHistory(t *testing.T, dir string) map[string][]batch.Result {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, batch.ManifestFile))
	require.NoError(t, err)
	defer f.Close()
	got, bad, err := batch.ReadHistory(f)
	require.NoError(t, err)
	require.Zero(t, bad)
	return got
}

// TestRetryFailedFinishesTheBatch: an item that failed keeps the batch
// from completing; running the same batch again submits nothing new,
// --retry-failed gives it a new job (a new id, linked to the item) each
// time, the manifest keeps every try, and once a try completes the batch
// is complete.
func TestRetryFailedFinishesTheBatch(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 0)
	ctx := testenv.Context(t, time.Minute)
	// Two items that run, and one whose input image is not in the blob
	// store yet: its job fails until the image is uploaded.
	items := sweep(t, 2)
	owl, err := batch.DecodeItem([]byte(`{"name":"owl","workflow":`+string(exampleWorkflow(t))+
		`,"images":[{"name":"owl.png","blob":"in/default/retry-test/owl.png"}]}`), "in.jsonl:3")
	require.NoError(t, err)
	owl.Index = 2
	items = append(items, owl)
	out := t.TempDir()
	var log bytes.Buffer
	opts := batch.Options{BatchID: "retry-1", Out: out, Output: &log}
	first := batch.JobID("retry-1", owl)

	sum, err := f.runner.Submit(ctx, items, opts)
	require.NoError(t, err)
	require.False(t, sum.OK())
	require.Equal(t, batch.Counts{Total: 3, Done: 2, Failed: 1}, sum.Counts, log.String())
	require.Contains(t, log.String(), "] FAILED owl: Failed to upload one or more input images\n")
	require.Contains(t, log.String(), "not complete: 1 failed item(s); run the same submit command with --retry-failed to run them again.\n")

	// Again without the flag: nothing is submitted, the batch stays
	// incomplete.
	log.Reset()
	sum, err = f.runner.Submit(ctx, items, opts)
	require.NoError(t, err)
	require.Equal(t, [3]int{0, 3, 0}, [3]int{sum.Submitted, sum.Skipped, sum.Retried})
	require.False(t, sum.OK())
	require.Contains(t, log.String(), "--retry-failed")

	// With it, while the cause is still there: a second try, failing too.
	retry := opts
	retry.RetryFailed = true
	sum, err = f.runner.Submit(ctx, items, retry)
	require.NoError(t, err)
	require.Equal(t, [3]int{1, 2, 1}, [3]int{sum.Submitted, sum.Skipped, sum.Retried})
	require.Equal(t, batch.Counts{Total: 3, Done: 2, Failed: 1}, sum.Counts)
	h := readHistory(t, out)
	require.Len(t, h["owl"], 2)
	require.Equal(t, []string{first, first + "-r2"}, []string{h["owl"][0].JobID, h["owl"][1].JobID})
	require.Equal(t, []int{1, 2}, []int{h["owl"][0].Try, h["owl"][1].Try})

	// The image uploaded, a third try completes, and so does the batch.
	_, err = f.b.Blobs.Put(ctx, "in/default/retry-test/owl.png", "image/png", strings.NewReader("\x89PNG\r\n\x1a\nowl"))
	require.NoError(t, err)
	log.Reset()
	sum, err = f.runner.Submit(ctx, items, retry)
	require.NoError(t, err)
	require.True(t, sum.OK(), "%+v\n%s", sum, log.String())
	require.Equal(t, [3]int{1, 2, 1}, [3]int{sum.Submitted, sum.Skipped, sum.Retried})
	require.Contains(t, log.String(), "submitted 1 new job(s) (1 of them new tries of failed or cancelled items)")
	require.NotContains(t, log.String(), "not complete")

	h = readHistory(t, out)
	require.Len(t, h["owl"], 3, "every try of the item")
	for i, r := range h["owl"] {
		require.Equal(t, i+1, r.Try)
		require.Equal(t, batch.AttemptID(first, i+1), r.JobID)
		require.Equal(t, "retry-1", r.BatchID)
		require.Equal(t, 2, r.Index)
	}
	require.Equal(t, proto.StatusFailed, h["owl"][0].Status)
	require.Equal(t, proto.StatusFailed, h["owl"][1].Status)
	last := h["owl"][2]
	require.Equal(t, proto.StatusCompleted, last.Status, "the last try decides")
	require.Equal(t, proto.StatusCompleted, readManifest(t, out)["owl"].Status)
	require.Len(t, last.Files, 1)
	require.True(t, strings.HasPrefix(last.Files[0].Path, "owl/owl_"), last.Files[0].Path)
	require.FileExists(t, filepath.Join(out, last.Files[0].Path))
	// The rewritten manifest: the items in order, each item's tries in
	// order, one line each.
	data, err := os.ReadFile(filepath.Join(out, batch.ManifestFile))
	require.NoError(t, err)
	var order []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var r batch.Result
		require.NoError(t, json.Unmarshal([]byte(line), &r))
		order = append(order, r.Item+"#"+itoa(r.Try))
	}
	require.Equal(t, []string{"seed-1#1", "seed-2#1", "owl#1", "owl#2", "owl#3"}, order)

	// The batch's index names the latest job: status, watch and cancel
	// follow it.
	_, idx, err := f.b.DB.LoadBatch(ctx, "retry-1")
	require.NoError(t, err)
	require.Equal(t, first+"-r3", idx[2].JobID)
	require.Equal(t, 3, idx[2].Try)
	var st bytes.Buffer
	require.NoError(t, f.runner.Status(ctx, "retry-1", &st, false))
	require.Equal(t, "batch retry-1: 3 item(s): COMPLETED 3\n", st.String())
	sum, err = f.runner.Watch(ctx, batch.Options{BatchID: "retry-1", Out: out})
	require.NoError(t, err)
	require.True(t, sum.OK())
	require.Len(t, readHistory(t, out)["owl"], 3, "watch keeps the tries apart")

	// Nothing failed any more: the flag sends nothing.
	sum, err = f.runner.Submit(ctx, items, retry)
	require.NoError(t, err)
	require.Equal(t, [3]int{0, 3, 0}, [3]int{sum.Submitted, sum.Skipped, sum.Retried})
	require.True(t, sum.OK())
}

// TestRetryCancelled: a batch cancelled midway is finished by
// --retry-cancelled, also when the run that submitted it had detached
// (its manifest has no result yet: the records say what was cancelled).
// The retry flags never touch an item still on the fleet.
func TestRetryCancelled(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 40*time.Millisecond, "PREFETCH", "0") // about 0.8 s a job
	ctx := testenv.Context(t, time.Minute)
	items := sweep(t, 6)
	out := t.TempDir()
	opts := batch.Options{BatchID: "retry-2", Out: out, Detach: true}
	sum, err := f.runner.Submit(ctx, items, opts)
	require.NoError(t, err)
	require.Equal(t, 6, sum.Submitted)

	// Still on the fleet: nothing to retry, nothing submitted.
	both := opts
	both.RetryFailed, both.RetryCancelled = true, true
	sum, err = f.runner.Submit(ctx, items, both)
	require.NoError(t, err)
	require.Equal(t, [2]int{0, 0}, [2]int{sum.Submitted, sum.Retried})

	// Every job admitted, then the batch cancelled.
	require.Eventually(t, func() bool {
		for _, it := range items {
			if _, err := f.b.DB.Get(ctx, batch.JobID("retry-2", it)); err != nil {
				return false
			}
		}
		return true
	}, 20*time.Second, 10*time.Millisecond)
	cs, err := f.runner.Cancel(ctx, "retry-2", io.Discard)
	require.NoError(t, err)
	require.Positive(t, cs.Cancelled)
	cancelled := map[string]bool{}
	for _, it := range items {
		rec, err := f.b.DB.Get(ctx, batch.JobID("retry-2", it))
		require.NoError(t, err)
		if rec.Status == proto.StatusCancelled {
			cancelled[it.Name] = true
		}
	}
	require.Len(t, cancelled, cs.Cancelled)

	// --retry-failed alone leaves cancelled items alone.
	var log bytes.Buffer
	onlyFailed := batch.Options{BatchID: "retry-2", Out: out, RetryFailed: true, Output: &log}
	sum, err = f.runner.Submit(ctx, items, onlyFailed)
	require.NoError(t, err)
	require.Zero(t, sum.Submitted)
	require.Equal(t, len(cancelled), sum.Counts.Cancelled)
	require.Contains(t, log.String(), "cancelled item(s); run the same submit command with --retry-cancelled to run them again.")
	require.NotContains(t, log.String(), "CANCELLED seed-1:", "no colon without a message")

	// --retry-cancelled finishes the batch.
	sum, err = f.runner.Submit(ctx, items, batch.Options{BatchID: "retry-2", Out: out, RetryCancelled: true})
	require.NoError(t, err)
	require.True(t, sum.OK(), "%+v", sum)
	require.Equal(t, len(cancelled), sum.Retried)
	require.Equal(t, len(cancelled), sum.Submitted)
	h := readHistory(t, out)
	for _, it := range items {
		first := batch.JobID("retry-2", it)
		if !cancelled[it.Name] {
			require.Len(t, h[it.Name], 1, it.Name)
			require.Equal(t, first, h[it.Name][0].JobID)
			continue
		}
		require.Len(t, h[it.Name], 2, it.Name)
		require.Equal(t, proto.StatusCancelled, h[it.Name][0].Status)
		require.Equal(t, first, h[it.Name][0].JobID)
		require.Equal(t, proto.StatusCompleted, h[it.Name][1].Status)
		require.Equal(t, first+"-r2", h[it.Name][1].JobID)
		rec, err := f.b.DB.Get(ctx, first+"-r2")
		require.NoError(t, err)
		require.Equal(t, "retry-2", rec.BatchID)
	}
}

// TestGrowingSweepSubmitsOnlyNewItems: a sweep's range extended at both
// ends runs only the new values, into the same folder, and the items it
// had keep their results.
func TestGrowingSweepSubmitsOnlyNewItems(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 0)
	ctx := testenv.Context(t, time.Minute)
	out := t.TempDir()
	opts := batch.Options{BatchID: "grow-1", Out: out, NoDownload: true}
	seeds := func(spec string) []batch.Item {
		s, err := batch.ParseSet("3.inputs.seed="+spec, nil)
		require.NoError(t, err)
		items, err := batch.Expand([]batch.Item{{Input: json.RawMessage(`{"workflow":` + string(exampleWorkflow(t)) + `}`)}}, []batch.Set{s}, true)
		require.NoError(t, err)
		return items
	}
	sum, err := f.runner.Submit(ctx, seeds("2..4"), opts)
	require.NoError(t, err)
	require.True(t, sum.OK())
	before := readManifest(t, out)

	sum, err = f.runner.Submit(ctx, seeds("1..6"), opts)
	require.NoError(t, err)
	require.True(t, sum.OK())
	require.Equal(t, [2]int{3, 3}, [2]int{sum.Submitted, sum.Skipped})
	after := readManifest(t, out)
	require.Len(t, after, 6)
	for name, r := range before {
		require.Equal(t, r.JobID, after[name].JobID, name)
	}
	require.Equal(t, 0, after["seed-1"].Index)
	require.Equal(t, 1, after["seed-2"].Index, "the manifest follows the grown order")
	rec, err := f.b.DB.Get(ctx, after["seed-6"].JobID)
	require.NoError(t, err)
	require.Equal(t, json.RawMessage("6"), after["seed-6"].Params["3.inputs.seed"])
	require.Equal(t, proto.StatusCompleted, rec.Status)
}
