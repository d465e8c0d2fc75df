package comfy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
)

var (
	// ErrUnavailable means ComfyUI cannot be reached: the connection was
	// refused or reset, a request timed out, a proxy in front of it answered
	// 502/503/504, or the WebSocket could not be re-established. The job did
	// not fail because of its content; retry it elsewhere or later.
	ErrUnavailable = errors.New("comfyui unavailable")
	// ErrPromptLost means a prompt is neither in ComfyUI's history nor in its
	// queue: ComfyUI restarted (both are in memory only) or the entry was
	// evicted. Whether it ran is unknown.
	ErrPromptLost = errors.New("prompt lost")
	// ErrNoHistoryEntry means the prompt ended (ComfyUI said so on the
	// WebSocket) but its history entry never appeared, so its outputs are
	// unknown: the entry was evicted or never written. It also matches
	// ErrPromptLost; unlike a lost prompt, retrying it is not expected to
	// help (worker-comfyui: "Prompt ID … not found in history after
	// execution.").
	ErrNoHistoryEntry = errors.New("prompt ended without a history entry")
	// ErrInterrupted is matched by every *InterruptedError.
	ErrInterrupted = errors.New("prompt interrupted")
	// ErrClosed is returned once the Client is closed or its Start context
	// has ended.
	ErrClosed = errors.New("comfy client closed")
	// ErrNotStarted is returned by Submit and Wait before Start succeeded.
	ErrNotStarted = errors.New("comfy client not started")
)

// StatusError is a non-2xx HTTP answer from ComfyUI. It matches
// fs.ErrNotExist for a 404 and ErrUnavailable for 502, 503 and 504.
type StatusError struct {
	Method     string
	URL        string
	StatusCode int
	Body       []byte // the start of the body (ComfyUI's 5xx bodies are plain text)
}

// Error renders the status the way Python's requests does, so a caller
// can rebuild worker-comfyui's "Error queuing workflow: …" text, except
// that the URL is its path alone ("500 Server Error: Internal Server Error
// for url: /prompt"): these texts reach the job's submitter, who must not
// learn where the fleet's ComfyUI listens.
func (e *StatusError) Error() string {
	kind := "Client"
	if e.StatusCode >= 500 {
		kind = "Server"
	}
	return fmt.Sprintf("%d %s Error: %s for url: %s", e.StatusCode, kind, http.StatusText(e.StatusCode), pathOf(e.URL))
}

// pathOf is the path and query of a URL, without scheme, user and host.
func pathOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return raw
	}
	return u.RequestURI()
}

// transportError is a request to ComfyUI that got no answer. Its text
// names the request by method and path and says what went wrong without
// the addresses Go's errors carry ("Post \"http://10.0.0.7:8188/prompt\":
// dial tcp 10.0.0.7:8188: connect: connection refused" becomes "POST
// /prompt: dial: connect: connection refused"), because it may end up in
// a job's error; the cause is kept for errors.Is and errors.As.
type transportError struct {
	method, path string
	err          error
}

func (e *transportError) Error() string {
	return e.method + " " + e.path + ": " + ssrf.AddressFree(e.err)
}

func (e *transportError) Unwrap() error { return e.err }

// Is reports a 404 as fs.ErrNotExist and 502/503/504 as ErrUnavailable.
func (e *StatusError) Is(target error) bool {
	switch target {
	case fs.ErrNotExist:
		return e.StatusCode == http.StatusNotFound
	case ErrUnavailable:
		return e.StatusCode == http.StatusBadGateway || e.StatusCode == http.StatusServiceUnavailable ||
			e.StatusCode == http.StatusGatewayTimeout
	}
	return false
}

// ExecutionError is a node that raised while the prompt ran (ComfyUI's
// `execution_error`, from the WebSocket or from the history entry).
type ExecutionError struct {
	PromptID         string
	NodeID           string
	NodeType         string
	ExceptionType    string // full Python type name, e.g. "torch.OutOfMemoryError"
	ExceptionMessage string // as sent; ComfyUI ends it with "\n" and appends tips
	Traceback        []string
	Executed         []string        // nodes that had finished before the failure
	CurrentInputs    json.RawMessage // an object of input lists, or [] for cycles
}

// Error names the node and the exception.
func (e *ExecutionError) Error() string {
	msg := strings.TrimRight(e.ExceptionMessage, "\n")
	if e.ExceptionType != "" {
		msg = e.ExceptionType + ": " + msg
	}
	return fmt.Sprintf("execute node %s (%s): %s", e.NodeID, e.NodeType, msg)
}

// Detail is worker-comfyui's line for the failure:
// "Workflow execution error: Node Type: KSampler, Node ID: 3, Message: boom".
// The trailing newline ComfyUI adds to the message is dropped.
func (e *ExecutionError) Detail() string {
	return fmt.Sprintf("Workflow execution error: Node Type: %s, Node ID: %s, Message: %s",
		e.NodeType, e.NodeID, strings.TrimRight(e.ExceptionMessage, "\n"))
}

// IsOOM reports whether the node ran out of (GPU) memory.
func (e *ExecutionError) IsOOM() bool {
	if strings.Contains(e.ExceptionType, "OutOfMemoryError") {
		return true
	}
	m := strings.ToLower(e.ExceptionMessage)
	return strings.Contains(m, "out of memory") || strings.Contains(m, "allocation on device")
}

// InterruptedError is a prompt that was interrupted while it ran
// (`execution_interrupted`) or removed from the queue before it started
// (Removed). It matches ErrInterrupted.
type InterruptedError struct {
	PromptID string
	NodeID   string // the node that was running, when known
	NodeType string
	Executed []string
	Removed  bool // deleted from the pending queue by DeleteFromQueue or Cancel
}

func (e *InterruptedError) Error() string {
	switch {
	case e.Removed:
		return fmt.Sprintf("prompt %s removed from the queue", e.PromptID)
	case e.NodeID != "":
		return fmt.Sprintf("prompt %s interrupted at node %s (%s)", e.PromptID, e.NodeID, e.NodeType)
	}
	return fmt.Sprintf("prompt %s interrupted", e.PromptID)
}

// Is matches ErrInterrupted.
func (e *InterruptedError) Is(target error) bool { return target == ErrInterrupted }

// unavailable wraps err as an ErrUnavailable failure of op, marking it
// only once.
func unavailable(op string, err error) error {
	if errors.Is(err, ErrUnavailable) {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, ssrf.WithoutAddresses(err))
}

// MissingPromptIDError is a 200 answer to POST /prompt without a prompt_id.
// Its text is worker-comfyui's.
type MissingPromptIDError struct {
	Body []byte // the answer, truncated
}

func (e *MissingPromptIDError) Error() string {
	return "Missing 'prompt_id' in queue response: " + string(e.Body)
}
