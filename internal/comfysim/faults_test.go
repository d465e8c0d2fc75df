package comfysim_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

// lastMessage returns the last [event, data] of a history entry.
func lastMessage(t *testing.T, e map[string]any) (string, map[string]any) {
	t.Helper()
	ms := obj(t, e, "status")["messages"].([]any)
	last := ms[len(ms)-1].([]any)
	return last[0].(string), last[1].(map[string]any)
}

func TestFaultFailClass(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	h.sim.SetFault(comfysim.Fault{FailClass: "VAEDecode", FailType: "ValueError", FailMessage: "bad latent", FailTimes: 1})
	pid := newID()
	h.submit(body(workflow{}.json(), "c", pid))
	ev, data := lastMessage(t, h.history(pid))
	require.Equal(t, "execution_error", ev)
	require.Equal(t, "8", data["node_id"])
	require.Equal(t, "VAEDecode", data["node_type"])
	require.Equal(t, "ValueError", data["exception_type"])
	require.Equal(t, "bad latent\n", data["exception_message"])
	require.Equal(t, []any{"4", "5", "7", "6", "3"}, data["executed"])

	// FailTimes: 1 cleared the fault; the same prompt now succeeds and
	// reuses the cached upstream nodes.
	require.Equal(t, comfysim.Fault{}, h.sim.Fault())
	ws := h.dial("c")
	pid2 := newID()
	h.submit(body(workflow{}.json(), "c", pid2))
	msgs := ws.until(pid2)
	cached := msgs[3]
	require.Equal(t, "execution_cached", cached.Type)
	require.Equal(t, []any{"4", "5", "6", "7", "3"}, cached.Data["nodes"])
	require.Equal(t, "success", obj(t, h.history(pid2), "status")["status_str"])
}

func TestFaultOOM(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	h.sim.SetFault(comfysim.Fault{FailClass: "KSampler", FailOOM: true, FailAtStep: 2})
	ws := h.dial("c")
	pid := newID()
	h.submit(body(workflow{steps: 3}.json(), "c", pid))
	msgs := ws.until(pid)
	var errMsg wsMsg
	sawProgress := false
	for _, m := range msgs {
		if m.Type == "progress" {
			sawProgress = true
		}
		if m.Type == "execution_error" {
			errMsg = m
		}
	}
	require.True(t, sawProgress, "failed mid-sampling, after the first tick")
	require.Equal(t, "torch.OutOfMemoryError", errMsg.Data["exception_type"])
	msg := errMsg.Data["exception_message"].(string)
	require.True(t, strings.HasPrefix(msg, "CUDA out of memory."))
	require.True(t, strings.HasSuffix(msg, "\nThis error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have accidentally set the batch_size to a large number."))
}

func TestFaultHistoryDelay(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	const delay = 150 * time.Millisecond
	h.sim.SetFault(comfysim.Fault{HistoryDelay: delay})
	start := time.Now()
	st, b := h.get("/history/" + newID())
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, "{}", string(b))
	require.GreaterOrEqual(t, time.Since(start), delay)
}

func TestFaultDropWebSockets(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	a := h.dial("a")
	b := h.dial("b")
	require.Equal(t, 2, h.sim.DropWebSockets())
	require.Error(t, a.closed())
	require.Error(t, b.closed())
	require.Eventually(t, func() bool { return h.sim.Stats().SocketsOpen == 0 }, waitFor, time.Millisecond)
	c := h.dial("a") // reconnecting works
	pid := newID()
	h.submit(body(workflow{}.json(), "a", pid))
	c.until(pid)
}

func TestFaultDropWebSocketsMidPrompt(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	h.sim.SetFault(comfysim.Fault{DropWebSocketsAtStep: 2})
	ws := h.dial("c")
	pid := newID()
	h.submit(body(workflow{steps: 3}.json(), "c", pid))
	require.Error(t, ws.closed())
	// The prompt goes on; history has it.
	require.Equal(t, "success", obj(t, h.history(pid), "status")["status_str"])
}

func TestFaultDown(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ws := h.dial("c")
	h.sim.SetDown(true)
	require.Error(t, ws.closed())
	_, err := http.Get(h.sim.URL + "/system_stats")
	require.Error(t, err, "no HTTP answer while down")
	require.True(t, h.sim.Stats().Down)

	h.sim.SetFault(comfysim.Fault{DownStatus: http.StatusServiceUnavailable})
	st, _ := h.get("/system_stats")
	require.Equal(t, http.StatusServiceUnavailable, st)

	h.sim.SetDown(false)
	st, _ = h.get("/system_stats")
	require.Equal(t, http.StatusOK, st)
}

func TestFaultRestart(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	done := newID()
	h.submit(body(workflow{}.json(), "", done))
	h.history(done)

	h.sim.SetFault(comfysim.Fault{HangAtStep: 1})
	ws := h.dial("c")
	running := newID()
	h.submit(body(workflow{seed: "2"}.json(), "c", running))
	pending := newID()
	h.submit(body(workflow{seed: "3"}.json(), "c", pending))
	ws.waitType("executing")
	require.Equal(t, running, h.sim.Stats().Running)

	h.sim.SetFault(comfysim.Fault{})
	h.sim.Restart()
	require.Error(t, ws.closed())
	_, b := h.get("/queue")
	require.Equal(t, map[string]any{"queue_running": []any{}, "queue_pending": []any{}}, decode(t, b))
	_, b = h.get("/history")
	require.Equal(t, "{}", string(b))
	st := h.sim.Stats()
	require.Equal(t, int64(1), st.Restarts)
	require.Equal(t, int64(1), st.PromptsAborted)
	require.Empty(t, st.Running)

	// The counter restarts at 0, the cache is gone (a new file is written)
	// and the killed prompt never gets a history entry.
	pid := newID()
	m := h.submit(body(workflow{}.json(), "", pid))
	require.Equal(t, json.Number("0"), m["number"])
	ref := obj(t, h.history(pid), "outputs", "9")["images"].([]any)[0].(map[string]any)
	require.Equal(t, "ComfyUI_00002_.png", ref["filename"])
	_, b = h.get("/history/" + running)
	require.Equal(t, "{}", string(b))
}

func TestFaultRestartAtStep(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	h.sim.SetFault(comfysim.Fault{RestartAtStep: 2})
	ws := h.dial("c")
	pid := newID()
	h.submit(body(workflow{steps: 3}.json(), "c", pid))
	require.Error(t, ws.closed())
	require.Eventually(t, func() bool { return h.sim.Stats().PromptsAborted == 1 }, waitFor, time.Millisecond)
	_, b := h.get("/history/" + pid)
	require.Equal(t, "{}", string(b))
}

func TestSetStepDelay(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{StepDelay: time.Hour})
	ws := h.dial("c")
	pid := newID()
	h.submit(body(workflow{steps: 3}.json(), "c", pid))
	ws.waitType("executing")
	// The sampler sleeps an hour per step; a shorter delay applies from the
	// next step, and an interrupt cuts the sleep short.
	h.sim.SetStepDelay(-1)
	_, _ = h.post("/interrupt", "")
	ev, _ := lastMessage(t, h.history(pid))
	require.Equal(t, "execution_interrupted", ev)
	pid2 := newID()
	h.submit(body(workflow{seed: "7", steps: 50}.json(), "c", pid2))
	require.Equal(t, "success", obj(t, h.history(pid2), "status")["status_str"])
}

func TestControlHandler(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ctl := h.sim.ControlURL
	post := func(path, body string) (int, map[string]any) {
		resp, err := http.Post(ctl+path, "application/json", strings.NewReader(body))
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, decode(t, b)
	}
	st, _ := post("/control/fault", `{"fail_class": "KSampler", "fail_oom": true, "history_delay": "5ms"}`)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, comfysim.Fault{FailClass: "KSampler", FailOOM: true, HistoryDelay: 5 * time.Millisecond}, h.sim.Fault())
	st, _ = post("/control/fault", `{"nonsense": 1}`)
	require.Equal(t, http.StatusBadRequest, st)

	resp, err := http.Get(ctl + "/control/fault")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "5ms", decode(t, b)["history_delay"])

	req, _ := http.NewRequest(http.MethodDelete, ctl+"/control/fault", nil)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, comfysim.Fault{}, h.sim.Fault())

	h.dial("x")
	_, m := post("/control/drop-websockets", "")
	require.Equal(t, json.Number("1"), m["dropped"])
	_, m = post("/control/down", `{"down": true}`)
	require.Equal(t, true, m["down"])
	require.True(t, h.sim.Stats().Down)
	st, _ = post("/control/down", `{}`)
	require.Equal(t, http.StatusBadRequest, st)
	post("/control/down", `{"down": false}`)
	_, m = post("/control/step-delay", `{"step_delay": "2ms"}`)
	require.Equal(t, "2ms", m["step_delay"])
	st, _ = post("/control/restart", "")
	require.Equal(t, http.StatusOK, st)

	resp, err = http.Get(ctl + "/control/stats")
	require.NoError(t, err)
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, json.Number("1"), decode(t, b)["restarts"])
}

func TestHugeLatentRaisesOOM(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	pid := newID()
	h.submit(body(workflow{w: 16384, h: 16384}.json(), "", pid))
	ev, data := lastMessage(t, h.history(pid))
	require.Equal(t, "execution_error", ev)
	require.Equal(t, "KSampler", data["node_type"])
	require.Equal(t, "torch.OutOfMemoryError", data["exception_type"])
}
