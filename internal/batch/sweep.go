package batch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strconv"
	"strings"
)

// MaxItems bounds a batch, so a sweep's cartesian product that would
// explode fails at once instead of filling the queue.
const MaxItems = 1_000_000

// Set is one `--set PATH=VALUES` of a sweep: a place in the workflow and
// the values it takes, one job per value (per combination, with several
// sets).
type Set struct {
	// Spec is the setting as written, e.g. "3.inputs.seed=1..100".
	Spec string
	// Path is the place inside the input's workflow, e.g. ["3", "inputs",
	// "seed"]: node id, then keys.
	Path []string
	// Values are the values in order.
	Values []Value
}

// Value is one value of a Set as written. Text is JSON when JSON is set
// (an element of a JSON array, a number of a range) and free text
// otherwise (a line of an @file, a single literal). How it is written into
// the workflow depends on what the workflow holds there: see Apply.
type Value struct {
	Text string
	JSON bool
}

var rangeRE = regexp.MustCompile(`^(-?[0-9]+)\.\.(-?[0-9]+)$`)

// ParseSet reads one --set. The forms of VALUES:
//
//	1..100          every integer from 1 to 100 (any size: seeds up to 2^64-1 work)
//	@prompts.txt    every non-empty line of the file, white space trimmed
//	[5, 7.5, "x"]   the elements of a JSON array
//	anything else   that one value
//
// readFile reads the @file (nil means the file system is not available).
func ParseSet(spec string, readFile func(string) ([]byte, error)) (Set, error) {
	path, vals, ok := strings.Cut(spec, "=")
	if !ok {
		return Set{}, fmt.Errorf("--set %q: want PATH=VALUES, e.g. 3.inputs.seed=1..100", spec)
	}
	s := Set{Spec: spec}
	for _, p := range strings.Split(strings.TrimSpace(path), ".") {
		if p == "" {
			return Set{}, fmt.Errorf("--set %q: path %q has an empty part; write NODE.inputs.NAME, e.g. 3.inputs.seed", spec, path)
		}
		s.Path = append(s.Path, p)
	}
	if len(s.Path) < 2 {
		return Set{}, fmt.Errorf("--set %q: path %q names no input; write NODE.inputs.NAME, e.g. 3.inputs.seed", spec, path)
	}
	var err error
	s.Values, err = parseValues(vals, readFile)
	if err != nil {
		return Set{}, fmt.Errorf("--set %q: %w", spec, err)
	}
	if len(s.Values) == 0 {
		return Set{}, fmt.Errorf("--set %q: no values", spec)
	}
	return s, nil
}

func parseValues(vals string, readFile func(string) ([]byte, error)) ([]Value, error) {
	trimmed := strings.TrimSpace(vals)
	switch {
	case strings.HasPrefix(vals, "@"):
		name := vals[1:]
		if readFile == nil {
			return nil, fmt.Errorf("cannot read %s here", name)
		}
		data, err := readFile(name)
		if err != nil {
			return nil, fmt.Errorf("read values: %w", err)
		}
		var out []Value
		for _, line := range strings.Split(string(data), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				out = append(out, Value{Text: line})
				if len(out) > MaxItems {
					return nil, fmt.Errorf("%s has more than %d values", name, MaxItems)
				}
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%s has no non-empty line", name)
		}
		return out, nil
	case rangeRE.MatchString(trimmed):
		m := rangeRE.FindStringSubmatch(trimmed)
		lo, _ := new(big.Int).SetString(m[1], 10)
		hi, _ := new(big.Int).SetString(m[2], 10)
		if lo.Cmp(hi) > 0 {
			return nil, fmt.Errorf("range %s runs backwards", trimmed)
		}
		n := new(big.Int).Sub(hi, lo)
		if n.Cmp(big.NewInt(MaxItems)) >= 0 {
			return nil, fmt.Errorf("range %s has more than %d values", trimmed, MaxItems)
		}
		out := make([]Value, 0, n.Int64()+1)
		one := big.NewInt(1)
		for v := lo; v.Cmp(hi) <= 0; v = new(big.Int).Add(v, one) {
			out = append(out, Value{Text: v.String(), JSON: true})
		}
		return out, nil
	case strings.HasPrefix(trimmed, "["):
		var elems []json.RawMessage
		if err := json.Unmarshal([]byte(trimmed), &elems); err != nil {
			return nil, fmt.Errorf("values %s: not a JSON array: %v", trimmed, err)
		}
		if len(elems) > MaxItems {
			return nil, fmt.Errorf("values: more than %d", MaxItems)
		}
		out := make([]Value, len(elems))
		for i, e := range elems {
			out[i] = Value{Text: string(bytes.TrimSpace(e)), JSON: true}
		}
		return out, nil
	}
	return []Value{{Text: vals}}, nil
}

// Encode gives the JSON to write where the workflow holds old, so that
// the value keeps the type the node expects: text for a string input, a
// number for a number (its digits as written, never through a float), true
// or false for a boolean, and JSON as given for anything else (a link, a
// list, an object).
func (v Value) Encode(old json.RawMessage) ([]byte, error) {
	kind := jsonKindOf(old)
	text := v.Text
	isJSONString := v.JSON && strings.HasPrefix(text, `"`)
	if isJSONString && kind != "string" {
		// A JSON string where a number or boolean goes: use what it says.
		var s string
		if err := json.Unmarshal([]byte(text), &s); err != nil {
			return nil, fmt.Errorf("value %s: %v", text, err)
		}
		text = s
	}
	switch kind {
	case "string":
		if isJSONString {
			return []byte(text), nil
		}
		return json.Marshal(text)
	case "number":
		t := strings.TrimSpace(text)
		if !isJSONNumber(t) {
			return nil, fmt.Errorf("value %q is not a number, and the workflow holds a number there", text)
		}
		return []byte(t), nil
	case "boolean":
		switch strings.ToLower(strings.TrimSpace(text)) {
		case "true":
			return []byte("true"), nil
		case "false":
			return []byte("false"), nil
		}
		return nil, fmt.Errorf("value %q is not true or false, and the workflow holds a boolean there", text)
	}
	t := strings.TrimSpace(text)
	if !json.Valid([]byte(t)) {
		return nil, fmt.Errorf("value %q is not JSON, and the workflow holds %s there", text, kind)
	}
	return []byte(t), nil
}

func isJSONNumber(s string) bool {
	if s == "" || !(s[0] == '-' || s[0] >= '0' && s[0] <= '9') {
		return false
	}
	var n json.Number
	return json.Unmarshal([]byte(s), &n) == nil
}

// jsonKindOf names the JSON type of a valid JSON value.
func jsonKindOf(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '"':
		return "string"
	case '{':
		return "an object"
	case '[':
		return "a list"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// Apply writes the value into input.workflow at the set's path. The rest of
// the input is kept byte for byte, key order included.
func (s Set) Apply(input json.RawMessage, v Value) (json.RawMessage, error) {
	if !json.Valid(input) {
		return nil, fmt.Errorf("--set %s: the input is not valid JSON", strings.Join(s.Path, "."))
	}
	path := append([]string{"workflow"}, s.Path...)
	out, err := splice(input, path, 0, func(old json.RawMessage) ([]byte, error) { return v.Encode(old) })
	if err != nil {
		return nil, fmt.Errorf("--set %s: %w", strings.Join(s.Path, "."), err)
	}
	return out, nil
}

// errNoKey says where a path leaves the document.
type errNoKey struct {
	at   string
	keys []string
}

func (e *errNoKey) Error() string {
	if len(e.keys) > 12 {
		e.keys = append(e.keys[:12], "…")
	}
	return fmt.Sprintf("the workflow has no %s (there: %s)", e.at, strings.Join(e.keys, ", "))
}

// splice replaces the value at path[depth:] inside the JSON object doc
// with what fn makes of it, keeping every other byte.
func splice(doc []byte, path []string, depth int, fn func(json.RawMessage) ([]byte, error)) ([]byte, error) {
	start, end, keys, err := findKey(doc, path[depth])
	if err != nil {
		return nil, fmt.Errorf("at %s: %w", strings.Join(path[1:depth+1], "."), err)
	}
	if start < 0 {
		return nil, &errNoKey{at: strings.Join(path[1:depth+1], "."), keys: keys}
	}
	old := doc[start:end]
	var repl []byte
	if depth == len(path)-1 {
		repl, err = fn(old)
	} else {
		if jsonKindOf(old) != "an object" {
			return nil, fmt.Errorf("%s is %s, not an object", strings.Join(path[1:depth+1], "."), jsonKindOf(old))
		}
		repl, err = splice(old, path, depth+1, fn)
	}
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(doc)-len(old)+len(repl))
	out = append(out, doc[:start]...)
	out = append(out, repl...)
	return append(out, doc[end:]...), nil
}

// findKey finds the byte span of key's value in the JSON object obj; start
// is -1 when the object has no such key, and keys then lists those it has.
func findKey(obj []byte, key string) (start, end int, keys []string, err error) {
	dec := json.NewDecoder(bytes.NewReader(obj))
	tok, err := dec.Token()
	if err != nil {
		return 0, 0, nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return 0, 0, nil, errors.New("not a JSON object")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return 0, 0, nil, err
		}
		k, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return 0, 0, nil, err
		}
		if k == key {
			end := int(dec.InputOffset())
			return end - len(raw), end, nil, nil
		}
		keys = append(keys, strconv.Quote(k))
	}
	return -1, -1, keys, nil
}
