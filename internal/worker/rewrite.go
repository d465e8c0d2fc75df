package worker

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
)

// Input isolation. Every job's input files are uploaded into a subfolder
// of ComfyUI's input folder of their own (inputSubfolder), so two jobs
// queued on one ComfyUI at the same time never read each other's "a.png".
// The workflow names the files as the user uploaded them; rewriteInputRefs
// points those references at the subfolder.
//
// The workflow travels as raw JSON (seeds up to 2^64-1 must not pass
// through float64), so the rewrite splices bytes: it walks the workflow's
// structure, and only the string values it replaces are re-encoded.

// inputSubfolder is where a job's inputs go inside ComfyUI's input folder.
func inputSubfolder(jobID string) string { return "comfyfleet/" + jobID }

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
	type splice struct {
		start, end int
		with       []byte
	}
	var splices []splice
	sc := &scanner{b: workflow}
	err := sc.object(func(_ string) error { // node id
		if sc.peek() != '{' {
			return sc.skipValue()
		}
		return sc.object(func(key string) error { // class_type, inputs, _meta
			if key != "inputs" || sc.peek() != '{' {
				return sc.skipValue()
			}
			return sc.object(func(_ string) error { // one input
				if sc.peek() != '"' {
					return sc.skipValue()
				}
				start := sc.i
				val, err := sc.str()
				if err != nil {
					return err
				}
				name, suffix := val, ""
				if strings.HasSuffix(val, annotation) {
					name, suffix = strings.TrimSuffix(val, annotation), annotation
				}
				to, ok := repl[name]
				if !ok {
					return nil
				}
				enc, err := encodeString(to + suffix)
				if err != nil {
					return err
				}
				splices = append(splices, splice{start, sc.i, enc})
				return nil
			})
		})
	})
	if err != nil {
		return nil, 0, err
	}
	if len(splices) == 0 {
		return workflow, 0, nil
	}
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
