package batch

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Item is one job of a batch before it is submitted.
type Item struct {
	// Name is unique in the batch and safe as a folder name: results go to
	// <out>/<Name>/.
	Name string
	// Index is the item's position in the batch, 0 first.
	Index int
	// Input is RunPod's input object for the job.
	Input json.RawMessage
	// Params are the sweep values that made this item, by path.
	Params map[string]json.RawMessage
	// Origin says where the item came from, for messages: a file, or a
	// JSONL file and line.
	Origin string
	// Webhook, Policy and S3Config come from a RunPod-style request
	// ({"input": …, "webhook": …}) and beat the batch's own settings.
	Webhook  string
	Policy   *proto.Policy
	S3Config *proto.S3Config
}

// Load reads the items of a batch from path, then expands them by the
// sweep. path is one of:
//
//   - a folder: every *.json file in it (not in sub-folders), in name order,
//     one item each, named after the file;
//   - a .jsonl (or .ndjson) file: one item per non-empty line, named
//     line-<n> or by the line's "name" field;
//   - any other file: one item (001 without a sweep).
//
// Each file or line is a ComfyUI workflow in API format, a RunPod input
// ({"workflow": …, "images": …}) or a RunPod request ({"input": …,
// "webhook": …, "policy": …, "s3Config": …}). With sets, every item is
// repeated for every combination of their values (the cartesian product,
// the first set varying slowest), named after its values (see [Expand]).
func Load(path string, sets []Set) ([]Item, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read batch input: %w", err)
	}
	var base []Item
	switch {
	case fi.IsDir():
		base, err = loadFolder(path)
	case isJSONL(path):
		var f *os.File
		if f, err = os.Open(path); err == nil {
			base, err = ReadJSONL(f, filepath.Base(path))
			f.Close()
		}
	default:
		var data []byte
		if data, err = os.ReadFile(path); err == nil {
			var it Item
			it, err = DecodeItem(data, path)
			base = []Item{it}
		}
	}
	if err != nil {
		return nil, err
	}
	if len(base) == 0 {
		return nil, fmt.Errorf("%s holds no item", path)
	}
	// One workflow's sweep items are named by their values alone; a JSONL
	// file's by their line too, even when it has one line, so that a line
	// added later does not rename the first.
	single := !fi.IsDir() && !isJSONL(path)
	items, err := Expand(base, sets, single)
	if err != nil {
		return nil, err
	}
	return items, nil
}

// isJSONL reports whether path names a JSONL file, by its extension.
func isJSONL(path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	return ext == ".jsonl" || ext == ".ndjson"
}

func loadFolder(dir string) ([]Item, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read batch folder: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() && strings.EqualFold(filepath.Ext(e.Name()), ".json") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("folder %s has no .json workflow", dir)
	}
	items := make([]Item, 0, len(names))
	for _, n := range names {
		p := filepath.Join(dir, n)
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read batch item: %w", err)
		}
		it, err := DecodeItem(data, p)
		if err != nil {
			return nil, err
		}
		it.Name = SafeName(strings.TrimSuffix(n, filepath.Ext(n)))
		items = append(items, it)
	}
	return items, nil
}

// lineWidth is the least number of digits of a JSONL line's name.
const lineWidth = 4

// ReadJSONL reads one item per non-empty line; origin names the file in
// messages. A line is named by its "name" field or else line-<n>, n its
// line number (line-0007).
func ReadJSONL(r io.Reader, origin string) ([]Item, error) {
	br := bufio.NewReader(r)
	var items []Item
	lineNo := 0
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			lineNo++
			if t := bytes.TrimSpace(line); len(t) > 0 {
				it, derr := DecodeItem(t, origin+":"+strconv.Itoa(lineNo))
				if derr != nil {
					return nil, derr
				}
				if it.Name == "" {
					it.Name = "line-" + strconv.Itoa(lineNo)
				}
				items = append(items, it)
				if len(items) > MaxItems {
					return nil, fmt.Errorf("%s: more than %d items", origin, MaxItems)
				}
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", origin, err)
		}
	}
	// Pad line numbers so that names sort in file order, to a width that
	// stays the same as the file grows (up to 9,999 lines), so that lines
	// added at the end leave the others' names, and so their jobs, alone.
	width := max(lineWidth, len(strconv.Itoa(lineNo)))
	for i := range items {
		if n, ok := strings.CutPrefix(items[i].Name, "line-"); ok && !strings.HasPrefix(n, "0") {
			if _, err := strconv.Atoi(n); err == nil {
				items[i].Name = "line-" + strings.Repeat("0", width-len(n)) + n
			}
		}
	}
	return items, nil
}

// DecodeItem reads one item: a RunPod request, a RunPod input or a bare
// API-format workflow. Its input is checked as the dispatcher will check
// it, so a bad item fails before anything is submitted. origin names the
// item in errors.
func DecodeItem(data []byte, origin string) (Item, error) {
	it := Item{Origin: origin}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil || fields == nil {
		if err == nil {
			err = errors.New("null")
		}
		return Item{}, fmt.Errorf("%s: not a JSON object: %v", origin, err)
	}
	switch {
	case fields["input"] != nil:
		it.Input = fields["input"]
		if err := it.readName(fields, origin); err != nil {
			return Item{}, err
		}
		if raw := fields["webhook"]; raw != nil {
			if err := json.Unmarshal(raw, &it.Webhook); err != nil {
				return Item{}, fmt.Errorf("%s: webhook must be a string", origin)
			}
			if it.Webhook != "" {
				if err := proto.ValidWebhook(it.Webhook); err != nil {
					return Item{}, fmt.Errorf("%s: webhook %w", origin, err)
				}
			}
		}
		if raw := fields["policy"]; raw != nil && string(raw) != "null" {
			it.Policy = &proto.Policy{}
			if err := json.Unmarshal(raw, it.Policy); err != nil {
				return Item{}, fmt.Errorf("%s: policy: %v", origin, err)
			}
			if err := proto.ValidPolicy(*it.Policy); err != nil {
				return Item{}, fmt.Errorf("%s: %w", origin, err)
			}
		}
		if raw := fields["s3Config"]; raw != nil && string(raw) != "null" {
			it.S3Config = &proto.S3Config{}
			if err := json.Unmarshal(raw, it.S3Config); err != nil {
				return Item{}, fmt.Errorf("%s: s3Config: %v", origin, err)
			}
		}
	case fields["workflow"] != nil:
		it.Input = json.RawMessage(data)
		if fields["name"] != nil {
			// The name is the batch's, not the job's: the input goes
			// without it.
			if err := it.readName(fields, origin); err != nil {
				return Item{}, err
			}
			delete(fields, "name")
			in, err := json.Marshal(fields)
			if err != nil {
				return Item{}, fmt.Errorf("%s: %v", origin, err)
			}
			it.Input = in
		}
	case proto.IsUIWorkflow(data):
		return Item{}, fmt.Errorf("%s: %s", origin, proto.ErrMsgUIWorkflow)
	default:
		it.Input = json.RawMessage(`{"workflow":` + string(bytes.TrimSpace(data)) + `}`)
	}
	// worker-comfyui accepts the input as a JSON string holding the object;
	// unwrap it here so that sweeps can reach into it.
	if t := bytes.TrimSpace(it.Input); len(t) > 0 && t[0] == '"' {
		var s string
		if json.Unmarshal(t, &s) == nil {
			it.Input = json.RawMessage(s)
		}
	}
	if _, err := proto.DecodeInput(it.Input); err != nil {
		return Item{}, fmt.Errorf("%s: %w", origin, err)
	}
	it.Input = compact(it.Input)
	return it, nil
}

// readName sets the item's name from the "name" field of a request or an
// input, made safe as a folder name; an empty name is no name.
func (it *Item) readName(fields map[string]json.RawMessage, origin string) error {
	raw := fields["name"]
	if raw == nil || string(raw) == "null" {
		return nil
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		return fmt.Errorf("%s: name must be a string", origin)
	}
	if strings.TrimSpace(name) != "" {
		it.Name = SafeName(strings.TrimSpace(name))
	}
	return nil
}

// compact removes insignificant white space; numbers keep their digits.
func compact(raw json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

// Expand repeats every item for every combination of the sets' values.
// An item of a sweep is named after its values (see sweepName): seed-7, or
// with single unset (a folder's or a JSONL file's items) after its own
// name and its values, a_seed-7. A name so depends on the item's content
// and not on its position, so a sweep that grows (a longer range, another
// value in a list) keeps the names, and so the jobs, of the items it had.
// Without sets, items keep their names; a nameless one is named 001.
func Expand(base []Item, sets []Set, single bool) ([]Item, error) {
	combos := 1
	for _, s := range sets {
		combos *= len(s.Values)
		if combos*len(base) > MaxItems {
			return nil, fmt.Errorf("the sweep makes more than %d items", MaxItems)
		}
	}
	keys := setKeys(sets)
	out := make([]Item, 0, len(base)*combos)
	for _, b := range base {
		if len(sets) == 0 {
			out = append(out, b)
			continue
		}
		pos := make([]int, len(sets))
		written := make([]json.RawMessage, len(sets))
		for c := 0; c < combos; c++ {
			// pos counts in a mixed radix, the last set fastest.
			rem := c
			for i := len(sets) - 1; i >= 0; i-- {
				pos[i] = rem % len(sets[i].Values)
				rem /= len(sets[i].Values)
			}
			it := b
			it.Params = map[string]json.RawMessage{}
			in := b.Input
			for i, s := range sets {
				v := s.Values[pos[i]]
				var err error
				if in, err = s.Apply(in, v); err != nil {
					return nil, fmt.Errorf("%s: %w", b.Origin, err)
				}
				// Record the value as written into the workflow.
				written[i], _ = readPath(in, append([]string{"workflow"}, s.Path...))
				it.Params[strings.Join(s.Path, ".")] = written[i]
			}
			it.Input = in
			prefix := b.Name
			if single {
				prefix = ""
			}
			it.Name = sweepName(prefix, keys, written)
			out = append(out, it)
		}
	}
	width := max(3, len(strconv.Itoa(len(out))))
	seen := make(map[string]string, len(out))
	for i := range out {
		out[i].Index = i
		if out[i].Name == "" {
			out[i].Name = fmt.Sprintf("%0*d", width, i+1)
		}
		if prev, dup := seen[out[i].Name]; dup {
			return nil, fmt.Errorf("two items are named %q (%s and %s); names must be unique", out[i].Name, prev, out[i].Origin)
		}
		seen[out[i].Name] = out[i].Origin
	}
	return out, nil
}

// Bounds of a sweep item's name: a value longer than maxValueName, or a
// name longer than maxSweepName, is cut and the name gets a hash.
const (
	maxValueName = 40
	maxSweepName = 96
)

// setKeys are the names of the sets in item names: the last part of each
// path (seed, text), or node.last when two sets share a last part
// (3.seed, 5.seed).
func setKeys(sets []Set) []string {
	count := map[string]int{}
	for _, s := range sets {
		count[s.Path[len(s.Path)-1]]++
	}
	keys := make([]string, len(sets))
	for i, s := range sets {
		k := s.Path[len(s.Path)-1]
		if count[k] > 1 {
			k = s.Path[0] + "." + k
		}
		keys[i] = strings.TrimLeft(SafeName(k), ".")
	}
	return keys
}

// sweepName names an item of a sweep by the values written into it, as
// key-value parts joined by '_' after the base item's name (when given):
// seed-7, seed-7_text-a_red_fox, owl_seed-7. A value is spelled as it
// is, a string's spaces as '_'; when that would not tell two values apart
// (a value with a character a name cannot hold, an '_' of its own, the
// text of a later part's key, or too long), the value is made safe and
// cut, and the name ends in a hash of every value (seed-7_text-a_b-5c1f09a2),
// so that two items of one sweep never share a name. The name depends on
// the values and keys alone, never on the item's position.
func sweepName(base string, keys []string, written []json.RawMessage) string {
	var b strings.Builder
	if base != "" {
		b.WriteString(base)
		b.WriteByte('_')
	}
	lossy := false
	for i, raw := range written {
		if i > 0 {
			b.WriteByte('_')
		}
		b.WriteString(keys[i])
		b.WriteByte('-')
		text := string(raw)
		var s string
		if json.Unmarshal(raw, &s) == nil {
			text = s
		}
		part, exact := valueName(text)
		for _, k := range keys[i+1:] {
			if strings.Contains(part, "_"+k+"-") {
				exact = false
			}
		}
		if !exact {
			lossy = true
		}
		b.WriteString(part)
	}
	name := b.String()
	if !lossy && len(name) <= maxSweepName {
		return name
	}
	h := sha256.New()
	h.Write([]byte(base))
	for _, raw := range written {
		h.Write([]byte{0})
		h.Write(raw)
	}
	if len(name) > maxSweepName-9 {
		name = name[:maxSweepName-9]
	}
	return name + "-" + hex.EncodeToString(h.Sum(nil))[:8]
}

// valueName spells a value for a name: letters, digits, '.' and '-' as
// they are, a space as '_'. exact is false when the spelling could also be
// another value's: the value holds any other character or an '_', starts
// or ends with a space, has two in a row, is empty or is longer than
// maxValueName.
func valueName(text string) (part string, exact bool) {
	exact = text != "" && len(text) <= maxValueName &&
		!strings.HasPrefix(text, " ") && !strings.HasSuffix(text, " ") && !strings.Contains(text, "  ")
	b := []byte(text)
	for i, c := range b {
		switch {
		case c == '-' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case c == ' ':
			b[i] = '_'
		default:
			b[i] = '_'
			exact = false
		}
	}
	part = string(b)
	if len(part) > maxValueName/2 && !exact {
		part = part[:maxValueName/2]
	}
	part = strings.Trim(part, "_")
	if part == "" {
		part = "x"
	}
	return part, exact
}

// readPath returns the value at path inside doc.
func readPath(doc []byte, path []string) (json.RawMessage, error) {
	cur := doc
	for _, k := range path {
		start, end, _, err := findKey(cur, k)
		if err != nil {
			return nil, err
		}
		if start < 0 {
			return nil, fmt.Errorf("no %s", k)
		}
		cur = cur[start:end]
	}
	return json.RawMessage(cur), nil
}

// SafeName makes s usable as a folder name and a job id part: letters,
// digits, '.', '-' and '_' are kept, anything else becomes '_', and the
// name never starts with a dot. At most 80 bytes.
func SafeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c == '-' || c == '_' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			b[i] = '_'
		}
	}
	s = strings.TrimLeft(string(b), ".")
	if len(s) > 80 {
		s = s[:80]
	}
	if s == "" {
		s = "item"
	}
	return s
}
