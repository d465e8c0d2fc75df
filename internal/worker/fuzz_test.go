package worker

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/comfyfleet/comfyfleet/proto"
)

// FuzzRewriteInputRefs: for any JSON object the rewrite yields valid JSON,
// changes nothing when it replaces nothing, and changes only the values it
// reports, exactly as asked.
func FuzzRewriteInputRefs(f *testing.F) {
	f.Add([]byte(`{"1":{"class_type":"LoadImage","inputs":{"image":"a.png","upload":"image"}}}`), "a.png")
	f.Add([]byte(`{"1":{"inputs":{"image":"a.png [input]","seed":18446744073709551615}},"2":{"inputs":{"x":["a.png",0]}}}`), "a.png")
	f.Add([]byte(`{"1":{"inputs":{"image":"\u0061.png","t":"\"quoted\" a.png"}}}`), "a.png")
	f.Add([]byte(` { "1" : { "inputs" : { "v" : [ { } , [ ] , 1e400 , -0 ] } } } `), "x")
	f.Fuzz(func(t *testing.T, workflow []byte, name string) {
		if !json.Valid(workflow) || len(bytes.TrimSpace(workflow)) == 0 || bytes.TrimSpace(workflow)[0] != '{' {
			return
		}
		to := "comfyfleet/job/" + name
		out, n, err := rewriteInputRefs(workflow, map[string]string{name: to})
		if err != nil {
			t.Fatalf("valid JSON refused: %v", err)
		}
		if !json.Valid(out) {
			t.Fatalf("invalid output %q", out)
		}
		if n == 0 {
			if !bytes.Equal(out, workflow) {
				t.Fatalf("nothing replaced but bytes changed")
			}
			return
		}
		var before, after map[string]json.RawMessage
		if json.Unmarshal(workflow, &before) != nil || json.Unmarshal(out, &after) != nil {
			t.Fatal("not objects")
		}
		replaced := 0
		for id, raw := range before {
			var bn, an struct {
				Inputs map[string]json.RawMessage `json:"inputs"`
			}
			if json.Unmarshal(raw, &bn) != nil {
				continue
			}
			if err := json.Unmarshal(after[id], &an); err != nil {
				t.Fatalf("node %s broke: %v", id, err)
			}
			for k, v := range bn.Inputs {
				var s string
				if json.Unmarshal(v, &s) != nil {
					continue
				}
				var got string
				_ = json.Unmarshal(an.Inputs[k], &got)
				switch {
				case s == name:
					replaced++
					if got != to {
						t.Fatalf("%s.%s: got %q, want %q", id, k, got, to)
					}
				case s == name+annotation:
					replaced++
					if got != to+annotation {
						t.Fatalf("%s.%s: got %q", id, k, got)
					}
				}
			}
		}
		// Duplicate keys in the input make the decoded view count fewer.
		if replaced > n {
			t.Fatalf("reported %d replacements, found %d", n, replaced)
		}
	})
}

// FuzzInputImage decodes one input as the worker does: the images entry
// through proto.DecodeInput (names), then its value as a URL or as base64
// / a data URI. No input may panic; accepted names are bare file names;
// a URL's message form never shows its query or user info; decoded data
// respects the size cap.
func FuzzInputImage(f *testing.F) {
	f.Add("a.png", "data:image/png;base64,iVBORw0KGgo=")
	f.Add("a.png", "iVBORw0KGgo")
	f.Add("b.jpg", "https://user:pw@cdn.example.com/b.jpg?sig=secret#x")
	f.Add("../x.png", "AAAA")
	f.Add("c.png", "http://127.0.0.1:8188/view?filename=x")
	f.Add("d", "data:,")
	f.Add("e.png", "aGVsbG8-_w==")
	g, err := inputGuard(Config{}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		entry, _ := json.Marshal(map[string]string{"name": name, "image": value})
		in, err := proto.DecodeInput(json.RawMessage(`{"workflow":{},"images":[` + string(entry) + `]}`))
		if err != nil {
			return
		}
		got := in.Images[0].Name
		if got == "" || got == "." || got == ".." || strings.ContainsAny(got, "/\\\x00") {
			t.Fatalf("accepted name %q", got)
		}
		v := in.Images[0].Image
		if isURL(v) {
			u, red, err := parseInputURL(g, v)
			if red != "" {
				if strings.Contains(red, "@") && u != nil && u.User != nil {
					t.Fatalf("user info in %q", red)
				}
				if i := strings.IndexByte(red, '?'); i >= 0 && red[i:] != "?…" {
					t.Fatalf("query in %q", red)
				}
			}
			if err == nil && u.Scheme != "https" {
				t.Fatalf("scheme %q accepted", u.Scheme)
			}
			return
		}
		data, err := proto.DecodeImageData(v)
		if err != nil {
			return
		}
		if len(data) > len(v) {
			t.Fatalf("%d bytes decoded from %d characters", len(data), len(v))
		}
		if ct := contentType(data[:min(len(data), 512)], got); ct == "" {
			t.Fatal("empty content type")
		}
	})
}
