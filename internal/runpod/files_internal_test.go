package runpod

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

// TestOutputFileNames: the file route finds an output by "subfolder/name"
// or by a bare name that is unique, and otherwise says which names exist.
func TestOutputFileNames(t *testing.T) {
	t.Parallel()
	out, err := json.Marshal(proto.Output{
		Images: []proto.OutputItem{{Filename: "a.png", Type: proto.ItemBase64, Blob: "out/j/1/9/a.png"},
			{Filename: "b.png", Subfolder: "x", Type: proto.ItemBase64, Blob: "out/j/1/9/x/b.png"},
			{Filename: "b.png", Subfolder: "y", Type: proto.ItemBase64, Blob: "out/j/1/9/y/b.png"}},
		Text: []proto.OutputItem{{Filename: "note.txt", Type: proto.ItemText, Data: "hi"}},
	})
	require.NoError(t, err)
	rec := &proto.Record{ID: "j", Status: proto.StatusCompleted, Output: out}
	for name, blob := range map[string]string{"a.png": "out/j/1/9/a.png", "x/b.png": "out/j/1/9/x/b.png", "y/b.png": "out/j/1/9/y/b.png"} {
		it, err := outputFile(rec, name)
		require.NoError(t, err, name)
		require.Equal(t, blob, it.Blob, name)
	}
	it, err := outputFile(rec, "note.txt")
	require.NoError(t, err)
	require.Equal(t, "hi", it.Data)
	_, err = outputFile(rec, "b.png")
	require.EqualError(t, err, "job j has 2 files named b.png: name one as subfolder/name of a.png, x/b.png, y/b.png, note.txt")
	_, err = outputFile(rec, "z/a.png")
	require.EqualError(t, err, "job j has no file named z/a.png; its files: a.png, x/b.png, y/b.png, note.txt")

	_, err = outputFile(&proto.Record{ID: "r", Status: proto.StatusInProgress}, "a.png")
	require.EqualError(t, err, "job r has no output files: it is IN_PROGRESS")
	_, err = outputFile(&proto.Record{ID: "w", Status: proto.StatusCompleted, Output: json.RawMessage(`"a worker's own string"`)}, "a.png")
	require.EqualError(t, err, "job w has no output files: its output is its worker's own")
	_, err = outputFile(&proto.Record{ID: "e", Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":[]}`)}, "a.png")
	require.EqualError(t, err, "job e has no output files")
}
