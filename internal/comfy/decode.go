package comfy

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

// ComfyUI's JSON comes from Python's json.dumps, which writes the bare tokens
// NaN, Infinity and -Infinity for non-finite floats (protocol §11.8), and
// several fields change shape between versions (§11.9). The helpers here
// decode leniently: they never decode numbers into float64 where the value
// matters, and they turn shape surprises into zero values instead of errors.

// unmarshalLenient is json.Unmarshal that, on a syntax error, retries with
// the non-finite tokens outside strings replaced by null.
func unmarshalLenient(data []byte, v any) error {
	err := json.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		return err
	}
	fixed, changed := replaceNonFinite(data)
	if !changed {
		return err
	}
	if err2 := json.Unmarshal(fixed, v); err2 != nil {
		return err
	}
	return nil
}

// replaceNonFinite rewrites NaN, Infinity and -Infinity outside JSON strings
// to null. It reports whether it changed anything.
func replaceNonFinite(data []byte) ([]byte, bool) {
	var out []byte
	last := 0 // data[last:i] not yet copied to out
	inString, escaped := false, false
	for i := 0; i < len(data); i++ {
		b := data[i]
		if inString {
			switch {
			case escaped:
				escaped = false
			case b == '\\':
				escaped = true
			case b == '"':
				inString = false
			}
			continue
		}
		var n int
		switch {
		case b == '"':
			inString = true
			continue
		case b == 'N' && bytes.HasPrefix(data[i:], []byte("NaN")):
			n = 3
		case b == 'I' && bytes.HasPrefix(data[i:], []byte("Infinity")):
			n = 8
		case b == '-' && bytes.HasPrefix(data[i:], []byte("-Infinity")):
			n = 9
		default:
			continue
		}
		out = append(out, data[last:i]...)
		out = append(out, "null"...)
		i += n - 1
		last = i + 1
	}
	if out == nil {
		return data, false
	}
	return append(out, data[last:]...), true
}

// member is one key of a JSON object, in document order.
type member struct {
	Key   string
	Value json.RawMessage
}

// objectMembers returns the members of a JSON object in document order; ok
// is false when raw is not an object.
func objectMembers(raw []byte) (members []member, ok bool) {
	if jsonKind(raw) != '{' {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return members, false
		}
		key, isString := tok.(string)
		if !isString {
			return members, false
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return members, false
		}
		members = append(members, member{Key: key, Value: v})
	}
	return members, true
}

// objectMap decodes a JSON object into raw members; nil when raw is not an
// object.
func objectMap(raw []byte) map[string]json.RawMessage {
	if jsonKind(raw) != '{' {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	return m
}

// arrayElems decodes a JSON array into raw elements; nil when raw is not an
// array.
func arrayElems(raw []byte) []json.RawMessage {
	if jsonKind(raw) != '[' {
		return nil
	}
	var a []json.RawMessage
	if json.Unmarshal(raw, &a) != nil {
		return nil
	}
	return a
}

// jsonKind returns the first significant byte of raw: '{', '[', '"', 'n'
// (null), 't'/'f' (booleans), a digit or '-' (numbers), or 0 when empty.
func jsonKind(raw []byte) byte {
	for _, b := range raw {
		switch b {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return b
	}
	return 0
}

// rawString returns a JSON string's value, "" for null or absent, and the
// JSON text itself for any other value (so a numeric node id still reads).
func rawString(raw []byte) string {
	switch jsonKind(raw) {
	case 0, 'n':
		return ""
	case '"':
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
	}
	return string(bytes.TrimSpace(raw))
}

// rawStrings reads a list of strings; a single string gives a list of one.
func rawStrings(raw []byte) []string {
	switch jsonKind(raw) {
	case '[':
		elems := arrayElems(raw)
		out := make([]string, 0, len(elems))
		for _, e := range elems {
			out = append(out, rawString(e))
		}
		return out
	case '"':
		return []string{rawString(raw)}
	}
	return nil
}

// rawFloat reads a number, or a string holding one; 0 otherwise.
func rawFloat(raw []byte) float64 {
	f, err := strconv.ParseFloat(rawString(raw), 64)
	if err != nil {
		return 0
	}
	return f
}

// rawInt reads an integer (or a float, truncated); 0 otherwise.
func rawInt(raw []byte) int64 {
	s := rawString(raw)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != f || f > 9.2e18 || f < -9.2e18 {
		return 0
	}
	return int64(f)
}

// rawBool reads true; anything else is false.
func rawBool(raw []byte) bool {
	return string(bytes.TrimSpace(raw)) == "true"
}

// rawNumber returns the JSON number text as a json.Number, or "" when raw
// is not a number.
func rawNumber(raw []byte) json.Number {
	k := jsonKind(raw)
	if k != '-' && (k < '0' || k > '9') {
		return ""
	}
	return json.Number(bytes.TrimSpace(raw))
}
