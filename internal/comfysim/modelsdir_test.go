package comfysim_test

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

// Files that appear in the emulator's models folder are offered at once,
// as real ComfyUI offers them once the folder changed: /object_info,
// /models/{folder}, and a prompt's validation see them.
func TestModelsDirFilesAppear(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	h := setup(t, comfysim.Config{ModelsDir: dir, Checkpoints: []string{"x.safetensors"}})
	_, b := h.get("/object_info/CheckpointLoaderSimple")
	ck := obj(t, decode(t, b), "CheckpointLoaderSimple", "input", "required")["ckpt_name"].([]any)
	require.Equal(t, []any{"x.safetensors"}, ck[0])
	st, _ := h.post("/prompt", body(workflow{ckpt: "new-0123456789ab.safetensors"}.json(), "", newID()))
	require.Equal(t, http.StatusBadRequest, st, "not there yet")

	write := func(rel string) {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte("weights"), 0o644))
	}
	write("checkpoints/new-0123456789ab.safetensors")
	write("checkpoints/sub/deep.ckpt")
	write("checkpoints/.hidden.safetensors")       // a partial or hidden file: not listed
	write("checkpoints/notes.txt")                 // not a model extension
	write("checkpoints/.comfyfleet/x.safetensors") // a hidden folder
	write("loras/style.safetensors")
	write("clip/legacy.safetensors") // ComfyUI reads clip/ as text_encoders

	_, b = h.get("/object_info/CheckpointLoaderSimple")
	ck = obj(t, decode(t, b), "CheckpointLoaderSimple", "input", "required")["ckpt_name"].([]any)
	require.Equal(t, []any{"new-0123456789ab.safetensors", "sub/deep.ckpt", "x.safetensors"}, ck[0])
	_, b = h.get("/object_info/LoraLoader")
	lo := obj(t, decode(t, b), "LoraLoader", "input", "required")["lora_name"].([]any)
	require.Equal(t, []any{"style.safetensors"}, lo[0])
	_, b = h.get("/models/text_encoders")
	require.Contains(t, string(b), `"legacy.safetensors"`)

	pid := newID()
	h.submit(body(workflow{ckpt: "new-0123456789ab.safetensors"}.json(), "", pid))
	entry := h.history(pid)
	require.Equal(t, "success", obj(t, entry, "status")["status_str"])
}
