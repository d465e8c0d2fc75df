package proto

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Editing JSON objects in place. A job message carries the workflow as raw
// bytes that must reach ComfyUI exactly as they were sent (seeds go up to
// 2^64-1, which a float64 cannot hold), so the few members comfyfleet
// removes or adds (a job's secrets) are cut out of, or spliced into, the
// bytes: every other byte stays as it was. The scanner below assumes valid
// JSON; callers check json.Valid first.

// errBadJSON is what the scanner says about bytes that are not the JSON
// it was promised; callers check json.Valid first, so it marks a bug.
var errBadJSON = errors.New("malformed JSON")

// member is one member of an object: offsets into the object's bytes.
type member struct {
	key      string // the name, unescaped as encoding/json reads it
	start    int    // the key's opening quote
	valStart int    // the value's first byte
	end      int    // just after the value
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// stringEnd returns the index just after the string that starts at b[i].
func stringEnd(b []byte, i int) (int, error) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++ // the escaped byte; \uXXXX's digits need no care
		case '"':
			return j + 1, nil
		}
	}
	return 0, errBadJSON
}

// valueEnd returns the index just after the value that starts at b[i].
func valueEnd(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errBadJSON
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, err := stringEnd(b, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errBadJSON
	}
	j := i
	for j < len(b) && !isSpace(b[j]) && b[j] != ',' && b[j] != '}' && b[j] != ']' {
		j++
	}
	if j == i {
		return 0, errBadJSON
	}
	return j, nil
}

// objectMembers lists the members of obj, a whole JSON object (its first
// byte '{', its last '}').
func objectMembers(obj []byte) ([]member, error) {
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return nil, errBadJSON
	}
	var ms []member
	i := skipSpace(obj, 1)
	if obj[i] == '}' {
		return nil, nil
	}
	for {
		if i >= len(obj) || obj[i] != '"' {
			return nil, errBadJSON
		}
		keyEnd, err := stringEnd(obj, i)
		if err != nil {
			return nil, err
		}
		var key string
		if err := json.Unmarshal(obj[i:keyEnd], &key); err != nil {
			return nil, errBadJSON
		}
		j := skipSpace(obj, keyEnd)
		if j >= len(obj) || obj[j] != ':' {
			return nil, errBadJSON
		}
		vs := skipSpace(obj, j+1)
		ve, err := valueEnd(obj, vs)
		if err != nil {
			return nil, err
		}
		ms = append(ms, member{key: key, start: i, valStart: vs, end: ve})
		i = skipSpace(obj, ve)
		if i >= len(obj) {
			return nil, errBadJSON
		}
		switch obj[i] {
		case '}':
			if i != len(obj)-1 {
				return nil, errBadJSON
			}
			return ms, nil
		case ',':
			i = skipSpace(obj, i+1)
		default:
			return nil, errBadJSON
		}
	}
}

// memberEdit says what editObject does with one member: drop it, or give
// it a new value (nil keeps the value).
type memberEdit struct {
	drop  bool
	value []byte
}

// editObject rewrites obj, a whole JSON object, member by member as edit
// says. The members kept keep their bytes and the separators before them;
// a dropped member goes with the separator that joined it to the member
// before (or after, for the first). It reports whether anything changed;
// when nothing did, it returns obj itself.
func editObject(obj []byte, edit func(m member, value []byte) (memberEdit, error)) ([]byte, bool, error) {
	ms, err := objectMembers(obj)
	if err != nil || len(ms) == 0 {
		return obj, false, err
	}
	edits := make([]memberEdit, len(ms))
	changed := false
	for i, m := range ms {
		if edits[i], err = edit(m, obj[m.valStart:m.end]); err != nil {
			return nil, false, err
		}
		changed = changed || edits[i].drop || edits[i].value != nil
	}
	if !changed {
		return obj, false, nil
	}
	out := make([]byte, 0, len(obj))
	out = append(out, obj[:ms[0].start]...) // '{' and the space after it
	kept := 0
	for i, m := range ms {
		if edits[i].drop {
			continue
		}
		if kept > 0 {
			out = append(out, obj[ms[i-1].end:m.start]...) // space, ',', space
		}
		kept++
		if v := edits[i].value; v != nil {
			out = append(out, obj[m.start:m.valStart]...)
			out = append(out, v...)
		} else {
			out = append(out, obj[m.start:m.end]...)
		}
	}
	out = append(out, obj[ms[len(ms)-1].end:]...) // space and '}'
	return out, true, nil
}

// editArray rewrites arr, a whole JSON array, element by element: edit
// returns an element's new bytes, or nil to keep it. It reports whether
// anything changed; when nothing did, it returns arr itself.
func editArray(arr []byte, edit func(elem []byte) ([]byte, error)) ([]byte, bool, error) {
	if len(arr) < 2 || arr[0] != '[' || arr[len(arr)-1] != ']' {
		return nil, false, errBadJSON
	}
	i := skipSpace(arr, 1)
	if arr[i] == ']' {
		return arr, false, nil
	}
	var out []byte
	prev := 0
	for {
		end, err := valueEnd(arr, i)
		if err != nil {
			return nil, false, err
		}
		nv, err := edit(arr[i:end])
		if err != nil {
			return nil, false, err
		}
		if nv != nil {
			out = append(append(out, arr[prev:i]...), nv...)
			prev = end
		}
		i = skipSpace(arr, end)
		if i >= len(arr) {
			return nil, false, errBadJSON
		}
		switch arr[i] {
		case ']':
			if out == nil {
				return arr, false, nil
			}
			return append(out, arr[prev:]...), true, nil
		case ',':
			i = skipSpace(arr, i+1)
		default:
			return nil, false, errBadJSON
		}
	}
}

// insertMember puts "name": value first in obj, a whole JSON object whose
// other members stay as they were. value must be a JSON value.
func insertMember(obj []byte, name string, value []byte) []byte {
	key, _ := json.Marshal(name)
	out := make([]byte, 0, len(obj)+len(key)+len(value)+2)
	out = append(out, '{')
	out = append(out, key...)
	out = append(out, ':')
	out = append(out, value...)
	if i := skipSpace(obj, 1); i < len(obj) && obj[i] != '}' {
		out = append(out, ',')
	}
	return append(out, obj[1:]...)
}

// trimmedObject finds the object in b, a JSON value with optional space
// around it: its offsets, or ok false when b holds another kind of value.
func trimmedObject(b []byte) (start, end int, ok bool) {
	start = skipSpace(b, 0)
	end = len(bytes.TrimRight(b, " \t\r\n"))
	if start >= end || b[start] != '{' || b[end-1] != '}' {
		return 0, 0, false
	}
	return start, end, true
}

// marshalString is a JSON string of s without the HTML escapes of
// json.Marshal, so a string re-encoded after an edit stays close to the
// sender's.
func marshalString(s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
