package comfysim_test

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

func TestRoutesAndAPIAlias(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{Checkpoints: []string{"a.safetensors", "sd15/b.safetensors"}})
	st, b, hdr := h.do(http.MethodGet, "/", "", nil)
	require.Equal(t, http.StatusOK, st)
	require.Contains(t, hdr.Get("Content-Type"), "text/html")
	require.Contains(t, string(b), "<html")
	st, _ = h.get("/api/")
	require.Equal(t, http.StatusNotFound, st, "static / has no /api alias")

	for _, p := range []string{"/system_stats", "/features", "/models", "/embeddings", "/object_info", "/queue", "/history", "/prompt", "/api/jobs"} {
		for _, prefix := range []string{"", "/api"} {
			st, b := h.get(prefix + p)
			require.Equal(t, http.StatusOK, st, prefix+p)
			require.True(t, json.Valid(b), prefix+p)
		}
	}
	st, _ = h.get("/nope")
	require.Equal(t, http.StatusNotFound, st)
	st, b, hdr = h.do(http.MethodDelete, "/prompt", "", nil)
	require.Equal(t, http.StatusMethodNotAllowed, st)
	require.Equal(t, "405: Method Not Allowed", string(b))
	require.NotEmpty(t, hdr.Get("Allow"))

	_, b = h.get("/system_stats")
	ss := decode(t, b)
	require.Equal(t, "0.27.0", obj(t, ss, "system")["comfyui_version"])
	require.Equal(t, "linux", obj(t, ss, "system")["os"])
	dev := ss["devices"].([]any)[0].(map[string]any)
	require.Equal(t, "cpu", dev["type"])
	require.Nil(t, dev["index"])

	_, b = h.get("/models/checkpoints")
	require.Equal(t, `["a.safetensors", "sd15/b.safetensors"]`, string(b))
	st, _ = h.get("/models/nope")
	require.Equal(t, http.StatusNotFound, st)
	_, b = h.get("/models")
	require.Contains(t, string(b), `"checkpoints", "configs", "loras"`)

	// A cross-site request or a mismatched Origin on a loopback Host is refused.
	req, _ := http.NewRequest(http.MethodGet, h.sim.URL+"/queue", nil)
	req.Header.Set("Origin", "http://evil.example")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	req, _ = http.NewRequest(http.MethodGet, h.sim.URL+"/queue", nil)
	req.Header.Set("Origin", h.sim.URL)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestObjectInfo(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{Checkpoints: []string{"x.safetensors"}})
	_, b := h.get("/object_info/KSampler")
	ks := obj(t, decode(t, b), "KSampler")
	req := obj(t, ks, "input", "required")
	seed := req["seed"].([]any)
	require.Equal(t, "INT", seed[0])
	require.Equal(t, json.Number("18446744073709551615"), obj(t, seed[1])["max"])
	require.Len(t, req["sampler_name"].([]any)[0], 44)
	require.Equal(t, []any{"model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image", "denoise"},
		obj(t, ks, "input_order")["required"])
	require.Equal(t, []any{"LATENT"}, ks["output"])
	require.Equal(t, false, ks["output_node"])
	require.Equal(t, "model/sampling", ks["category"])
	require.Equal(t, "nodes", ks["python_module"])
	require.Contains(t, string(b), `"cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01`)

	_, b = h.get("/object_info/CheckpointLoaderSimple")
	ck := obj(t, decode(t, b), "CheckpointLoaderSimple", "input", "required")["ckpt_name"].([]any)
	require.Equal(t, []any{"x.safetensors"}, ck[0])

	_, b = h.get("/object_info/SaveImage")
	si := obj(t, decode(t, b), "SaveImage")
	require.Equal(t, true, si["output_node"])
	require.Equal(t, []any{"images"}, si["output_name"])
	require.Equal(t, map[string]any{"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, obj(t, si, "input", "hidden"))

	_, b = h.get("/object_info/NoSuchNode")
	require.Equal(t, "{}", string(b))

	_, b = h.get("/object_info")
	all := decode(t, b)
	for _, c := range []string{"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
		"SaveImage", "PreviewImage", "LoadImage", "PreviewAny", "SaveAnimatedWEBP", "SaveAudio", "SaveVideo", "CreateVideo"} {
		require.Contains(t, all, c)
	}
	require.Equal(t, true, obj(t, all, "SaveVideo")["output_node"])
	require.Equal(t, []any{"COMBO", map[string]any{"tooltip": "The format to save the video as.", "default": "auto", "multiselect": false, "options": []any{"auto", "mp4"}}},
		obj(t, all, "SaveVideo", "input", "required")["format"])
}

func TestQueueHeapDeleteAndClear(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	h.sim.SetFault(comfysim.Fault{HangAtStep: 1})
	ws := h.dial("c")
	blocker := newID()
	h.submit(body(workflow{}.json(), "c", blocker))
	ws.waitType("executing")

	ids := map[string]float64{}
	for _, n := range []int{5, 3, 9, 1, 7} {
		id := newID()
		h.submit(`{"prompt": ` + workflow{seed: newSeed()}.json() + `, "prompt_id": "` + id + `", "number": ` + strconv.Itoa(n) + `}`)
		ids[id] = float64(n)
	}
	_, b := h.get("/queue")
	q := decode(t, b)
	require.Len(t, q["queue_running"], 1)
	pending := q["queue_pending"].([]any)
	require.Len(t, pending, 5)
	var numbers []float64
	for i, it := range pending {
		n, _ := it.([]any)[0].(json.Number).Float64()
		numbers = append(numbers, n)
		if i > 0 {
			parent, _ := pending[(i-1)/2].([]any)[0].(json.Number).Float64()
			require.LessOrEqual(t, parent, n, "heap property")
		}
	}
	require.Equal(t, []float64{1, 3, 9, 5, 7}, numbers, "the raw heapq array, not sorted")
	require.False(t, sort.Float64sAreSorted(numbers))

	var three string
	for id, n := range ids {
		if n == 3 {
			three = id
		}
	}
	st, _ := h.post("/queue", `{"delete": ["`+three+`", "unknown"]}`)
	require.Equal(t, http.StatusOK, st)
	_, b = h.get("/queue")
	require.Len(t, decode(t, b)["queue_pending"], 4)
	st, _ = h.post("/queue", `{"clear": true}`)
	require.Equal(t, http.StatusOK, st)
	_, b = h.get("/queue")
	q = decode(t, b)
	require.Empty(t, q["queue_pending"])
	require.Len(t, q["queue_running"], 1, "clear leaves the running prompt")
	st, _ = h.post("/queue", `not json`)
	require.Equal(t, http.StatusInternalServerError, st)
	h.sim.SetFault(comfysim.Fault{})
	h.history(blocker)
}

func TestHistoryPagingAndDelete(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	var ids []string
	for i := 0; i < 4; i++ {
		id := newID()
		h.submit(body(workflow{seed: strconv.Itoa(i + 1)}.json(), "", id))
		h.history(id)
		ids = append(ids, id)
	}
	keys := func(path string) []string {
		t.Helper()
		_, b := h.get(path)
		// Keys in document order (insertion order of the history dict).
		var out []string
		dec := json.NewDecoder(strings.NewReader(string(b)))
		tok, err := dec.Token()
		require.NoError(t, err)
		require.Equal(t, json.Delim('{'), tok)
		for dec.More() {
			k, err := dec.Token()
			require.NoError(t, err)
			out = append(out, k.(string))
			var skip json.RawMessage
			require.NoError(t, dec.Decode(&skip))
		}
		return out
	}
	require.Equal(t, ids, keys("/history"))
	require.Equal(t, ids[2:], keys("/history?max_items=2"))
	require.Equal(t, ids[1:3], keys("/history?offset=1&max_items=2"))
	require.Equal(t, ids[3:], keys("/history?offset=3"))
	st, _ := h.get("/history?max_items=abc")
	require.Equal(t, http.StatusInternalServerError, st)

	st, _ = h.post("/history", `{"delete": ["`+ids[0]+`"]}`)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, ids[1:], keys("/history"))
	_, b := h.get("/history/" + ids[0])
	require.Equal(t, "{}", string(b))
	st, _ = h.post("/history", `{"clear": true}`)
	require.Equal(t, http.StatusOK, st)
	require.Empty(t, keys("/history"))
}

func TestStatusBroadcasts(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	h.sim.SetFault(comfysim.Fault{HangAtStep: 1})
	watcher := h.dial("w")
	owner := h.dial("o")
	id1, id2 := newID(), newID()
	h.submit(body(workflow{}.json(), "o", id1))
	h.submit(body(workflow{seed: "2"}.json(), "o", id2))
	owner.waitType("executing")
	remaining := func(m wsMsg) json.Number {
		return obj(t, m.Data, "status", "exec_info")["queue_remaining"].(json.Number)
	}
	// put(1), get(1), put(2) reach every socket.
	require.Equal(t, json.Number("1"), remaining(watcher.waitType("status")))
	require.Equal(t, json.Number("1"), remaining(watcher.waitType("status")))
	require.Equal(t, json.Number("2"), remaining(watcher.waitType("status")))
	// Deleting the last pending item broadcasts two status messages.
	_, _ = h.post("/queue", `{"delete": ["`+id2+`"]}`)
	require.Equal(t, json.Number("1"), remaining(watcher.waitType("status")))
	require.Equal(t, json.Number("1"), remaining(watcher.waitType("status")))
	h.sim.SetFault(comfysim.Fault{})
	require.Equal(t, json.Number("0"), remaining(watcher.waitType("status")))
}

func TestJobsAPI(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ok := newID()
	h.submit(`{"prompt": ` + workflow{}.json() + `, "prompt_id": "` + ok + `", "extra_data": {"extra_pnginfo": {"workflow": {"id": "wf-1"}}}}`)
	h.history(ok)
	h.sim.SetFault(comfysim.Fault{HangAtStep: 1})
	ws := h.dial("c")
	running := newID()
	h.submit(body(workflow{seed: "2"}.json(), "c", running))
	ws.waitType("executing")
	pending := newID()
	h.submit(body(workflow{seed: "3"}.json(), "c", pending))

	_, b := h.get("/api/jobs/" + ok)
	job := decode(t, b)
	require.Equal(t, "completed", job["status"])
	require.Equal(t, "wf-1", job["workflow_id"])
	require.Equal(t, json.Number("1"), job["outputs_count"])
	require.Equal(t, "9", obj(t, job, "preview_output")["nodeId"])
	require.Contains(t, job, "outputs")
	require.Contains(t, job, "workflow")
	_, b = h.get("/api/jobs/" + running)
	require.Equal(t, "in_progress", decode(t, b)["status"])
	_, b = h.get("/api/jobs/" + pending)
	require.Equal(t, "pending", decode(t, b)["status"])
	st, b := h.get("/api/jobs/" + newID())
	require.Equal(t, http.StatusNotFound, st)
	require.Equal(t, map[string]any{"error": "Job not found"}, decode(t, b))

	_, b = h.get("/api/jobs?status=pending,in_progress&sort_order=asc")
	list := decode(t, b)
	require.Len(t, list["jobs"], 2)
	require.Equal(t, map[string]any{"offset": json.Number("0"), "limit": nil, "total": json.Number("2"), "has_more": false}, list["pagination"])
	st, _ = h.get("/api/jobs?status=bogus")
	require.Equal(t, http.StatusBadRequest, st)
	st, _ = h.get("/api/jobs?limit=0")
	require.Equal(t, http.StatusBadRequest, st)

	st, b = h.post("/api/jobs/"+pending+"/cancel", "")
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, map[string]any{"cancelled": true}, decode(t, b))
	st, b = h.post("/api/jobs/cancel", `{"job_ids": ["nope"]}`)
	require.Equal(t, http.StatusBadRequest, st)
	require.Equal(t, []any{"nope"}, decode(t, b)["invalid_ids"])
	st, b = h.post("/api/jobs/cancel", `{"job_ids": ["`+running+`"]}`)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, map[string]any{"cancelled": true}, decode(t, b))
	ev, _ := lastMessage(t, h.history(running))
	require.Equal(t, "execution_interrupted", ev)
	_, b = h.get("/api/jobs/" + running)
	require.Equal(t, "cancelled", decode(t, b)["status"])
	_, b = h.post("/api/jobs/"+ok+"/cancel", "")
	require.Equal(t, map[string]any{"cancelled": false}, decode(t, b))
}

func TestFreeResetsCacheWhileIdle(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ws := h.dial("c")
	p := workflow{}.json()
	id := newID()
	h.submit(body(p, "c", id))
	ws.until(id)
	st, _ := h.post("/free", `{"unload_models": true, "free_memory": true}`)
	require.Equal(t, http.StatusOK, st)
	id2 := newID()
	h.submit(body(p, "c", id2))
	msgs := ws.until(id2)
	require.Equal(t, []any{}, msgs[3].Data["nodes"], "nothing cached after /free")
	st, _ = h.post("/free", `[]`)
	require.Equal(t, http.StatusInternalServerError, st)
}
