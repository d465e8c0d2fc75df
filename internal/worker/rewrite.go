package worker

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Input files. Every attempt of a job uploads its input files into a
// subfolder of ComfyUI's input folder of its own (inputSubfolder), so two
// jobs queued on one ComfyUI at the same time never read each other's
// "a.png", and the files of an attempt can be removed when it ends without
// touching a later attempt's (isolation.go). The workflow names the files as
// the user uploaded them; rewriteInputRefs points those references at the
// subfolder.
//
// The workflow travels as raw JSON (seeds up to 2^64-1 must not pass
// through float64), so the rewrite splices bytes: it walks the workflow's
// structure (walkInputs), and only the string values it replaces are
// re-encoded.

// inputRoot is the folder of ComfyUI's input folder that holds the jobs'
// inputs, one subfolder per job.
const inputRoot = "comfyfleet"

// inputSubfolder is where an attempt's inputs go inside ComfyUI's input
// folder: comfyfleet/<job>/<attempt>.
func inputSubfolder(jobID string, attempt int) string {
	return inputRoot + "/" + jobID + "/" + strconv.Itoa(attempt)
}

// annotation is the suffix by which a value names the input folder
// explicitly ("a.png [input]").
const annotation = " [input]"

// rewriteInputRefs returns workflow with every input value of every node
// that is exactly a key of repl (or a key followed by " [input]") replaced
// by repl's value (with the same suffix). Only direct string inputs are
// candidates: links are lists and other values are not file names. It also
// returns how many values it replaced. workflow must be valid JSON.
func rewriteInputRefs(workflow []byte, repl map[string]string) ([]byte, int, error) {
	if len(repl) == 0 {
		return workflow, 0, nil
	}
	return rewriteValues(workflow, func(v inputValue) (string, bool) {
		if !v.direct {
			return "", false
		}
		name, suffix := v.val, ""
		if strings.HasSuffix(v.val, annotation) {
			name, suffix = strings.TrimSuffix(v.val, annotation), annotation
		}
		to, ok := repl[name]
		return to + suffix, ok
	})
}

// rewriteValues returns workflow with every direct input value for which
// with says so replaced by what it gives, and how many it replaced; only
// those values are re-encoded. workflow must be valid JSON.
func rewriteValues(workflow []byte, with func(inputValue) (string, bool)) ([]byte, int, error) {
	type splice struct {
		start, end int
		with       []byte
	}
	var splices []splice
	err := walkInputs(workflow, func(v inputValue) error {
		if !v.direct {
			return nil
		}
		to, ok := with(v)
		if !ok {
			return nil
		}
		enc, err := encodeString(to)
		if err != nil {
			return err
		}
		splices = append(splices, splice{v.start, v.end, enc})
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if len(splices) == 0 {
		return workflow, 0, nil
	}
	// walkInputs reports a node's values once the node is read: in the
	// workflow's order within a node, and nodes in order.
	var out bytes.Buffer
	out.Grow(len(workflow) + 32*len(splices))
	prev := 0
	for _, s := range splices {
		out.Write(workflow[prev:s.start])
		out.Write(s.with)
		prev = s.end
	}
	out.Write(workflow[prev:])
	return out.Bytes(), len(splices), nil
}

// inputValue is a string found in a node's inputs.
type inputValue struct {
	node, class, input string // node id, its class_type ("" if none), the input's name
	val                string
	// direct: val is the input's own value, not inside a list or object;
	// then start and end are the byte span of its JSON encoding.
	direct     bool
	start, end int
}

// walkInputs calls fn with every string in the inputs of every node of
// workflow, in the workflow's order: each input's own string value, and
// the strings inside lists and objects, except the node ids of links
// ([node id, output index]). A node's values are reported once the node
// is read, so that its class_type, wherever it stands, is known.
func walkInputs(workflow []byte, fn func(inputValue) error) error {
	sc := &scanner{b: workflow}
	return sc.object(func(id string) error {
		if sc.peek() != '{' {
			return sc.skipValue()
		}
		var (
			class string
			vals  []inputValue
		)
		err := sc.object(func(key string) error {
			switch {
			case key == "class_type" && sc.peek() == '"':
				var err error
				class, err = sc.str()
				return err
			case key != "inputs" || sc.peek() != '{':
				return sc.skipValue()
			}
			return sc.object(func(input string) error {
				if sc.peek() != '"' {
					return sc.strings(func(s string) {
						vals = append(vals, inputValue{node: id, input: input, val: s})
					})
				}
				start := sc.i
				val, err := sc.str()
				if err != nil {
					return err
				}
				vals = append(vals, inputValue{node: id, input: input, val: val, direct: true, start: start, end: sc.i})
				return nil
			})
		})
		if err != nil {
			return err
		}
		for _, v := range vals {
			v.class = class
			if err := fn(v); err != nil {
				return err
			}
		}
		return nil
	})
}

func encodeString(s string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

var errSyntax = errors.New("workflow is not valid JSON")

// scanner walks JSON bytes without decoding what it skips.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end.
func (s *scanner) peek() byte {
	s.ws()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

// object walks an object, calling member with each key and the scanner at
// the member's value, which member must consume.
func (s *scanner) object(member func(key string) error) error {
	if s.peek() != '{' {
		return errSyntax
	}
	s.i++
	if s.peek() == '}' {
		s.i++
		return nil
	}
	for {
		if s.peek() != '"' {
			return errSyntax
		}
		key, err := s.str()
		if err != nil {
			return err
		}
		if s.peek() != ':' {
			return errSyntax
		}
		s.i++
		s.ws()
		if err := member(key); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return errSyntax
		}
	}
}

// str reads a string token and decodes it.
func (s *scanner) str() (string, error) {
	start := s.i
	if err := s.skipString(); err != nil {
		return "", err
	}
	raw := s.b[start+1 : s.i-1]
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		// Nothing to decode (control characters are not valid JSON, and
		// the workflow is).
		return string(raw), nil
	}
	var v string
	if err := json.Unmarshal(s.b[start:s.i], &v); err != nil {
		return "", errSyntax
	}
	return v, nil
}

func (s *scanner) skipString() error {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return errSyntax
	}
	for j := s.i + 1; j < len(s.b); j++ {
		switch s.b[j] {
		case '\\':
			j++
		case '"':
			s.i = j + 1
			return nil
		}
	}
	return errSyntax
}

// skipValue skips one value of any kind.
func (s *scanner) skipValue() error {
	switch s.peek() {
	case '"':
		return s.skipString()
	case '{':
		return s.object(func(string) error { return s.skipValue() })
	case '[':
		s.i++
		if s.peek() == ']' {
			s.i++
			return nil
		}
		for {
			if err := s.skipValue(); err != nil {
				return err
			}
			switch s.peek() {
			case ',':
				s.i++
			case ']':
				s.i++
				return nil
			default:
				return errSyntax
			}
		}
	case 0:
		return errSyntax
	}
	// A number, true, false or null: up to the next delimiter.
	start := s.i
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			if s.i == start {
				return errSyntax
			}
			return nil
		}
		s.i++
	}
	if s.i == start {
		return errSyntax
	}
	return nil
}

// strings reads one value and calls emit with every string in it, except
// the node id of a link: a list of exactly a string and a number.
func (s *scanner) strings(emit func(string)) error {
	switch s.peek() {
	case '"':
		v, err := s.str()
		if err != nil {
			return err
		}
		emit(v)
		return nil
	case '{':
		return s.object(func(string) error { return s.strings(emit) })
	case '[':
	default:
		return s.skipValue()
	}
	s.i++
	if s.peek() == ']' {
		s.i++
		return nil
	}
	// The first element waits until the list is known not to be a link.
	var (
		first              string
		pending, secondNum bool
	)
	for n := 1; ; n++ {
		switch c := s.peek(); {
		case n == 1 && c == '"':
			v, err := s.str()
			if err != nil {
				return err
			}
			first, pending = v, true
		case n == 2 && pending && (c == '-' || c >= '0' && c <= '9'):
			secondNum = true
			if err := s.skipValue(); err != nil {
				return err
			}
		default:
			if pending {
				emit(first)
				pending = false
			}
			if err := s.strings(emit); err != nil {
				return err
			}
		}
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			if pending && !(n == 2 && secondNum) {
				emit(first)
			}
			return nil
		default:
			return errSyntax
		}
	}
}
