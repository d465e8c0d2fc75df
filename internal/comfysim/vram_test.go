package comfysim_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

// controlStats reads the emulator's counters over its control API.
func (h *harness) controlStats() comfysim.Stats {
	h.t.Helper()
	resp, err := http.Get(h.sim.ControlURL + "/control/stats")
	require.NoError(h.t, err)
	defer resp.Body.Close()
	var st comfysim.Stats
	require.NoError(h.t, json.NewDecoder(resp.Body).Decode(&st))
	return st
}

// runPrompt submits a prompt and waits for its history entry; it returns
// the entry's execution time from its message timestamps.
func (h *harness) runPrompt(prompt string) time.Duration {
	h.t.Helper()
	pid := newID()
	h.submit(body(prompt, "", pid))
	e := h.history(pid)
	require.Equal(h.t, "success", obj(h.t, e, "status")["status_str"], "prompt %s", pid)
	var start, end int64
	for _, m := range obj(h.t, e, "status")["messages"].([]any) {
		pair := m.([]any)
		ts, err := pair[1].(map[string]any)["timestamp"].(json.Number).Int64()
		require.NoError(h.t, err)
		switch pair[0] {
		case "execution_start":
			start = ts
		case "execution_success":
			end = ts
		}
	}
	return time.Duration(end-start) * time.Millisecond
}

const loadDelay = 400 * time.Millisecond

func TestVRAMHoldsOneModel(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{Checkpoints: []string{"a.safetensors", "b.safetensors"}, ModelLoadDelay: loadDelay})
	st := h.controlStats()
	require.Zero(t, st.ModelLoads)
	require.Empty(t, st.LoadedModels)

	// The first prompt loads its checkpoint and pays for it.
	took := h.runPrompt(workflow{ckpt: "a.safetensors", seed: "1"}.json())
	require.GreaterOrEqual(t, took, loadDelay)
	st = h.controlStats()
	require.EqualValues(t, 1, st.ModelLoads)
	require.Equal(t, []string{"a.safetensors"}, st.LoadedModels)

	// The same checkpoint again (another seed, so nothing is cached) is
	// in VRAM already.
	took = h.runPrompt(workflow{ckpt: "a.safetensors", seed: "2"}.json())
	require.Less(t, took, loadDelay)
	require.EqualValues(t, 1, h.controlStats().ModelLoads)

	// Another one evicts it; going back pays again.
	require.GreaterOrEqual(t, h.runPrompt(workflow{ckpt: "b.safetensors", seed: "3"}.json()), loadDelay)
	st = h.controlStats()
	require.EqualValues(t, 2, st.ModelLoads)
	require.Equal(t, []string{"b.safetensors"}, st.LoadedModels)
	require.GreaterOrEqual(t, h.runPrompt(workflow{ckpt: "a.safetensors", seed: "4"}.json()), loadDelay)
	require.EqualValues(t, 3, h.controlStats().ModelLoads)

	// A prompt without loaders leaves the model alone.
	h.runPrompt(`{"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
  "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}`)
	st = h.controlStats()
	require.EqualValues(t, 3, st.ModelLoads)
	require.Equal(t, []string{"a.safetensors"}, st.LoadedModels)
}

func TestVRAMSplitLoadersAreOneModel(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{Loras: []string{"style.safetensors"}})
	h.runPrompt(fluxPrompt("flux1-dev.safetensors", "", "1"))
	st := h.controlStats()
	require.EqualValues(t, 1, st.ModelLoads)
	require.Equal(t, []string{"ae.safetensors", "clip_l.safetensors", "flux1-dev.safetensors", "t5xxl_fp8_e4m3fn.safetensors"}, st.LoadedModels)
	h.runPrompt(fluxPrompt("flux1-dev.safetensors", "", "2"))
	require.EqualValues(t, 1, h.controlStats().ModelLoads)
	// A LoRA changes the set: one more load.
	h.runPrompt(fluxPrompt("flux1-dev.safetensors", "style.safetensors", "3"))
	st = h.controlStats()
	require.EqualValues(t, 2, st.ModelLoads)
	require.Contains(t, st.LoadedModels, "style.safetensors")
}

func TestVRAMFreeAndRestartUnload(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	wf := func(seed string) string { return workflow{seed: seed}.json() }
	h.runPrompt(wf("1"))
	require.EqualValues(t, 1, h.controlStats().ModelLoads)

	// /free without either flag keeps the model.
	st, _ := h.post("/free", `{}`)
	require.Equal(t, http.StatusOK, st)
	h.runPrompt(wf("2"))
	require.EqualValues(t, 1, h.controlStats().ModelLoads)

	// unload_models, and free_memory alone, unload it (the executor acts
	// on the flags before its next prompt).
	for i, free := range []string{`{"unload_models": true}`, `{"free_memory": true}`, `{"unload_models": false, "free_memory": true}`} {
		st, _ = h.post("/free", free)
		require.Equal(t, http.StatusOK, st)
		h.runPrompt(wf(string(rune('3' + i))))
		require.EqualValues(t, 2+i, h.controlStats().ModelLoads, "after /free %s", free)
	}

	h.sim.Restart()
	require.Empty(t, h.controlStats().LoadedModels)
	h.runPrompt(wf("9"))
	require.EqualValues(t, 5, h.controlStats().ModelLoads)
}

func TestVRAMInterruptedLoadLeavesNothing(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{Checkpoints: []string{"a.safetensors", "b.safetensors"}})
	h.runPrompt(workflow{ckpt: "a.safetensors"}.json())

	ctl, err := http.Post(h.sim.ControlURL+"/control/model-load-delay", "application/json",
		strings.NewReader(`{"model_load_delay": "1h"}`))
	require.NoError(t, err)
	var got map[string]string
	require.NoError(t, json.NewDecoder(ctl.Body).Decode(&got))
	ctl.Body.Close()
	require.Equal(t, "1h0m0s", got["model_load_delay"])

	pid := newID()
	h.submit(body(workflow{ckpt: "b.safetensors"}.json(), "", pid))
	// The load has evicted a when the VRAM reads empty.
	require.Eventually(t, func() bool { return len(h.controlStats().LoadedModels) == 0 }, waitFor, time.Millisecond)
	st, _ := h.post("/interrupt", `{}`)
	require.Equal(t, http.StatusOK, st)
	ev, _ := lastMessage(t, h.history(pid))
	require.Equal(t, "execution_interrupted", ev)
	s := h.controlStats()
	require.EqualValues(t, 1, s.ModelLoads)
	require.Empty(t, s.LoadedModels)

	resp, err := http.Post(h.sim.ControlURL+"/control/model-load-delay", "application/json", strings.NewReader(`{"model_load_delay": "soon"}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}
