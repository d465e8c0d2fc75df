package comfy

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
)

// HistoryEntry is one prompt's entry in GET /history/{id} (protocol §6.2).
type HistoryEntry struct {
	// Prompt is the stored queue item [number, prompt_id, prompt,
	// extra_data, outputs_to_execute], each element raw.
	Prompt []json.RawMessage
	// Outputs maps node id → output key ("images", "gifs", "audio", "text",
	// "animated", …) → the raw list. Order keeps the server's order.
	Outputs map[string]map[string]json.RawMessage
	Status  *HistoryStatus // nil when the server sent null
	Raw     json.RawMessage

	order []outputNode
}

type outputNode struct {
	id   string
	keys []string
}

// HistoryStatus is an entry's status object.
type HistoryStatus struct {
	StatusStr string // "success" or "error"
	Completed bool
	Messages  []StatusMessage
}

// StatusMessage is one recorded event: execution_start, execution_cached,
// execution_success, execution_error or execution_interrupted.
type StatusMessage struct {
	Type string
	Data json.RawMessage
}

// Workflow returns the stored prompt (after ComfyUI's coercions), raw.
func (h *HistoryEntry) Workflow() json.RawMessage {
	if len(h.Prompt) < 3 {
		return nil
	}
	return h.Prompt[2]
}

// decodeHistoryEntry decodes one entry (the value under the prompt id).
func decodeHistoryEntry(raw []byte) (*HistoryEntry, error) {
	m := objectMap(raw)
	if m == nil {
		return nil, fmt.Errorf("decode history entry: not an object")
	}
	h := &HistoryEntry{Raw: json.RawMessage(raw), Prompt: arrayElems(m["prompt"]), Outputs: map[string]map[string]json.RawMessage{}}
	nodes, _ := objectMembers(m["outputs"])
	index := map[string]int{}
	for _, n := range nodes {
		keys, ok := objectMembers(n.Value)
		if !ok {
			continue
		}
		i, seen := index[n.Key]
		if !seen {
			i = len(h.order)
			index[n.Key] = i
			h.order = append(h.order, outputNode{id: n.Key})
			h.Outputs[n.Key] = map[string]json.RawMessage{}
		}
		out := h.Outputs[n.Key]
		for _, k := range keys {
			if _, dup := out[k.Key]; !dup {
				h.order[i].keys = append(h.order[i].keys, k.Key)
			}
			out[k.Key] = k.Value
		}
	}
	if sm := objectMap(m["status"]); sm != nil {
		st := &HistoryStatus{StatusStr: rawString(sm["status_str"]), Completed: rawBool(sm["completed"])}
		for _, el := range arrayElems(sm["messages"]) {
			pair := arrayElems(el)
			if len(pair) == 0 {
				continue
			}
			msg := StatusMessage{Type: rawString(pair[0])}
			if len(pair) > 1 {
				msg.Data = pair[1]
			}
			st.Messages = append(st.Messages, msg)
		}
		h.Status = st
	}
	return h, nil
}

// outcome reads how the prompt ended from the status: nil for success (or
// an unknown status), *ExecutionError or *InterruptedError otherwise.
func (h *HistoryEntry) outcome(promptID string) (outcome, error) {
	if h.Status == nil {
		return outcomeNone, nil
	}
	if h.Status.StatusStr == "success" || h.Status.Completed {
		return outcomeSuccess, nil
	}
	for i := len(h.Status.Messages) - 1; i >= 0; i-- {
		msg := h.Status.Messages[i]
		data := objectMap(msg.Data)
		switch msg.Type {
		case "execution_error":
			e := execErrorFrom(promptID, data)
			if e.ExceptionType == "ExecutionBlocked" {
				continue
			}
			return outcomeError, e
		case "execution_interrupted":
			return outcomeInterrupted, interruptedFrom(promptID, data)
		}
	}
	if h.Status.StatusStr == "" {
		return outcomeNone, nil
	}
	return outcomeError, &ExecutionError{PromptID: promptID,
		ExceptionMessage: fmt.Sprintf("prompt ended with status %q and no error message", h.Status.StatusStr)}
}

// Result is a finished prompt: its history entry, read after the end.
type Result struct {
	PromptID string
	Entry    *HistoryEntry
	// NodeErrors are the validation failures ComfyUI reported with its 200:
	// the outputs they block did not run (a partial run).
	NodeErrors []NodeError
}

// FileRef names a file ComfyUI serves through GET /view.
type FileRef struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"` // "output", "temp" or "input"
}

// File is one file a node produced.
type File struct {
	FileRef
	NodeID string
	Kind   string // the output key: "images" (also videos, animated images), "gifs", "audio", …
	Index  int    // position in its list
	// Format is VideoHelperSuite's "format" (e.g. "video/h264-mp4"), or "".
	Format string
	// Animated is set for entries of "images" that the node marked as
	// animated (animated WebP/PNG, and videos from SaveVideo / SaveWEBM).
	Animated bool
	Raw      json.RawMessage // the whole entry
}

// Text is one string of a "text" output (PreviewAny, PreviewText, …).
type Text struct {
	NodeID string
	Index  int
	Text   string
}

// Files lists every file output of every node, in the server's order:
// every list under any key whose items are objects with a "filename".
// Temp files (previews) are included; the caller decides what to keep.
func (r *Result) Files() []File {
	if r == nil || r.Entry == nil {
		return nil
	}
	var out []File
	for _, node := range r.Entry.order {
		keys := r.Entry.Outputs[node.id]
		var animated []bool
		for _, a := range arrayElems(keys["animated"]) {
			animated = append(animated, rawBool(a))
		}
		for _, key := range node.keys {
			for i, el := range arrayElems(keys[key]) {
				m := objectMap(el)
				if m == nil {
					continue
				}
				name := rawString(m["filename"])
				if name == "" {
					continue
				}
				f := File{
					FileRef: FileRef{Filename: name, Subfolder: rawString(m["subfolder"]), Type: rawString(m["type"])},
					NodeID:  node.id, Kind: key, Index: i,
					Format: rawString(m["format"]),
					Raw:    el,
				}
				if f.Type == "" {
					f.Type = "output"
				}
				if key == "images" {
					switch {
					case i < len(animated):
						f.Animated = animated[i]
					case len(animated) == 1:
						f.Animated = animated[0]
					}
				}
				out = append(out, f)
			}
		}
	}
	return out
}

// Texts lists the strings of every "text" output, in the server's order.
func (r *Result) Texts() []Text {
	if r == nil || r.Entry == nil {
		return nil
	}
	var out []Text
	for _, node := range r.Entry.order {
		for i, el := range arrayElems(r.Entry.Outputs[node.id]["text"]) {
			if jsonKind(el) != '"' {
				continue
			}
			out = append(out, Text{NodeID: node.id, Index: i, Text: rawString(el)})
		}
	}
	return out
}

// QueueItem is one prompt in GET /queue.
type QueueItem struct {
	Number           json.Number // an int, a float when the client set it, negative for "front"
	PromptID         string
	Prompt           json.RawMessage
	ExtraData        json.RawMessage
	OutputsToExecute []string
}

// QueueState is GET /queue, with Pending sorted in execution order.
type QueueState struct {
	Running []QueueItem
	Pending []QueueItem
}

// IsRunning reports whether the prompt is running.
func (q *QueueState) IsRunning(promptID string) bool { return queueHas(q.Running, promptID) }

// IsPending reports whether the prompt waits in the queue.
func (q *QueueState) IsPending(promptID string) bool { return queueHas(q.Pending, promptID) }

func queueHas(items []QueueItem, id string) bool {
	for _, it := range items {
		if it.PromptID == id {
			return true
		}
	}
	return false
}

func decodeQueue(body []byte) (*QueueState, error) {
	var top map[string]json.RawMessage
	if err := unmarshalLenient(body, &top); err != nil {
		return nil, fmt.Errorf("decode queue: %w", err)
	}
	q := &QueueState{Running: queueItems(top["queue_running"]), Pending: queueItems(top["queue_pending"])}
	// The pending list is the raw heap array (§4.1): sort by number, then
	// by prompt id as Python's tuple comparison does.
	sort.SliceStable(q.Pending, func(i, j int) bool {
		a, _ := strconv.ParseFloat(string(q.Pending[i].Number), 64)
		b, _ := strconv.ParseFloat(string(q.Pending[j].Number), 64)
		if a != b {
			return a < b
		}
		return q.Pending[i].PromptID < q.Pending[j].PromptID
	})
	return q, nil
}

func queueItems(raw []byte) []QueueItem {
	var out []QueueItem
	for _, el := range arrayElems(raw) {
		t := arrayElems(el)
		if len(t) < 2 {
			continue
		}
		it := QueueItem{Number: rawNumber(t[0]), PromptID: rawString(t[1])}
		if len(t) > 2 {
			it.Prompt = t[2]
		}
		if len(t) > 3 {
			it.ExtraData = t[3]
		}
		if len(t) > 4 {
			it.OutputsToExecute = rawStrings(t[4])
		}
		out = append(out, it)
	}
	return out
}
