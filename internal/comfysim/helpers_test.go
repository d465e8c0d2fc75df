package comfysim_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
)

// waitFor bounds every wait on the emulator in these tests.
const waitFor = 10 * time.Second

type harness struct {
	t   testing.TB
	sim *simtest.Sim
}

// setup starts an emulator with a 1 ms step delay unless cfg says otherwise.
func setup(t *testing.T, cfg comfysim.Config) *harness {
	t.Helper()
	if cfg.StepDelay == 0 {
		cfg.StepDelay = time.Millisecond
	}
	return &harness{t: t, sim: simtest.Start(t, cfg)}
}

func (h *harness) do(method, path, contentType string, body io.Reader) (int, []byte, http.Header) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.sim.URL+path, body)
	require.NoError(h.t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(h.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(h.t, err)
	return resp.StatusCode, b, resp.Header
}

func (h *harness) post(path, body string) (int, []byte) {
	h.t.Helper()
	st, b, _ := h.do(http.MethodPost, path, "application/json", strings.NewReader(body))
	return st, b
}

func (h *harness) get(path string) (int, []byte) {
	h.t.Helper()
	st, b, _ := h.do(http.MethodGet, path, "", nil)
	return st, b
}

// decode parses JSON keeping numbers exact.
func decode(t testing.TB, b []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	require.NoError(t, dec.Decode(&m), "body: %s", b)
	return m
}

func obj(t testing.TB, v any, path ...string) map[string]any {
	t.Helper()
	for _, p := range path {
		m, ok := v.(map[string]any)
		require.True(t, ok, "not an object at %q: %v", p, v)
		v = m[p]
	}
	m, ok := v.(map[string]any)
	require.True(t, ok, "not an object: %#v", v)
	return m
}

// submit posts a prompt and returns the decoded 200 answer.
func (h *harness) submit(body string) map[string]any {
	h.t.Helper()
	st, b := h.post("/prompt", body)
	require.Equal(h.t, http.StatusOK, st, "body: %s", b)
	return decode(h.t, b)
}

// history polls /history/{id} until the entry exists.
func (h *harness) history(id string) map[string]any {
	h.t.Helper()
	var entry map[string]any
	require.Eventually(h.t, func() bool {
		_, b := h.get("/history/" + id)
		m := decode(h.t, b)
		if e, ok := m[id]; ok {
			entry = e.(map[string]any)
			return true
		}
		return false
	}, waitFor, 5*time.Millisecond)
	return entry
}

// workflow is §2's txt2img graph with knobs.
type workflow struct {
	ckpt       string
	seed       string // a JSON literal
	text       string
	negative   string
	w, h       int
	batch      int
	steps      int
	prefix     string
	saveClass  string // SaveImage (default) or PreviewImage
	extraNodes string // more `"id": {...}` members appended to the prompt
}

func (wf workflow) json() string {
	if wf.ckpt == "" {
		wf.ckpt = comfysim.DefaultCheckpoint
	}
	if wf.seed == "" {
		wf.seed = "8566257"
	}
	if wf.text == "" {
		wf.text = "a cat"
	}
	if wf.negative == "" {
		wf.negative = "blurry"
	}
	if wf.w == 0 {
		wf.w, wf.h = 64, 48
	}
	if wf.batch == 0 {
		wf.batch = 1
	}
	if wf.steps == 0 {
		wf.steps = 2
	}
	if wf.prefix == "" {
		wf.prefix = "ComfyUI"
	}
	save := fmt.Sprintf(`"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": %q, "images": ["8", 0]}}`, wf.prefix)
	if wf.saveClass == "PreviewImage" {
		save = `"9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}`
	}
	extra := ""
	if wf.extraNodes != "" {
		extra = ",\n" + wf.extraNodes
	}
	return fmt.Sprintf(`{
  "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": %q}, "_meta": {"title": "Load Checkpoint"}},
  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": %d, "height": %d, "batch_size": %d}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": %q, "clip": ["4", 1]}},
  "7": {"class_type": "CLIPTextEncode", "inputs": {"text": %q, "clip": ["4", 1]}},
  "3": {"class_type": "KSampler", "inputs": {"seed": %s, "steps": %d, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
  %s%s
}`, wf.ckpt, wf.w, wf.h, wf.batch, wf.text, wf.negative, wf.seed, wf.steps, save, extra)
}

// body wraps a prompt into a POST /prompt body; an empty clientID omits it.
func body(prompt, clientID, promptID string) string {
	var b strings.Builder
	b.WriteString(`{"prompt": `)
	b.WriteString(prompt)
	if clientID != "" {
		fmt.Fprintf(&b, `, "client_id": %q`, clientID)
	}
	if promptID != "" {
		fmt.Fprintf(&b, `, "prompt_id": %q`, promptID)
	}
	b.WriteString("}")
	return b.String()
}

// --- WebSocket client ---

type wsMsg struct {
	Type   string
	Data   map[string]any
	Raw    string
	Binary []byte
}

type wsClient struct {
	t   testing.TB
	c   *websocket.Conn
	ch  chan wsMsg
	err chan error
	sid string
}

func wsURL(base string) string {
	return "ws" + strings.TrimPrefix(base, "http")
}

// dialB is dial for a benchmark.
func (h *harness) dialB(b *testing.B, clientID string) *wsClient {
	h.t = b
	return h.dial(clientID)
}

// dial connects with clientId (empty = none) and consumes the first status.
func (h *harness) dial(clientID string) *wsClient {
	h.t.Helper()
	u := wsURL(h.sim.URL) + "/ws"
	if clientID != "" {
		u += "?clientId=" + clientID
	}
	c, _, err := websocket.DefaultDialer.Dial(u, nil)
	require.NoError(h.t, err)
	w := &wsClient{t: h.t, c: c, ch: make(chan wsMsg, 4096), err: make(chan error, 1)}
	go w.read()
	h.t.Cleanup(func() { _ = c.Close() })
	first := w.next()
	require.Equal(h.t, "status", first.Type, "first message: %s", first.Raw)
	sid, ok := first.Data["sid"].(string)
	require.True(h.t, ok, "first status has no sid: %s", first.Raw)
	if clientID != "" {
		require.Equal(h.t, clientID, sid)
	}
	w.sid = sid
	return w
}

func (w *wsClient) read() {
	for {
		typ, data, err := w.c.ReadMessage()
		if err != nil {
			w.err <- err
			close(w.ch)
			return
		}
		if typ == websocket.BinaryMessage {
			w.ch <- wsMsg{Type: "<binary>", Binary: data}
			continue
		}
		var env struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		if err := dec.Decode(&env); err != nil {
			w.err <- err
			close(w.ch)
			return
		}
		w.ch <- wsMsg{Type: env.Type, Data: env.Data, Raw: string(data)}
	}
}

func (w *wsClient) next() wsMsg {
	w.t.Helper()
	select {
	case m, ok := <-w.ch:
		if !ok {
			w.t.Fatalf("websocket closed: %v", <-w.err)
		}
		return m
	case <-time.After(waitFor):
		w.t.Fatalf("no websocket message within %v", waitFor)
	}
	return wsMsg{}
}

// closed waits for the connection to end.
func (w *wsClient) closed() error {
	w.t.Helper()
	for {
		select {
		case _, ok := <-w.ch:
			if !ok {
				return <-w.err
			}
		case <-time.After(waitFor):
			w.t.Fatalf("websocket not closed within %v", waitFor)
			return nil
		}
	}
}

// until collects messages up to and including executing{node:null} of pid.
func (w *wsClient) until(pid string) []wsMsg {
	w.t.Helper()
	var out []wsMsg
	for {
		m := w.next()
		out = append(out, m)
		if m.Type == "executing" && m.Data["node"] == nil && m.Data["prompt_id"] == pid {
			return out
		}
	}
}

// waitType returns the first message of the given type, skipping others.
func (w *wsClient) waitType(typ string) wsMsg {
	w.t.Helper()
	for {
		if m := w.next(); m.Type == typ {
			return m
		}
	}
}

func (w *wsClient) send(v string) {
	w.t.Helper()
	require.NoError(w.t, w.c.WriteMessage(websocket.TextMessage, []byte(v)))
}

// step is one expected message: its type and, where it matters, the node.
type step struct {
	typ, node string
}

// label renders a message as its type plus the node it concerns.
func label(m wsMsg) step {
	switch m.Type {
	case "executing", "executed":
		if n, ok := m.Data["node"].(string); ok {
			return step{m.Type, n}
		}
		return step{m.Type, "<null>"}
	case "progress":
		return step{m.Type, fmt.Sprint(m.Data["value"])}
	case "progress_state":
		// The node whose state changed last: the newest non-finished one,
		// else the last listed.
		nodes, _ := m.Data["nodes"].(map[string]any)
		return step{m.Type, describeProgress(m.Raw, nodes)}
	}
	return step{m.Type, ""}
}

// describeProgress names the last node of the progress_state (JSON order)
// with its state, e.g. "3:running".
func describeProgress(raw string, nodes map[string]any) string {
	last := ""
	idx := -1
	for id := range nodes {
		if i := strings.LastIndex(raw, `"`+id+`": {"value"`); i > idx {
			idx, last = i, id
		}
	}
	n, _ := nodes[last].(map[string]any)
	return fmt.Sprintf("%s:%v", last, n["state"])
}

func labels(ms []wsMsg) []step {
	out := make([]step, len(ms))
	for i, m := range ms {
		out[i] = label(m)
	}
	return out
}

func newID() string { return uuid.NewString() }
