package comfy

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// Progress is one progress report of a running prompt.
type Progress struct {
	PromptID string
	Node     string // the node id the UI shows (display node)
	Value    float64
	Max      float64
	// State is "" for a `progress` tick (sampler steps and the like), and
	// "running" or "finished" for a node's change in `progress_state`
	// (ComfyUI ≥ v0.3.45 sends both for the same tick).
	State string
}

// Preview is a preview image sent while a prompt runs (binary WebSocket
// frames of type 1 and 4). ComfyUI sends none unless previews are enabled
// (--preview-method or extra_data.preview_method).
type Preview struct {
	PromptID  string
	NodeID    string // empty for type-1 frames, which carry no metadata
	MediaType string // "image/jpeg" or "image/png"; "" when the format code is unknown
	Data      []byte
}

// outcome is how a prompt ended, as its last execution_* message says.
type outcome int

const (
	outcomeNone outcome = iota
	outcomeSuccess
	outcomeError
	outcomeInterrupted
)

// message is a decoded WebSocket text frame, reduced to what routing needs.
type message struct {
	Type     string
	PromptID string
	// Node is the node of an `executing` message; Finished is true for
	// `executing` with node null (the end of the prompt).
	Node     string
	Finished bool
	Progress []Progress

	Outcome     outcome
	ExecErr     *ExecutionError
	Interrupted *InterruptedError
}

// decodeMessage decodes a WebSocket text frame. Only the types the client
// acts on have their data decoded; others come back with just Type.
func decodeMessage(b []byte) (message, error) {
	var env map[string]json.RawMessage
	if err := unmarshalLenient(b, &env); err != nil {
		return message{}, fmt.Errorf("decode message: %w", err)
	}
	if env == nil {
		return message{}, errors.New("decode message: not an object")
	}
	m := message{Type: rawString(env["type"])}
	switch m.Type {
	case "":
		return m, errors.New("decode message: no type")
	case "execution_start", "executing", "progress", "progress_state",
		"execution_success", "execution_error", "execution_interrupted":
	default:
		return m, nil
	}
	data := objectMap(env["data"])
	m.PromptID = rawString(data["prompt_id"])
	switch m.Type {
	case "executing":
		node, ok := data["node"]
		switch {
		case !ok:
		case jsonKind(node) == 'n':
			m.Finished = true
		default:
			m.Node = rawString(node)
		}
	case "progress":
		m.Progress = []Progress{{
			PromptID: m.PromptID,
			Node:     rawString(data["node"]),
			Value:    rawFloat(data["value"]),
			Max:      rawFloat(data["max"]),
		}}
	case "progress_state":
		nodes, _ := objectMembers(data["nodes"])
		for _, n := range nodes {
			nm := objectMap(n.Value)
			if nm == nil {
				continue
			}
			id := rawString(nm["display_node_id"])
			if id == "" {
				id = rawString(nm["node_id"])
			}
			if id == "" {
				id = n.Key
			}
			m.Progress = append(m.Progress, Progress{
				PromptID: m.PromptID,
				Node:     id,
				Value:    rawFloat(nm["value"]),
				Max:      rawFloat(nm["max"]),
				State:    rawString(nm["state"]),
			})
		}
	case "execution_success":
		m.Outcome = outcomeSuccess
	case "execution_error":
		e := execErrorFrom(m.PromptID, data)
		// An ExecutionBlocker with a message is reported as an error, but
		// the prompt goes on (protocol §5.4): not an outcome.
		if e.ExceptionType != "ExecutionBlocked" {
			m.Outcome, m.ExecErr = outcomeError, e
		}
	case "execution_interrupted":
		m.Outcome, m.Interrupted = outcomeInterrupted, interruptedFrom(m.PromptID, data)
	}
	return m, nil
}

func execErrorFrom(promptID string, data map[string]json.RawMessage) *ExecutionError {
	if id := rawString(data["prompt_id"]); id != "" {
		promptID = id
	}
	return &ExecutionError{
		PromptID:         promptID,
		NodeID:           rawString(data["node_id"]),
		NodeType:         rawString(data["node_type"]),
		ExceptionType:    rawString(data["exception_type"]),
		ExceptionMessage: rawString(data["exception_message"]),
		Traceback:        rawStrings(data["traceback"]),
		Executed:         rawStrings(data["executed"]),
		CurrentInputs:    data["current_inputs"],
	}
}

func interruptedFrom(promptID string, data map[string]json.RawMessage) *InterruptedError {
	if id := rawString(data["prompt_id"]); id != "" {
		promptID = id
	}
	return &InterruptedError{
		PromptID: promptID,
		NodeID:   rawString(data["node_id"]),
		NodeType: rawString(data["node_type"]),
		Executed: rawStrings(data["executed"]),
	}
}

// Binary frame types (protocol §5.5).
const (
	binPreviewImage             = 1
	binPreviewImageWithMetadata = 4
)

// decodePreview decodes a binary WebSocket frame; ok is false for frames
// that are not previews or are malformed.
func decodePreview(b []byte) (p Preview, ok bool) {
	if len(b) < 8 {
		return Preview{}, false
	}
	switch binary.BigEndian.Uint32(b[0:4]) {
	case binPreviewImage:
		switch binary.BigEndian.Uint32(b[4:8]) {
		case 1:
			p.MediaType = "image/jpeg"
		case 2:
			p.MediaType = "image/png"
		}
		p.Data = b[8:]
		return p, true
	case binPreviewImageWithMetadata:
		n := uint64(binary.BigEndian.Uint32(b[4:8]))
		if 8+n > uint64(len(b)) {
			return Preview{}, false
		}
		meta := objectMap(b[8 : 8+n])
		p.PromptID = rawString(meta["prompt_id"])
		p.NodeID = rawString(meta["display_node_id"])
		if p.NodeID == "" {
			p.NodeID = rawString(meta["node_id"])
		}
		p.MediaType = rawString(meta["image_type"])
		p.Data = b[8+n:]
		return p, true
	}
	return Preview{}, false
}
