package comfy

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// mixedEntry has every output kind of protocol §7.2, with a NaN in custom
// UI data.
const mixedEntry = `{
  "prompt": [7, "P", {"3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615}}}, {"client_id": "C"}, ["9"]],
  "outputs": {
    "9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
                     {"filename": "ComfyUI_00002_.png", "subfolder": "", "type": "output"}]},
    "12": {"images": [{"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "", "type": "temp"}]},
    "20": {"images": [{"filename": "ComfyUI_00001_.mp4", "subfolder": "video", "type": "output"}], "animated": [true]},
    "21": {"gifs": [{"filename": "AnimateDiff_00001.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4", "fullpath": "/x"}]},
    "22": {"audio": [{"filename": "ComfyUI_00001.flac", "subfolder": "audio", "type": "output"}]},
    "23": {"text": ["a caption", "second"], "score": [NaN]},
    "24": {"result": ["model.glb", {"camera": 1}, null]}
  },
  "status": {"status_str": "success", "completed": true, "messages": [["execution_start", {"prompt_id": "P", "timestamp": 1}], ["execution_success", {"prompt_id": "P", "timestamp": 2}]]},
  "meta": {"9": {"node_id": "9", "display_node": "9", "parent_node": null, "real_node_id": "9"}}
}`

func decodeEntry(t *testing.T, raw string) *HistoryEntry {
	t.Helper()
	var top json.RawMessage
	require.NoError(t, unmarshalLenient([]byte(`{"P": `+raw+`}`), &top))
	m := objectMap(top)
	e, err := decodeHistoryEntry(m["P"])
	require.NoError(t, err)
	return e
}

func TestResultFiles(t *testing.T) {
	t.Parallel()
	res := &Result{PromptID: "P", Entry: decodeEntry(t, mixedEntry)}
	type short struct {
		node, kind, name, sub, typ, format string
		index                              int
		animated                           bool
	}
	var got []short
	for _, f := range res.Files() {
		got = append(got, short{f.NodeID, f.Kind, f.Filename, f.Subfolder, f.Type, f.Format, f.Index, f.Animated})
	}
	require.Equal(t, []short{
		{"9", "images", "ComfyUI_00001_.png", "", "output", "", 0, false},
		{"9", "images", "ComfyUI_00002_.png", "", "output", "", 1, false},
		{"12", "images", "ComfyUI_temp_abcde_00001_.png", "", "temp", "", 0, false},
		{"20", "images", "ComfyUI_00001_.mp4", "video", "output", "", 0, true},
		{"21", "gifs", "AnimateDiff_00001.mp4", "", "output", "video/h264-mp4", 0, false},
		{"22", "audio", "ComfyUI_00001.flac", "audio", "output", "", 0, false},
	}, got)
	require.Equal(t, []Text{{NodeID: "23", Index: 0, Text: "a caption"}, {NodeID: "23", Index: 1, Text: "second"}}, res.Texts())
	require.Contains(t, string(res.Entry.Workflow()), "18446744073709551615")

	oc, err := res.Entry.outcome("P")
	require.NoError(t, err)
	require.Equal(t, outcomeSuccess, oc)
}

func TestHistoryOutcome(t *testing.T) {
	t.Parallel()
	failed := decodeEntry(t, `{"prompt": [], "outputs": {}, "status": {"status_str": "error", "completed": false, "messages": [
		["execution_start", {"prompt_id": "P"}],
		["execution_error", {"prompt_id": "P", "node_id": "3", "node_type": "KSampler", "exception_type": "torch.OutOfMemoryError",
		  "exception_message": "Allocation on device\n", "traceback": [], "current_inputs": {}, "executed": []}]]}}`)
	_, err := failed.outcome("P")
	var xerr *ExecutionError
	require.ErrorAs(t, err, &xerr)
	require.Equal(t, "3", xerr.NodeID)
	require.True(t, xerr.IsOOM())
	require.Equal(t, "Workflow execution error: Node Type: KSampler, Node ID: 3, Message: Allocation on device", xerr.Detail())

	interrupted := decodeEntry(t, `{"prompt": [], "outputs": {}, "status": {"status_str": "error", "completed": false, "messages": [
		["execution_interrupted", {"prompt_id": "P", "node_id": "3", "node_type": "KSampler", "executed": []}]]}}`)
	oc, err := interrupted.outcome("P")
	require.Equal(t, outcomeInterrupted, oc)
	require.ErrorIs(t, err, ErrInterrupted)

	noStatus := decodeEntry(t, `{"prompt": [], "outputs": {}, "status": null}`)
	oc, err = noStatus.outcome("P")
	require.NoError(t, err)
	require.Equal(t, outcomeNone, oc)
}

func TestDecodeQueueSortsPending(t *testing.T) {
	t.Parallel()
	q, err := decodeQueue([]byte(`{"queue_running": [[0, "r", {}, {"client_id": "C"}, ["9"]]],
		"queue_pending": [[3, "c", {}, {}, ["9"]], [-1.0, "front", {}, {}, []], [2, "b", {}, {}, []], [2, "a", {}, {}, []], ["junk"]]}`))
	require.NoError(t, err)
	var ids []string
	for _, it := range q.Pending {
		ids = append(ids, it.PromptID)
	}
	require.Equal(t, []string{"front", "a", "b", "c"}, ids)
	require.Equal(t, json.Number("-1.0"), q.Pending[0].Number)
	require.True(t, q.IsRunning("r"))
	require.True(t, q.IsPending("b"))
	require.False(t, q.IsPending("r"))
}

func TestErrorsMatch(t *testing.T) {
	t.Parallel()
	require.ErrorIs(t, &StatusError{StatusCode: 503}, ErrUnavailable)
	require.NotErrorIs(t, &StatusError{StatusCode: 500}, ErrUnavailable)
	se := &StatusError{Method: "POST", URL: "http://127.0.0.1:8188/prompt", StatusCode: 500}
	require.Equal(t, "500 Server Error: Internal Server Error for url: /prompt", se.Error())
	require.True(t, errors.Is(unavailable("x", errors.New("refused")), ErrUnavailable))
	require.False(t, (&ExecutionError{ExceptionType: "RuntimeError", ExceptionMessage: "boom"}).IsOOM())
	require.True(t, (&ExecutionError{ExceptionMessage: "CUDA out of memory. Tried to allocate"}).IsOOM())
}

func FuzzDecodeHistoryEntry(f *testing.F) {
	f.Add([]byte(mixedEntry))
	f.Add([]byte(`{"outputs": {"1": {"images": [1, {"filename": 5}], "animated": "x"}}, "status": {"messages": [[], ["execution_error"]]}}`))
	f.Add([]byte(`{"outputs": [], "status": "x", "prompt": {}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var raw json.RawMessage
		if unmarshalLenient(b, &raw) != nil {
			return
		}
		e, err := decodeHistoryEntry(raw)
		if err != nil {
			return
		}
		res := &Result{PromptID: "P", Entry: e}
		for _, file := range res.Files() {
			if file.Filename == "" {
				t.Fatalf("file without a name")
			}
		}
		_ = res.Texts()
		_, _ = e.outcome("P")
	})
}

func FuzzDecodeQueue(f *testing.F) {
	f.Add([]byte(`{"queue_running": [[0, "r", {}, {}, ["9"]]], "queue_pending": [[2, "b"], [1.5, "a", {}, {}, []]]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := decodeQueue(b)
		if err != nil {
			return
		}
		_ = q.IsRunning("r")
	})
}
