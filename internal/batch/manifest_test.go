package batch_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestReadManifest(t *testing.T) {
	t.Parallel()
	doc := `{"item":"001","job_id":"j1","status":"FAILED","files":[]}
{"item":"002","job_id":"j2","status":"COMPLETED","files":[{"kind":"images","filename":"a.png","path":"002/a.png","size":3}]}
{"item":"001","job_id":"j1","status":"COMPLETED","files":[]}
not json
{"item":"003","job_id":"j3","status":"DONE"}
{"item":"004","job_id":"j4","sta`
	got, bad, err := batch.ReadManifest(strings.NewReader(doc))
	require.NoError(t, err)
	require.Equal(t, 3, bad, "a line cut short, a status that is none, plain junk")
	require.Len(t, got, 2)
	require.Equal(t, proto.StatusCompleted, got["001"].Status, "the last line of an item wins")
	require.Equal(t, "002/a.png", got["002"].Files[0].Path)
	require.Equal(t, 1, got["002"].Try, "a line without a try is the first")
}

func TestReadHistory(t *testing.T) {
	t.Parallel()
	doc := `{"item":"a","job_id":"j","try":1,"status":"FAILED","files":[]}
{"item":"a","job_id":"j-r2","try":2,"status":"CANCELLED","files":[]}
{"item":"b","job_id":"k","status":"COMPLETED","files":[],"download_error":"x"}
{"item":"a","job_id":"j-r3","try":3,"status":"COMPLETED","files":[]}
{"item":"b","job_id":"k","status":"COMPLETED","files":[]}
{"item":"c","job_id":"l","try":-1,"status":"COMPLETED","files":[]}`
	h, bad, err := batch.ReadHistory(strings.NewReader(doc))
	require.NoError(t, err)
	require.Equal(t, 1, bad, "a negative try")
	require.Len(t, h["a"], 3, "one result per job")
	require.Equal(t, []proto.Status{proto.StatusFailed, proto.StatusCancelled, proto.StatusCompleted},
		[]proto.Status{h["a"][0].Status, h["a"][1].Status, h["a"][2].Status})
	require.Len(t, h["b"], 1, "the last line of a job wins")
	require.Empty(t, h["b"][0].DownloadError)
	latest, _, err := batch.ReadManifest(strings.NewReader(doc))
	require.NoError(t, err)
	require.Equal(t, "j-r3", latest["a"].JobID, "the latest try is the item's result")
}

func TestResultOf(t *testing.T) {
	t.Parallel()
	start := time.UnixMilli(1_700_000_000_000).UTC()
	rec := &proto.Record{ID: "j", Status: proto.StatusCompleted, BatchID: "b", WorkerID: "w", Attempt: 2, Retries: 1,
		SubmittedAt: start, StartedAt: start.Add(15 * time.Millisecond), FinishedAt: start.Add(215 * time.Millisecond),
		Output: json.RawMessage(`{"images":[{"filename":"a.png","type":"base64","data":"","blob":"out/j/2/9/a.png","size":9,"mime":"image/png","node_id":"9"}],` +
			`"videos":[{"filename":"v.mp4","type":"s3_url","data":"https://s3/v.mp4"}],"text":[{"type":"text","data":"hi","node_id":"11"}],"errors":["lost one"]}`)}
	r := batch.ResultOf(rec, "001", 0, nil)
	require.Equal(t, int64(15), r.DelayMS)
	require.Equal(t, int64(200), r.ExecutionMS)
	require.Equal(t, []batch.File{
		{Kind: "images", Filename: "a.png", NodeID: "9", Mime: "image/png", Size: 9, Blob: "out/j/2/9/a.png"},
		{Kind: "videos", Filename: "v.mp4", URL: "https://s3/v.mp4"},
		{Kind: "text", NodeID: "11"},
	}, stripData(r.Files))
	require.Contains(t, r.Error, "lost one")

	failed := batch.ResultOf(&proto.Record{ID: "j", Status: proto.StatusFailed, Error: "boom"}, "002", 1, nil)
	require.Equal(t, "boom", failed.Error)
	require.Empty(t, failed.Files)
}

// stripData copies files through JSON, which drops what is not written to
// the manifest.
func stripData(fs []batch.File) []batch.File {
	data, _ := json.Marshal(fs)
	var out []batch.File
	_ = json.Unmarshal(data, &out)
	return out
}

func FuzzDecodeResult(f *testing.F) {
	f.Add([]byte(`{"item":"001","job_id":"j1","status":"COMPLETED","files":[{"kind":"images","path":"001/a.png"}]}`))
	f.Add([]byte(`{"item":"","job_id":"j1","status":"COMPLETED"}`))
	f.Add([]byte(`{"item":"a","job_id":"j1-r2","try":2,"status":"FAILED","files":[]}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := batch.DecodeResult(line)
		if err == nil && (r.Item == "" || r.JobID == "" || !r.Status.Valid() || r.Try < 1) {
			t.Fatalf("accepted %q", line)
		}
	})
}

// FuzzReadHistory: whatever a manifest holds, every item read has one
// result per job, and its last is what ReadManifest gives.
func FuzzReadHistory(f *testing.F) {
	f.Add([]byte(`{"item":"a","job_id":"j","try":1,"status":"FAILED","files":[]}` + "\n" +
		`{"item":"a","job_id":"j-r2","try":2,"status":"COMPLETED","files":[]}` + "\n" +
		`{"item":"a","job_id":"j","try":1,"status":"FAILED","files":[]}`))
	f.Add([]byte("junk\n{\"item\":\"b\""))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, _, err := batch.ReadHistory(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		latest, _, err := batch.ReadManifest(strings.NewReader(string(data)))
		if err != nil || len(latest) != len(h) {
			t.Fatalf("ReadManifest disagrees: %v, %d items for %d", err, len(latest), len(h))
		}
		for item, results := range h {
			seen := map[string]bool{}
			for _, r := range results {
				if seen[r.JobID] || r.Item != item || r.Try < 1 {
					t.Fatalf("item %s: %+v", item, results)
				}
				seen[r.JobID] = true
			}
			if latest[item].JobID != results[len(results)-1].JobID {
				t.Fatalf("item %s: the latest is not last", item)
			}
		}
	})
}
