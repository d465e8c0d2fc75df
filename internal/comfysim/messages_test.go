package comfysim_test

import (
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

// nodeSteps is the 3-message pattern of a node without progress or UI.
func nodeSteps(id string) []step {
	return []step{{"progress_state", id + ":running"}, {"executing", id}, {"progress_state", id + ":finished"}}
}

// freshRun is §5.7 A for the §2 graph with steps=2 (both ticks are the first
// and the final one, so throttling sends both).
func freshRun() []step {
	var want []step
	want = append(want, step{"status", ""}, step{"status", ""}, step{"execution_start", ""}, step{"execution_cached", ""})
	for _, id := range []string{"4", "5", "7", "6"} {
		want = append(want, nodeSteps(id)...)
	}
	want = append(want,
		step{"progress_state", "3:running"}, step{"executing", "3"},
		step{"progress_state", "3:running"}, step{"progress", "1"},
		step{"progress_state", "3:running"}, step{"progress", "2"},
		step{"progress_state", "3:finished"},
	)
	want = append(want, nodeSteps("8")...)
	want = append(want,
		step{"progress_state", "9:running"}, step{"executing", "9"}, step{"executed", "9"}, step{"progress_state", "9:finished"},
		step{"execution_success", ""}, step{"status", ""}, step{"executing", "<null>"},
	)
	return want
}

func TestMessageOrderFreshThenCached(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ws := h.dial("client-a")
	prompt := workflow{seed: "18446744073709551615"}.json()

	// A: fresh run.
	pid := newID()
	resp := h.submit(body(prompt, "client-a", pid))
	require.Equal(t, pid, resp["prompt_id"])
	require.Equal(t, json.Number("0"), resp["number"])
	require.Empty(t, resp["node_errors"])
	msgs := ws.until(pid)
	require.Equal(t, freshRun(), labels(msgs))

	require.Equal(t, json.Number("1"), obj(t, msgs[0].Data, "status", "exec_info")["queue_remaining"])
	require.Equal(t, json.Number("1"), obj(t, msgs[1].Data, "status", "exec_info")["queue_remaining"])
	require.Equal(t, json.Number("0"), obj(t, msgs[len(msgs)-2].Data, "status", "exec_info")["queue_remaining"])
	start := msgs[2].Data
	require.Equal(t, pid, start["prompt_id"])
	require.NotNil(t, start["timestamp"])
	require.Equal(t, []any{}, msgs[3].Data["nodes"])
	for _, m := range msgs {
		if m.Type == "executing" && m.Data["node"] != nil {
			require.Equal(t, m.Data["node"], m.Data["display_node"])
			require.Equal(t, pid, m.Data["prompt_id"])
		}
		if m.Type == "progress" {
			require.Equal(t, json.Number("2"), m.Data["max"])
			require.Equal(t, "3", m.Data["node"])
		}
	}
	end := msgs[len(msgs)-1].Data
	_, hasDisplay := end["display_node"]
	require.False(t, hasDisplay, "executing null has no display_node")
	executed := msgs[len(msgs)-5]
	require.Equal(t, "executed", executed.Type)
	images := executed.Data["output"].(map[string]any)["images"].([]any)
	require.Equal(t, map[string]any{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}, images[0])

	// B: the identical prompt is served from the cache.
	pid2 := newID()
	h.submit(body(prompt, "client-a", pid2))
	msgs2 := ws.until(pid2)
	require.Equal(t, []step{
		{"status", ""}, {"status", ""}, {"execution_start", ""}, {"execution_cached", ""},
		{"executed", "9"}, {"progress_state", "9:finished"},
		{"execution_success", ""}, {"status", ""}, {"executing", "<null>"},
	}, labels(msgs2))
	require.Equal(t, []any{"4", "5", "6", "7", "3", "8", "9"}, msgs2[3].Data["nodes"])
	require.Equal(t, executed.Data["output"], msgs2[4].Data["output"], "same file as the first run")
	ents, err := os.ReadDir(filepath.Join(h.sim.Dir(), "output"))
	require.NoError(t, err)
	require.Len(t, ents, 1, "no new file on a cached run")

	// History of both runs: same outputs, status, messages and meta.
	for _, id := range []string{pid, pid2} {
		e := h.history(id)
		require.Equal(t, []any{map[string]any{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}},
			obj(t, e, "outputs", "9")["images"])
		st := obj(t, e, "status")
		require.Equal(t, "success", st["status_str"])
		require.Equal(t, true, st["completed"])
		var events []string
		for _, m := range st["messages"].([]any) {
			events = append(events, m.([]any)[0].(string))
		}
		require.Equal(t, []string{"execution_start", "execution_cached", "execution_success"}, events)
		require.Equal(t, map[string]any{"node_id": "9", "display_node": "9", "parent_node": nil, "real_node_id": "9"}, obj(t, e, "meta", "9"))
		tuple := e["prompt"].([]any)
		require.Len(t, tuple, 5)
		require.Equal(t, id, tuple[1])
		require.Equal(t, []any{"9"}, tuple[4])
	}
}

func TestMessageOrderNodeException(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	h.sim.SetFault(comfysim.Fault{FailClass: "KSampler", FailMessage: "mat1 and mat2 shapes cannot be multiplied", FailType: "RuntimeError"})
	ws := h.dial("c")
	pid := newID()
	h.submit(body(workflow{seed: "18446744073709551615"}.json(), "c", pid))
	msgs := ws.until(pid)
	var want []step
	want = append(want, step{"status", ""}, step{"status", ""}, step{"execution_start", ""}, step{"execution_cached", ""})
	for _, id := range []string{"4", "5", "7", "6"} {
		want = append(want, nodeSteps(id)...)
	}
	want = append(want, step{"progress_state", "3:running"}, step{"executing", "3"}, step{"execution_error", ""},
		step{"status", ""}, step{"executing", "<null>"})
	require.Equal(t, want, labels(msgs))

	e := msgs[len(msgs)-3].Data
	require.Equal(t, pid, e["prompt_id"])
	require.Equal(t, "3", e["node_id"])
	require.Equal(t, "KSampler", e["node_type"])
	require.Equal(t, []any{"4", "5", "7", "6"}, e["executed"])
	require.Equal(t, "mat1 and mat2 shapes cannot be multiplied\n", e["exception_message"])
	require.Equal(t, "RuntimeError", e["exception_type"])
	require.NotEmpty(t, e["traceback"])
	inputs := e["current_inputs"].(map[string]any)
	require.Equal(t, []any{json.Number("18446744073709551615")}, inputs["seed"])
	require.Equal(t, []any{"euler"}, inputs["sampler_name"])
	require.Equal(t, []any{"4", "5", "6", "7", "3", "8", "9"}, e["current_outputs"])
	require.NotNil(t, e["timestamp"])

	hist := h.history(pid)
	st := obj(t, hist, "status")
	require.Equal(t, "error", st["status_str"])
	require.Equal(t, false, st["completed"])
	ms := st["messages"].([]any)
	require.Equal(t, "execution_error", ms[len(ms)-1].([]any)[0])
	require.Empty(t, hist["outputs"])
}

func TestMessageOrderInterrupt(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ws := h.dial("c")
	pid := newID()
	h.submit(body(workflow{steps: 10000}.json(), "c", pid))
	first := ws.waitType("progress")
	require.Equal(t, json.Number("1"), first.Data["value"])

	// A targeted interrupt of another prompt does nothing.
	st, _ := h.post("/interrupt", `{"prompt_id": "`+newID()+`"}`)
	require.Equal(t, 200, st)
	st, _ = h.post("/interrupt", `{"prompt_id": "`+pid+`"}`)
	require.Equal(t, 200, st)

	var rest []wsMsg
	for {
		m := ws.next()
		if m.Type == "progress" || m.Type == "progress_state" {
			continue // ticks that were already on their way
		}
		rest = append(rest, m)
		if m.Type == "executing" {
			break
		}
	}
	require.Equal(t, []step{{"execution_interrupted", ""}, {"status", ""}, {"executing", "<null>"}}, labels(rest))
	ei := rest[0].Data
	require.Equal(t, pid, ei["prompt_id"])
	require.Equal(t, "3", ei["node_id"])
	require.Equal(t, "KSampler", ei["node_type"])
	require.Equal(t, []any{"4", "5", "7", "6"}, ei["executed"])
	require.NotNil(t, ei["timestamp"])

	hist := h.history(pid)
	ms := obj(t, hist, "status")["messages"].([]any)
	require.Equal(t, "execution_interrupted", ms[len(ms)-1].([]any)[0])
	require.Equal(t, "error", obj(t, hist, "status")["status_str"])

	// An interrupt while idle is forgotten when the next prompt starts.
	st, _ = h.post("/interrupt", "")
	require.Equal(t, 200, st)
	pid2 := newID()
	h.submit(body(workflow{seed: "2"}.json(), "c", pid2))
	require.Equal(t, "success", obj(t, h.history(pid2), "status")["status_str"])
}

func TestNoClientID(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ws := h.dial("")
	require.Len(t, ws.sid, 32, "server-minted sid is uuid4().hex")
	prompt := workflow{}.json()
	pid := newID()
	h.submit(body(prompt, "", pid))
	// Without client_id the socket sees status, progress_state and
	// progress broadcasts only; completion is read from history.
	seen := map[string]bool{}
	for {
		m := ws.next()
		seen[m.Type] = true
		if m.Type == "status" && obj(t, m.Data, "status", "exec_info")["queue_remaining"] == json.Number("0") {
			break
		}
	}
	require.Equal(t, map[string]bool{"status": true, "progress_state": true, "progress": true}, seen)
	e := h.history(pid)
	require.NotEmpty(t, e["outputs"])

	// The v0.3.68+ quirk: a cached output node is missing from history when
	// there is no client_id.
	pid2 := newID()
	h.submit(body(prompt, "", pid2))
	e2 := h.history(pid2)
	require.Equal(t, "success", obj(t, e2, "status")["status_str"])
	require.Empty(t, e2["outputs"])
	require.Empty(t, e2["meta"])
}

func TestReconnectGetsExecutingNode(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	h.sim.SetFault(comfysim.Fault{HangAtStep: 2})
	ws := h.dial("again")
	pid := newID()
	h.submit(body(workflow{steps: 3}.json(), "again", pid))
	ws.waitType("progress")
	require.NoError(t, ws.c.Close())
	// As in ComfyUI, the old connection's cleanup unregisters the sid: wait
	// for it before redialling, as a careful client does (§11.5).
	require.Eventually(t, func() bool { return h.sim.Stats().SocketsOpen == 0 }, 10*time.Second, time.Millisecond)

	ws2 := h.dial("again")
	m := ws2.next()
	require.Equal(t, "executing", m.Type)
	require.Equal(t, map[string]any{"node": "3"}, m.Data, "no prompt_id and no display_node")

	h.sim.SetFault(comfysim.Fault{})
	msgs := ws2.until(pid)
	require.Equal(t, "execution_success", msgs[len(msgs)-3].Type)
}

func TestFeatureFlagsAndPreviews(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ws := h.dial("meta")
	ws.send(`{"type": "feature_flags", "data": {"supports_preview_metadata": true}}`)
	ff := ws.next()
	require.Equal(t, "feature_flags", ff.Type)
	require.Equal(t, map[string]any{
		"supports_preview_metadata": true, "max_upload_size": json.Number("104857600"),
		"extension": map[string]any{"manager": map[string]any{"supports_v4": true}}, "node_replacements": true, "assets": false,
	}, ff.Data)
	_, feat := h.get("/features")
	require.Equal(t, ff.Data, decode(t, feat))

	plain := h.dial("plain")

	run := func(client string, ws *wsClient) []wsMsg {
		pid := newID()
		h.submit(`{"prompt": ` + workflow{seed: newSeed()}.json() + `, "client_id": "` + client + `", "prompt_id": "` + pid + `", "extra_data": {"preview_method": "auto"}}`)
		return ws.until(pid)
	}
	// With the handshake: progress_state, binary type 4, progress per tick.
	msgs := run("meta", ws)
	var kinds []string
	for _, m := range msgs {
		if m.Type == "<binary>" {
			typ := binary.BigEndian.Uint32(m.Binary)
			require.Equal(t, uint32(4), typ)
			n := binary.BigEndian.Uint32(m.Binary[4:])
			meta := decode(t, m.Binary[8:8+n])
			require.Equal(t, "3", meta["node_id"])
			require.Equal(t, "image/jpeg", meta["image_type"])
			require.Equal(t, []byte{0xff, 0xd8}, m.Binary[8+n:10+n], "JPEG")
		}
		if m.Type == "<binary>" || m.Type == "progress" || m.Type == "progress_state" {
			kinds = append(kinds, m.Type)
		}
	}
	require.Contains(t, strings.Join(kinds, ","), "progress_state,<binary>,progress,progress_state,<binary>,progress")

	// Without it: progress_state, progress, binary type 1 (JPEG format 1).
	msgs = run("plain", plain)
	kinds = nil
	for _, m := range msgs {
		if m.Type == "<binary>" {
			require.Equal(t, uint32(1), binary.BigEndian.Uint32(m.Binary))
			require.Equal(t, uint32(1), binary.BigEndian.Uint32(m.Binary[4:]))
			require.Equal(t, []byte{0xff, 0xd8}, m.Binary[8:10])
		}
		if m.Type == "<binary>" || m.Type == "progress" || m.Type == "progress_state" {
			kinds = append(kinds, m.Type)
		}
	}
	require.Contains(t, strings.Join(kinds, ","), "progress_state,progress,<binary>,progress_state,progress,<binary>")
}

// newSeed returns a seed literal that makes a run miss the cache.
func newSeed() string {
	return strconv.FormatUint(rand.Uint64(), 10)
}
