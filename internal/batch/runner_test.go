package batch_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func readManifest(t *testing.T, dir string) map[string]batch.Result {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, batch.ManifestFile))
	require.NoError(t, err)
	defer f.Close()
	got, bad, err := batch.ReadManifest(f)
	require.NoError(t, err)
	require.Zero(t, bad)
	return got
}

// readCSV reads the output folder's results.csv.
func readCSV(t *testing.T, dir string) [][]string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, batch.CSVFile))
	require.NoError(t, err)
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	require.NoError(t, err)
	return rows
}

func TestSubmitWatchAndResume(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 0)
	ctx := testenv.Context(t, time.Minute)
	items := sweep(t, 6)
	out := t.TempDir()
	var log bytes.Buffer
	opts := batch.Options{BatchID: "resume-1", Out: out, Output: &log}

	sum, err := f.runner.Submit(ctx, items, opts)
	require.NoError(t, err)
	require.True(t, sum.OK(), "%+v\n%s", sum, log.String())
	require.Equal(t, 6, sum.Submitted)
	require.Equal(t, batch.Counts{Total: 6, Done: 6}, sum.Counts)
	require.Contains(t, log.String(), "[6/6] COMPLETED")
	results := readManifest(t, out)
	require.Len(t, results, 6)
	for _, it := range items {
		r := results[it.Name]
		require.Equal(t, batch.JobID("resume-1", it), r.JobID)
		require.Equal(t, it.Index, r.Index)
		require.Equal(t, it.Params, r.Params)
		require.Len(t, r.Files, 1)
		fi, err := os.Stat(filepath.Join(out, r.Files[0].Path))
		require.NoError(t, err)
		require.Equal(t, r.Files[0].Size, fi.Size())
		rec, err := f.b.DB.Get(ctx, r.JobID)
		require.NoError(t, err)
		require.Equal(t, proto.LaneBatch, rec.Lane)
		require.Equal(t, "resume-1", rec.BatchID)
		require.Equal(t, rec.WorkerID, r.WorkerID)
	}
	// The manifest is rewritten in item order, one line per item.
	data, err := os.ReadFile(filepath.Join(out, batch.ManifestFile))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	require.Len(t, lines, 6)
	require.True(t, strings.HasPrefix(lines[0], `{"item":"seed-1"`))

	// Beside it, a table and a contact sheet of the same items.
	rows := readCSV(t, out)
	require.Len(t, rows, 7, "a header and a row per item")
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	sheet, err := os.ReadFile(filepath.Join(out, batch.SheetFile))
	require.NoError(t, err)
	for i, it := range items {
		row, r := rows[i+1], results[it.Name]
		require.Equal(t, it.Name, row[col["item"]], "in item order")
		require.Equal(t, "COMPLETED", row[col["status"]])
		require.Equal(t, r.JobID, row[col["job_id"]])
		require.Equal(t, r.Files[0].Path, row[col["files"]])
		for name, raw := range it.Params {
			require.Equal(t, string(raw), row[col[name]], "the swept value of %s", name)
		}
		require.Contains(t, string(sheet), `<img src="`+r.Files[0].Path+`"`, "a thumbnail per item")
		require.Contains(t, string(sheet), `<span class="item">`+it.Name+`</span>`)
	}
	require.Contains(t, string(sheet), "6 COMPLETED")

	// Again: everything is in the manifest, nothing is submitted.
	sum, err = f.runner.Submit(ctx, items, opts)
	require.NoError(t, err)
	require.Equal(t, 0, sum.Submitted)
	require.Equal(t, 6, sum.Skipped)

	// A result folder removed: the job is found finished on the fleet and
	// downloaded again, not run again.
	require.NoError(t, os.RemoveAll(filepath.Join(out, "seed-4")))
	sum, err = f.runner.Submit(ctx, items, opts)
	require.NoError(t, err)
	require.Equal(t, [3]int{0, 5, 1}, [3]int{sum.Submitted, sum.Skipped, sum.Resumed})
	require.DirExists(t, filepath.Join(out, "seed-4"))

	// Watch by batch id alone, elsewhere, without downloads.
	other := t.TempDir()
	sum, err = f.runner.Watch(ctx, batch.Options{BatchID: "resume-1", Out: other, NoDownload: true})
	require.NoError(t, err)
	require.True(t, sum.OK())
	for _, r := range readManifest(t, other) {
		require.Empty(t, r.Files[0].Path, "not downloaded")
		require.NotEmpty(t, r.Files[0].Blob, "but listed")
	}
	entries, err := os.ReadDir(other)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.ElementsMatch(t, []string{batch.ManifestFile, batch.CSVFile, batch.SheetFile}, names, "no item folders")

	// An item in the index whose submission never got a PubAck: watch
	// reports it and does not wait for it.
	require.NoError(t, f.b.DB.PutBatch(ctx, rdb.BatchMeta{ID: "resume-1"},
		[]rdb.IndexItem{{Name: "999", JobID: "resume-1-999-never", Index: 6}}, time.Hour))
	log.Reset()
	sum, err = f.runner.Watch(ctx, batch.Options{BatchID: "resume-1", Out: other, NoDownload: true, Output: &log})
	require.NoError(t, err)
	require.Equal(t, batch.Counts{Total: 7, Done: 6, Unsent: 1}, sum.Counts)
	require.False(t, sum.OK())
	require.Contains(t, log.String(), "1 item(s) were never submitted")

	var st bytes.Buffer
	require.NoError(t, f.runner.Status(ctx, "resume-1", &st, false))
	require.Equal(t, "batch resume-1: 7 item(s): COMPLETED 6, NOT_FOUND 1\n"+
		"  NOT_FOUND   999  resume-1-999-never  no status record (not submitted, still in the intake, or expired)\n", st.String())
	st.Reset()
	require.NoError(t, f.runner.Status(ctx, results["seed-2"].JobID, &st, false))
	require.Contains(t, st.String(), "status     COMPLETED")
	st.Reset()
	require.NoError(t, f.runner.Status(ctx, "resume-1", &st, true))
	require.Len(t, strings.Split(strings.TrimSpace(st.String()), "\n"), 7)
	require.ErrorIs(t, f.runner.Status(ctx, "nothing-here", io.Discard, false), batch.ErrUnknown)

	v, err := batch.ReadFleet(ctx, f.b.DB, f.b.Queue)
	require.NoError(t, err)
	require.Len(t, v.Workers, 2)
	require.Contains(t, v.Lanes, queue.LaneDepth{Pool: proto.DefaultPool, Lane: proto.LaneBatch})
	require.EqualValues(t, 6, v.Totals[proto.StatusCompleted])
	var fv bytes.Buffer
	v.Write(&fv, time.Now())
	require.Contains(t, fv.String(), "dev-worker-1")
}

func TestSubmitRefusesBadOptions(t *testing.T) {
	t.Parallel()
	r := batch.New(batch.Deps{})
	for _, o := range []batch.Options{
		{BatchID: "a.b", Out: "x"},
		{BatchID: "a", Out: "x", Lane: "fast"},
		{BatchID: "a", Out: "x", Pool: "p q"},
		{BatchID: "a"},
		{BatchID: "a", Out: "x", Retention: -1},
	} {
		_, err := r.Submit(t.Context(), sweep(t, 1), o)
		require.Error(t, err, "%+v", o)
	}
	// The contract's bounds, refused before anything is sent.
	for _, tt := range []struct {
		o       batch.Options
		wantErr string
	}{
		{batch.Options{BatchID: "a", Out: "x", Policy: proto.Policy{ExecutionTimeout: math.MaxInt64}}, "policy.executionTimeout: 9223372036854775807 ms is more than the limit of 604800000 ms (7 days)"},
		{batch.Options{BatchID: "a", Out: "x", Policy: proto.Policy{TTL: 8 * 24 * 3600 * 1000}}, "policy.ttl: 691200000 ms is more than the limit"},
		{batch.Options{BatchID: "a", Out: "x", Retention: 31 * 24 * time.Hour}, "retention 744h0m0s is more than the limit of 720h0m0s"},
		{batch.Options{BatchID: "a", Out: "x", Webhook: "file:///etc/passwd"}, `webhook has the scheme "file"`},
	} {
		_, err := r.Submit(t.Context(), sweep(t, 1), tt.o)
		require.ErrorContains(t, err, tt.wantErr)
	}
}

func TestCancelBatch(t *testing.T) {
	t.Parallel()
	// Without prefetching, so that jobs wait in the queue (a prefetched job
	// is IN_PROGRESS from its pickup) and their cancel is seen to keep them
	// from starting.
	// About 20 s a job, so that none ends before the cancel even under CI
	// load (at 4 s a job, three had ended once); the cancel interrupts the
	// two running ones, so the test does not wait for them.
	f := setupFleet(t, time.Second, "PREFETCH", "0")
	ctx := testenv.Context(t, time.Minute)
	items := sweep(t, 6)
	sum, err := f.runner.Submit(ctx, items, batch.Options{BatchID: "cancel-1", Out: t.TempDir(), Detach: true})
	require.NoError(t, err)
	require.Equal(t, 6, sum.Submitted)
	// An item in the index that was never submitted: cancelled ahead.
	require.NoError(t, f.b.DB.PutBatch(ctx, rdb.BatchMeta{ID: "cancel-1"},
		[]rdb.IndexItem{{Name: "ghost", JobID: "cancel-1-ghost", Index: 6}}, time.Hour))
	// Some job has started (which one is the workers' pick: at 20 s a job,
	// the first item may wait behind two others).
	require.Eventually(t, func() bool {
		for _, it := range items {
			if rec, err := f.b.DB.Get(ctx, batch.JobID("cancel-1", it)); err == nil && rec.Status != proto.StatusInQueue {
				return true
			}
		}
		return false
	}, 20*time.Second, 10*time.Millisecond)
	// Every submitted item has been admitted (has a record), so only the
	// ghost is cancelled ahead of the dispatcher.
	require.Eventually(t, func() bool {
		for _, it := range items {
			if _, err := f.b.DB.Get(ctx, batch.JobID("cancel-1", it)); err != nil {
				return false
			}
		}
		return true
	}, 20*time.Second, 10*time.Millisecond)

	var out bytes.Buffer
	cs, err := f.runner.Cancel(ctx, "cancel-1", &out)
	require.NoError(t, err)
	require.GreaterOrEqual(t, cs.Cancelled, 5, out.String())
	require.Equal(t, 1, cs.Ahead)
	require.Equal(t, 7, cs.Cancelled+cs.Finished)
	require.Contains(t, out.String(), "batch cancel-1: cancelled")

	neverStarted := 0
	for _, it := range append(slices.Clone(items), batch.Item{}) {
		id := "cancel-1-ghost"
		if it.Input != nil {
			id = batch.JobID("cancel-1", it)
		}
		rec, err := f.b.DB.Get(ctx, id)
		require.NoError(t, err)
		require.True(t, rec.Status == proto.StatusCancelled || rec.Status == proto.StatusCompleted, "%s: %s", id, rec.Status)
		if rec.StartedAt.IsZero() {
			neverStarted++
		}
	}
	require.GreaterOrEqual(t, neverStarted, 3, "queued jobs never start")

	// The ghost's message, were it to arrive now, is not run: its record is
	// terminal, which the dispatcher leaves alone.
	ghost := &proto.Job{ID: "cancel-1-ghost", Input: json.RawMessage(`{"workflow":` + string(exampleWorkflow(t)) + `}`), BatchID: "cancel-1"}
	_, err = f.b.Queue.Submit(ctx, proto.SourceBatch, ghost)
	require.NoError(t, err)

	sum, err = f.runner.Watch(ctx, batch.Options{BatchID: "cancel-1", Out: t.TempDir()})
	require.NoError(t, err)
	require.Equal(t, 7, sum.Counts.Total)
	require.Equal(t, 7, sum.Counts.Cancelled+sum.Counts.Done)
	require.False(t, sum.OK())
	rec, err := f.b.DB.Get(ctx, "cancel-1-ghost")
	require.NoError(t, err)
	require.Equal(t, proto.StatusCancelled, rec.Status)
	require.True(t, rec.StartedAt.IsZero())

	// A single job, finished already.
	out.Reset()
	_, err = f.runner.Cancel(ctx, "cancel-1-ghost", &out)
	require.NoError(t, err)
	require.Contains(t, out.String(), "had finished already: CANCELLED")
	_, err = f.runner.Cancel(ctx, "no-such-thing", &out)
	require.ErrorIs(t, err, batch.ErrUnknown)
}

// TestInteractiveJobsOvertakeBatch sends RunPod /run requests while a
// batch keeps both workers busy: each interactive job starts on the next
// free worker, ahead of every batch job still queued, so its queue wait is
// at most what is left of a running batch job, never the batch's backlog.
func TestInteractiveJobsOvertakeBatch(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 10*time.Millisecond) // about 0.2 s a job
	ctx := testenv.Context(t, time.Minute)
	items := sweep(t, 30)
	_, err := f.runner.Submit(ctx, items, batch.Options{BatchID: "busy", Out: t.TempDir(), Detach: true})
	require.NoError(t, err)
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = batch.JobID("busy", it)
	}
	// Every batch job admitted, and both workers busy with them.
	require.Eventually(t, func() bool {
		for _, id := range ids {
			if _, err := f.b.DB.Get(ctx, id); err != nil {
				return false
			}
		}
		rec, err := f.b.DB.Get(ctx, ids[1])
		return err == nil && rec.Status != proto.StatusInQueue
	}, 20*time.Second, 5*time.Millisecond, "the batch started")

	body := `{"input":{"workflow":` + string(exampleWorkflow(t)) + `}}`
	type sent struct {
		at  time.Time
		rec *proto.Record
	}
	var inter []sent
	for range 4 {
		at := time.Now()
		resp, err := http.Post(f.stack.Info.APIURL+"/run", "application/json", strings.NewReader(body))
		require.NoError(t, err)
		var run struct{ ID string }
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&run))
		resp.Body.Close()
		var rec *proto.Record
		require.Eventually(t, func() bool {
			rec, err = f.b.DB.Get(ctx, run.ID)
			return err == nil && rec.Status.Terminal()
		}, 20*time.Second, 5*time.Millisecond)
		require.Equal(t, proto.StatusCompleted, rec.Status)
		require.Equal(t, proto.LaneInteractive, rec.Lane)
		inter = append(inter, sent{at: at, rec: rec})
	}
	// Stop the rest of the batch; what matters happened.
	_, err = f.runner.Cancel(ctx, "busy", io.Discard)
	require.NoError(t, err)

	var batchWaits []time.Duration
	batchRecs := make([]*proto.Record, len(ids))
	for i, id := range ids {
		rec, err := f.b.DB.Get(ctx, id)
		require.NoError(t, err)
		batchRecs[i] = rec
		if !rec.StartedAt.IsZero() {
			batchWaits = append(batchWaits, rec.DelayTime())
		}
	}
	for i, in := range inter {
		// Batch jobs that were waiting when the request was sent and that
		// the interactive job went ahead of.
		waiting, overtaken := 0, 0
		for _, b := range batchRecs {
			if b.StartedAt.IsZero() || b.StartedAt.After(in.at) {
				waiting++
				if b.StartedAt.IsZero() || b.StartedAt.After(in.rec.StartedAt) {
					overtaken++
				}
			}
		}
		t.Logf("interactive job %d: started %v after the request (queue wait %v, execution %v); went ahead of %d of the %d batch jobs waiting",
			i+1, in.rec.StartedAt.Sub(in.at).Round(time.Millisecond), in.rec.DelayTime(), in.rec.ExecutionTime(), overtaken, waiting)
		require.Positive(t, waiting, "the batch had a backlog")
		require.Greater(t, overtaken, waiting/2, "interactive job %d waited behind the batch", i+1)
	}
	slices.Sort(batchWaits)
	if n := len(batchWaits); n > 0 {
		t.Logf("batch jobs that ran: %d, queue wait median %v, max %v", n, batchWaits[n/2], batchWaits[n-1])
	}
}

// TestSubmitAsATenant: a batch submitted for a tenant runs as that
// tenant's: on its submit subject, its records and events its, and its
// items cancelled ahead of the dispatcher recorded as its too.
func TestSubmitAsATenant(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 0)
	ctx := testenv.Context(t, time.Minute)
	items := sweep(t, 2)
	sum, err := f.runner.Submit(ctx, items, batch.Options{BatchID: "tenant-1", Tenant: "acme", Out: t.TempDir(), NoDownload: true})
	require.NoError(t, err)
	require.True(t, sum.OK(), "%+v", sum)
	for _, it := range items {
		rec, err := f.b.DB.Get(ctx, batch.JobID("tenant-1", it))
		require.NoError(t, err)
		require.Equal(t, "acme", rec.Tenant)
		require.Equal(t, proto.StatusCompleted, rec.Status)
	}
	require.ErrorContains(t, batch.Options{BatchID: "b", Out: "o", Tenant: "a.b"}.Validate(), "tenant")

	// An item the dispatcher never saw, cancelled: its record is the
	// batch's tenant's.
	require.NoError(t, f.b.DB.PutBatch(ctx, rdb.BatchMeta{ID: "tenant-2", Tenant: "acme"},
		[]rdb.IndexItem{{Name: "ghost", JobID: "tenant-2-ghost"}}, time.Hour))
	_, err = f.runner.Cancel(ctx, "tenant-2", io.Discard)
	require.NoError(t, err)
	rec, err := f.b.DB.Get(ctx, "tenant-2-ghost")
	require.NoError(t, err)
	require.Equal(t, proto.StatusCancelled, rec.Status)
	require.Equal(t, "acme", rec.Tenant)
}
