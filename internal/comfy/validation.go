package comfy

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// ValidationError is ComfyUI's 400 answer to POST /prompt: the workflow was
// rejected before anything ran (protocol §3.4).
type ValidationError struct {
	StatusCode   int
	ErrorType    string // error.type, e.g. "prompt_outputs_failed_validation"; "" when error was a bare string
	ErrorMessage string // error.message, or the whole error when it was a string (before v0.3.28)
	ErrorDetails string
	ExtraInfo    json.RawMessage
	NodeErrors   []NodeError // in the server's order
	Body         []byte      // the body as received
	Unparsed     bool        // the body was not a JSON object

	// Available holds the valid options of inputs that failed with
	// value_not_in_list, keyed "ClassType.input". Submit fills it from
	// GET /object_info when ComfyUI left them out of the error (it includes
	// them only for lists of up to 20); Message uses it.
	Available map[string][]string

	errKind byte // 0 (absent), '"' (string) or '{' (object)
}

// NodeError is the validation failure of one node.
type NodeError struct {
	NodeID           string
	ClassType        string
	Errors           []Reason
	DependentOutputs []string // output nodes this failure blocks

	plain string // the entry was not an object: its text
}

// Reason is one validation failure of a node.
type Reason struct {
	Type      string // e.g. "value_not_in_list", "required_input_missing"
	Message   string
	Details   string
	ExtraInfo json.RawMessage
}

// InputName is the input the reason is about, or "".
func (r Reason) InputName() string { return rawString(objectMap(r.ExtraInfo)["input_name"]) }

// ReceivedValue is the rejected value as text, or "".
func (r Reason) ReceivedValue() string { return rawString(objectMap(r.ExtraInfo)["received_value"]) }

// Options returns the input's valid options when the error carries them
// (a combo's input_config; ComfyUI sends null instead when there are more
// than 20).
func (r Reason) Options() ([]string, bool) {
	return comboOptions(objectMap(r.ExtraInfo)["input_config"])
}

// InvalidChoice is an input whose value is not among its options
// (value_not_in_list), e.g. a checkpoint that is not installed.
type InvalidChoice struct {
	NodeID    string
	ClassType string
	Input     string
	Received  string
	Options   []string // the valid options, when Known
	Known     bool
}

// InvalidChoices lists the value_not_in_list failures, with their options
// from the error itself or from Available.
func (e *ValidationError) InvalidChoices() []InvalidChoice {
	var out []InvalidChoice
	for _, ne := range e.NodeErrors {
		for _, r := range ne.Errors {
			if r.Type != "value_not_in_list" {
				continue
			}
			ic := InvalidChoice{NodeID: ne.NodeID, ClassType: ne.ClassType, Input: r.InputName(), Received: r.ReceivedValue()}
			if opts, ok := e.Available[ne.ClassType+"."+ic.Input]; ok {
				ic.Options, ic.Known = opts, true
			} else {
				ic.Options, ic.Known = r.Options()
			}
			out = append(out, ic)
		}
	}
	return out
}

// Error is the same text as Message.
func (e *ValidationError) Error() string { return e.Message() }

// maxListedOptions caps the options listed per input other than ckpt_name.
const maxListedOptions = 100

// Message renders the failure in worker-comfyui's format (its §2.3), with
// each node's reasons spelled out (class, input, message and details)
// instead of a Python dict dump, and with the valid options of every input
// that failed value_not_in_list, not only of ckpt_name:
//
//	Workflow validation failed:
//	• Node 4 (errors): CheckpointLoaderSimple input ckpt_name: Value not in list: 'x.safetensors' not in ['a.safetensors']
//
//	Available checkpoint models: a.safetensors
func (e *ValidationError) Message() string {
	if e.Unparsed {
		return "ComfyUI validation failed (could not parse error response): " + string(e.Body)
	}
	head := "Workflow validation failed"
	switch e.errKind {
	case '"':
		head = e.ErrorMessage
	case '{':
		if e.ErrorMessage != "" {
			head = e.ErrorMessage
		}
		if e.ErrorType == "prompt_outputs_failed_validation" {
			head = "Workflow validation failed"
		}
	}
	var lines []string
	for _, ne := range e.NodeErrors {
		lines = append(lines, ne.lines()...)
	}
	if len(lines) == 0 {
		return head + ". Raw response: " + string(e.Body)
	}
	var b strings.Builder
	b.WriteString(head)
	b.WriteString(":\n• ")
	b.WriteString(strings.Join(lines, "\n• "))

	ckptDone := false
	listed := map[string]bool{}
	for _, ic := range e.InvalidChoices() {
		if !ic.Known {
			continue
		}
		if ic.Input == "ckpt_name" {
			if ckptDone {
				continue
			}
			ckptDone = true
			if len(ic.Options) == 0 {
				b.WriteString("\n\nNo checkpoint models appear to be available. Please check your model installation.")
			} else {
				b.WriteString("\n\nAvailable checkpoint models: " + strings.Join(ic.Options, ", "))
			}
			continue
		}
		key := ic.ClassType + "." + ic.Input
		if listed[key] {
			continue
		}
		listed[key] = true
		if len(ic.Options) == 0 {
			fmt.Fprintf(&b, "\n\nNo options are available for input %s of %s.", ic.Input, ic.ClassType)
			continue
		}
		opts := ic.Options
		more := ""
		if len(opts) > maxListedOptions {
			more = fmt.Sprintf(", … (%d more)", len(opts)-maxListedOptions)
			opts = opts[:maxListedOptions]
		}
		fmt.Fprintf(&b, "\n\nAvailable options for input %s of %s: %s%s", ic.Input, ic.ClassType, strings.Join(opts, ", "), more)
	}
	return b.String()
}

// lines renders one node's reasons, one line each.
func (ne NodeError) lines() []string {
	if ne.plain != "" {
		return []string{fmt.Sprintf("Node %s: %s", ne.NodeID, ne.plain)}
	}
	if len(ne.Errors) == 0 {
		return []string{fmt.Sprintf("Node %s (errors): %s: no reason given", ne.NodeID, ne.ClassType)}
	}
	out := make([]string, 0, len(ne.Errors))
	for _, r := range ne.Errors {
		subject := ne.ClassType
		input := r.InputName()
		if input != "" {
			subject = strings.TrimSpace(subject + " input " + input)
		}
		text := r.Message
		if d := stripInputPrefix(r.Details, input); d != "" && d != input {
			if text != "" {
				text += ": "
			}
			text += d
		}
		out = append(out, fmt.Sprintf("Node %s (errors): %s: %s", ne.NodeID, subject, text))
	}
	return out
}

// stripInputPrefix drops the "<input>: ", "<input>, " or "<input> - " that
// ComfyUI puts in front of most details, since the line already names it.
func stripInputPrefix(details, input string) string {
	if input == "" || !strings.HasPrefix(details, input) {
		return details
	}
	rest := details[len(input):]
	for _, sep := range []string{": ", ", ", " - "} {
		if strings.HasPrefix(rest, sep) {
			return rest[len(sep):]
		}
	}
	return details
}

// ParseValidationError decodes the body of a 400 from POST /prompt. It
// never fails: a body that is not a JSON object gives Unparsed.
func ParseValidationError(body []byte) *ValidationError {
	e := &ValidationError{StatusCode: 400, Body: body}
	var top map[string]json.RawMessage
	if err := unmarshalLenient(body, &top); err != nil || top == nil {
		e.Unparsed = true
		return e
	}
	if raw, ok := top["error"]; ok {
		switch jsonKind(raw) {
		case '{':
			e.errKind = '{'
			m := objectMap(raw)
			e.ErrorType = rawString(m["type"])
			e.ErrorMessage = rawString(m["message"])
			e.ErrorDetails = rawString(m["details"])
			e.ExtraInfo = m["extra_info"]
		case 0, 'n':
		default:
			e.errKind = '"'
			e.ErrorMessage = rawString(raw)
		}
	}
	e.NodeErrors = decodeNodeErrors(top["node_errors"])
	return e
}

// decodeNodeErrors reads node_errors: a map by node id, or a list on very
// old servers.
func decodeNodeErrors(raw []byte) []NodeError {
	var out []NodeError
	switch jsonKind(raw) {
	case '{':
		members, _ := objectMembers(raw)
		for _, m := range members {
			out = append(out, decodeNodeError(m.Key, m.Value))
		}
	case '[':
		for i, el := range arrayElems(raw) {
			out = append(out, decodeNodeError(strconv.Itoa(i), el))
		}
	}
	return out
}

func decodeNodeError(id string, raw []byte) NodeError {
	ne := NodeError{NodeID: id}
	m := objectMap(raw)
	if m == nil {
		ne.plain = rawString(raw)
		if ne.plain == "" {
			ne.plain = "null"
		}
		return ne
	}
	ne.ClassType = rawString(m["class_type"])
	ne.DependentOutputs = rawStrings(m["dependent_outputs"])
	errs := m["errors"]
	if jsonKind(errs) != '[' {
		if s := rawString(errs); s != "" {
			ne.Errors = []Reason{{Message: s}}
		}
		return ne
	}
	for _, el := range arrayElems(errs) {
		rm := objectMap(el)
		if rm == nil {
			ne.Errors = append(ne.Errors, Reason{Message: rawString(el)})
			continue
		}
		ne.Errors = append(ne.Errors, Reason{
			Type:      rawString(rm["type"]),
			Message:   rawString(rm["message"]),
			Details:   rawString(rm["details"]),
			ExtraInfo: rm["extra_info"],
		})
	}
	return ne
}

// comboOptions reads a combo input spec: [[options…], {…}] (v1 nodes) or
// ["COMBO", {"options": […]}] (v3 nodes).
func comboOptions(spec []byte) ([]string, bool) {
	elems := arrayElems(spec)
	if len(elems) == 0 {
		return nil, false
	}
	if jsonKind(elems[0]) == '[' {
		return nonNil(rawStrings(elems[0])), true
	}
	if rawString(elems[0]) == "COMBO" && len(elems) > 1 {
		if opts := objectMap(elems[1])["options"]; jsonKind(opts) == '[' {
			return nonNil(rawStrings(opts)), true
		}
	}
	return nil, false
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
