package batch

import (
	"bufio"
	"bytes"
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
//   - any other file: one item, named after its sweep values' position.
//
// Each file or line is a ComfyUI workflow in API format, a RunPod input
// ({"workflow": …, "images": …}) or a RunPod request ({"input": …,
// "webhook": …, "policy": …, "s3Config": …}). With sets, every item is
// repeated for every combination of their values (the cartesian product,
// the first set varying slowest).
func Load(path string, sets []Set) ([]Item, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read batch input: %w", err)
	}
	var base []Item
	switch ext := strings.ToLower(filepath.Ext(path)); {
	case fi.IsDir():
		base, err = loadFolder(path)
	case ext == ".jsonl" || ext == ".ndjson":
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
	single := !fi.IsDir() && len(base) == 1
	items, err := Expand(base, sets, single)
	if err != nil {
		return nil, err
	}
	return items, nil
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

// ReadJSONL reads one item per non-empty line; origin names the file in
// messages.
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
	// Pad line numbers so that names sort in file order.
	width := len(strconv.Itoa(lineNo))
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
		if raw := fields["name"]; raw != nil {
			if err := json.Unmarshal(raw, &it.Name); err != nil {
				return Item{}, fmt.Errorf("%s: name must be a string", origin)
			}
			it.Name = SafeName(it.Name)
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

// compact removes insignificant white space; numbers keep their digits.
func compact(raw json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

// Expand repeats every item for every combination of the sets' values and
// numbers the result. When single is set (one workflow), an item is named
// by its combination's position alone (001, 002, …); otherwise by its own
// name and the position (a-001).
func Expand(base []Item, sets []Set, single bool) ([]Item, error) {
	combos := 1
	for _, s := range sets {
		combos *= len(s.Values)
		if combos*len(base) > MaxItems {
			return nil, fmt.Errorf("the sweep makes more than %d items", MaxItems)
		}
	}
	width := max(3, len(strconv.Itoa(combos)))
	out := make([]Item, 0, len(base)*combos)
	for _, b := range base {
		if len(sets) == 0 {
			out = append(out, b)
			continue
		}
		pos := make([]int, len(sets))
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
				written, _ := readPath(in, append([]string{"workflow"}, s.Path...))
				it.Params[strings.Join(s.Path, ".")] = written
			}
			it.Input = in
			n := fmt.Sprintf("%0*d", width, c+1)
			if single || b.Name == "" {
				it.Name = n
			} else {
				it.Name = b.Name + "-" + n
			}
			out = append(out, it)
		}
	}
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
