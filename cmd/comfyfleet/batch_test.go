package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestSubmitGrowsAndRetries follows issue 18 as a new user would, with
// the CLI as separate processes against `comfyfleet dev`: a sweep whose
// range grows submits only its new items into the same batch and folder;
// a JSONL file's named lines keep their names; a batch with a failed item
// exits 1 and says how to run it again, and --retry-failed then finishes
// it (exit 0) with the first try kept in results.jsonl.
func TestSubmitGrowsAndRetries(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	example, err := os.ReadFile("../../examples/txt2img.json")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(work, "wf.json"), example, 0o644))
	dev := start(t, work, append(devArgs, "--step-delay", "1ms")...)
	info := devUp(t, work, dev)

	submit := func(want int, args ...string) string {
		t.Helper()
		p := start(t, work, append([]string{"submit"}, args...)...)
		require.Equal(t, want, p.wait(t, 2*time.Minute), p.out.String())
		return p.out.String()
	}
	batchOf := func(out string, n int) string {
		t.Helper()
		m := regexp.MustCompile(`batch (\S+): submitting ` + itoa(n) + ` item\(s\)`).FindStringSubmatch(out)
		require.NotNil(t, m, out)
		return m[1]
	}

	// A sweep, then the same sweep with a longer range: the same batch and
	// folder, and only the new seeds run.
	out := submit(exitOK, "wf.json", "--set", "3.inputs.seed=1..3")
	id := batchOf(out, 3)
	out = submit(exitOK, "wf.json", "--set", "3.inputs.seed=1..5")
	require.Equal(t, id, batchOf(out, 5), "the same input file, the same batch")
	require.Contains(t, out, "submitted 2 new job(s); 3 item(s) were in the results already")
	results := readResults(t, filepath.Join(work, id))
	require.Len(t, results, 5)
	for _, name := range []string{"seed-1", "seed-5"} {
		r := results[name][0]
		require.Equal(t, proto.StatusCompleted, r.Status)
		require.Len(t, r.Files, 1)
		require.Equal(t, name+"/"+name+"_"+r.Files[0].Filename, r.Files[0].Path, "the file carries its item")
		require.FileExists(t, filepath.Join(work, id, r.Files[0].Path))
	}

	// A JSONL file of named RunPod inputs; owl's input image is not in
	// the blob store yet, so its job fails.
	var req struct {
		Input struct {
			Workflow json.RawMessage `json:"workflow"`
		} `json:"input"`
	}
	require.NoError(t, json.Unmarshal(example, &req))
	var compact bytes.Buffer
	require.NoError(t, json.Compact(&compact, req.Input.Workflow))
	wf := compact.String()
	lines := `{"name":"fox","workflow":` + wf + "}\n" +
		`{"name":"owl","workflow":` + wf + `,"images":[{"name":"owl.png","blob":"in/default/e2e/owl.png"}]}` + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(work, "animals.jsonl"), []byte(lines), 0o644))
	out = submit(exitNotAllDone, "animals.jsonl")
	animals := batchOf(out, 2)
	require.Contains(t, out, "] FAILED owl: ")
	require.Contains(t, out, "not complete: 1 failed item(s); run the same submit command with --retry-failed to run them again.")
	out = submit(exitNotAllDone, "animals.jsonl")
	require.Contains(t, out, "submitted 0 new job(s); 2 item(s) were in the results already")

	// The image uploaded: --retry-failed completes the batch.
	nc, err := nats.Connect(info.NATSURL)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := js.ObjectStore(ctx, proto.BlobBucket)
	require.NoError(t, err)
	_, err = store.Put(ctx, jetstream.ObjectMeta{Name: "in/default/e2e/owl.png"}, strings.NewReader("\x89PNG\r\n\x1a\nowl"))
	require.NoError(t, err)
	out = submit(exitOK, "animals.jsonl", "--retry-failed")
	require.Contains(t, out, "submitted 1 new job(s) (1 of them new tries of failed or cancelled items)")
	require.NotContains(t, out, "not complete")

	results = readResults(t, filepath.Join(work, animals))
	require.Len(t, results["fox"], 1)
	owl := results["owl"]
	require.Len(t, owl, 2, "both tries")
	require.Equal(t, proto.StatusFailed, owl[0].Status)
	require.Equal(t, proto.StatusCompleted, owl[1].Status)
	require.Equal(t, owl[0].JobID+"-r2", owl[1].JobID)
	require.Equal(t, []int{1, 2}, []int{owl[0].Try, owl[1].Try})
	require.FileExists(t, filepath.Join(work, animals, owl[1].Files[0].Path))

	st := start(t, work, "status", animals)
	require.Equal(t, exitOK, st.wait(t, 30*time.Second), st.out.String())
	require.Contains(t, st.out.String(), "batch "+animals+": 2 item(s): COMPLETED 2")
	devDown(t, work, dev)
}

// readResults reads every try of every item in the manifest in dir.
func readResults(t *testing.T, dir string) map[string][]batch.Result {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, batch.ManifestFile))
	require.NoError(t, err)
	defer f.Close()
	h, bad, err := batch.ReadHistory(f)
	require.NoError(t, err)
	require.Zero(t, bad)
	return h
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }
