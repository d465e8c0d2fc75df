package trace

import (
	"encoding/json"
	"regexp"
	"sort"
	"strings"
)

// What Normalise replaces, so that two servers (or two runs of one) that
// behave alike give equal traces:
//
//   - every "timestamp" and "create_time" (milliseconds since the epoch)
//     becomes 0;
//   - the random part of PreviewImage's file names ("_temp_abcde_")
//     becomes "_temp_xxxxx_";
//   - a socket id the server chose (a "sid" no Connect asked for) becomes
//     "<sid>";
//   - the server's prompt counter ("number" of POST /prompt, the first
//     field of a /queue entry) counts from 0 at the first prompt of the
//     trace, as the counter of a fresh server would; so does the first
//     field of a history entry's "prompt".
const (
	zeroTime = 0
	anySID   = "<sid>"
)

var tempSuffix = regexp.MustCompile(`_temp_[a-z]{5}_`)

type normaliser struct {
	clients map[string]bool
	base    *int64 // the first prompt number seen
}

func newNormaliser() *normaliser { return &normaliser{clients: map[string]bool{}} }

func (n *normaliser) frame(typ string, data any) any {
	data = n.walk(data)
	if typ == "status" {
		if d, ok := data.(map[string]any); ok {
			if sid, ok := d["sid"].(string); ok && !n.clients[sid] {
				d["sid"] = anySID
			}
		}
	}
	return data
}

func (n *normaliser) response(r *Request, v any) any {
	v = n.walk(v)
	path := strings.SplitN(r.Path, "?", 2)[0]
	path = strings.TrimPrefix(path, "/api")
	m, _ := v.(map[string]any)
	switch {
	case path == "/prompt" && r.Method == "POST" && m != nil:
		if num, ok := m["number"].(json.Number); ok {
			m["number"] = n.number(num)
		}
	case strings.HasPrefix(path, "/history") && r.Method == "GET" && m != nil:
		for _, e := range m {
			entry, _ := e.(map[string]any)
			if pr, ok := entry["prompt"].([]any); ok && len(pr) > 0 {
				if num, ok := pr[0].(json.Number); ok {
					pr[0] = n.number(num)
				}
			}
		}
	case path == "/queue" && r.Method == "GET" && m != nil:
		for _, k := range []string{"queue_running", "queue_pending"} {
			items, _ := m[k].([]any)
			for _, it := range items {
				if e, ok := it.([]any); ok && len(e) > 0 {
					if num, ok := e[0].(json.Number); ok {
						e[0] = n.number(num)
					}
				}
			}
			// The pending list is the raw heap: its order is the server's,
			// and part of what is compared.
		}
	}
	return v
}

func (n *normaliser) number(num json.Number) json.Number {
	v, err := num.Int64()
	if err != nil {
		return num
	}
	if n.base == nil {
		n.base = &v
	}
	return json.Number(itoa(v - *n.base))
}

func itoa(v int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func (n *normaliser) walk(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if k == "timestamp" || k == "create_time" {
				if _, ok := x.(json.Number); ok {
					t[k] = json.Number("0")
					continue
				}
			}
			t[k] = n.walk(x)
		}
		return t
	case []any:
		for k, x := range t {
			t[k] = n.walk(x)
		}
		return t
	case string:
		return tempSuffix.ReplaceAllString(t, "_temp_xxxxx_")
	}
	return v
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
