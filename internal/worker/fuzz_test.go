package worker

import (
	"bytes"
	"encoding/json"
	"path"
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

// FuzzCheckFileRefs: for any JSON object the isolation check never fails
// to read it; it reports exactly the values a plain decode of the
// workflow finds in its nodes' inputs that fileRefProblem refuses (links'
// node ids aside); and any one-line value it lets through, resolved as
// ComfyUI resolves a file name (os.path.join onto the input folder),
// stays in the input folder, out of other jobs' folders, or is an
// absolute path of one part.
func FuzzCheckFileRefs(f *testing.F) {
	f.Add([]byte(`{"1":{"class_type":"LoadImage","inputs":{"image":"comfyfleet/other/1/x.png"}}}`), "job")
	f.Add([]byte(`{"1":{"inputs":{"image":"ComfyUI_00001_.png [output]","t":"x [temp]","u":"ok.png [input]"}}}`), "job")
	f.Add([]byte(`{"1":{"inputs":{"a":"../x.png","b":"/etc/passwd","c":"C:\\x.png","d":"sub\\x.png","e":"/imagine a cat"}}}`), "job")
	f.Add([]byte(`{"1":{"inputs":{"l":["comfyfleet",0],"m":["a","../b"],"n":{"k":["/x/y.png"]},"s":18446744073709551615}}}`), "job")
	f.Add([]byte(`{"1":{"inputs":{"image":"./ComfyFleet//job/./1/a.png","x":"comfyfleet/job/../j2/a.png"}},"2":"a","3":{"inputs":[]}}`), "job")
	f.Add([]byte(`{"1":{"inputs":{"image":"a/.../b.png","z":"\u0000/\\..\\"}}}`), "j-1")
	f.Fuzz(func(t *testing.T, workflow []byte, jobID string) {
		if !json.Valid(workflow) || len(bytes.TrimSpace(workflow)) == 0 || bytes.TrimSpace(workflow)[0] != '{' {
			return
		}
		if proto.ValidID(jobID) != nil {
			jobID = "job"
		}
		got, err := fileRefProblems(workflow, jobID)
		if err != nil {
			t.Fatalf("valid JSON refused: %v", err)
		}
		reported := map[string]int{}
		for _, p := range got {
			if p.why == "" || p.why != fileRefProblem(p.val, jobID) {
				t.Fatalf("%s.%s %q: reason %q", p.node, p.input, p.val, p.why)
			}
			reported[p.node+"\x00"+p.input+"\x00"+p.val]++
		}
		if err := checkFileRefs(workflow, jobID); (err != nil) != (len(got) > 0) {
			t.Fatalf("checkFileRefs: %v with %d problems", err, len(got))
		}

		var nodes map[string]json.RawMessage
		if json.Unmarshal(workflow, &nodes) != nil {
			t.Fatal("not an object")
		}
		for id, raw := range nodes {
			var node struct {
				Inputs map[string]any `json:"inputs"`
			}
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.UseNumber()
			if dec.Decode(&node) != nil {
				continue
			}
			for input, v := range node.Inputs {
				for _, s := range decodedStrings(v) {
					key := id + "\x00" + input + "\x00" + s
					if fileRefProblem(s, jobID) != "" {
						// Duplicate keys make the decoded view see less.
						if reported[key] == 0 {
							t.Fatalf("node %s input %s: %q not reported", id, input, s)
						}
						reported[key]--
						continue
					}
					if p, ok := resolveLikeComfyUI(s); ok && !allowedPath(p, jobID) {
						t.Fatalf("node %s input %s: %q passes and resolves to %s", id, input, s, p)
					}
				}
			}
		}
	})
}

// decodedStrings is walkInputs's view of one decoded input value: its
// strings, except a link's node id.
func decodedStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case map[string]any:
		var out []string
		for _, e := range v {
			out = append(out, decodedStrings(e)...)
		}
		return out
	case []any:
		if len(v) == 2 {
			if _, ok := v[0].(string); ok {
				if _, ok := v[1].(json.Number); ok {
					return nil
				}
			}
		}
		var out []string
		for _, e := range v {
			out = append(out, decodedStrings(e)...)
		}
		return out
	}
	return nil
}

// testInputDir is where resolveLikeComfyUI puts the input folder.
const testInputDir = "/srv/comfyui/input"

// resolveLikeComfyUI resolves a one-line value as folder_paths does on
// Linux: the annotation picks the folder (false for output and temp),
// then os.path.join, which keeps an absolute name as it is.
func resolveLikeComfyUI(v string) (string, bool) {
	if strings.ContainsAny(v, "\n\r") || strings.HasSuffix(v, "[output]") || strings.HasSuffix(v, "[temp]") {
		return "", false
	}
	if strings.HasSuffix(v, "[input]") {
		v = dropRunes(v, 8)
	}
	if strings.HasPrefix(v, "/") {
		return path.Clean(v), true
	}
	return path.Clean(testInputDir + "/" + v), true
}

// allowedPath: inside the input folder and, inside comfyfleet/, inside
// the job's own folder; or an absolute path of one part, which reaches
// no folder of ComfyUI's.
func allowedPath(p, jobID string) bool {
	if strings.Count(p, "/") == 1 {
		return true
	}
	if p != testInputDir && !strings.HasPrefix(p, testInputDir+"/") {
		return false
	}
	jobs := testInputDir + "/" + inputRoot
	if p != jobs && !strings.HasPrefix(p, jobs+"/") {
		return true
	}
	own := jobs + "/" + jobID
	return p == own || strings.HasPrefix(p, own+"/")
}

// FuzzFileRefProblem judges single values, as a workflow's input and
// inside a list: the check reports the value exactly when fileRefProblem
// refuses it, and a one-line value it lets through resolves to an allowed
// place (allowedPath).
func FuzzFileRefProblem(f *testing.F) {
	for _, v := range []string{
		"example.png", "comfyfleet/job/1/a.png", "comfyfleet/other/1/a.png", "ComfyUI_00001_.png [output]",
		"x [temp]", "a.png [input]", "../x.png", "/etc/passwd", "/imagine a cat", `\(artist\)`, `C:\x.png`,
		"./ComfyFleet.//other/x", "/comfyui/input/comfyfleet/other/1/a b", "a/.../b", "//x", "/x/", "..[input]",
	} {
		f.Add(v, "job")
	}
	f.Fuzz(func(t *testing.T, v, jobID string) {
		if proto.ValidID(jobID) != nil {
			jobID = "job"
		}
		why := fileRefProblem(v, jobID)
		enc, err := json.Marshal(v)
		if err != nil {
			return
		}
		for _, wf := range []string{
			`{"1":{"class_type":"LoadImage","inputs":{"image":` + string(enc) + `}}}`,
			`{"1":{"inputs":{"list":[1,` + string(enc) + `]}}}`,
		} {
			got, err := fileRefProblems([]byte(wf), jobID)
			if err != nil {
				t.Fatalf("%s: %v", wf, err)
			}
			// json.Marshal replaces invalid UTF-8: judge what was sent.
			var sent string
			_ = json.Unmarshal(enc, &sent)
			want := fileRefProblem(sent, jobID)
			if (len(got) == 1) != (want != "") || len(got) > 1 || len(got) == 1 && got[0].why != want {
				t.Fatalf("%s: got %v, want %q", wf, got, want)
			}
		}
		if why != "" {
			return
		}
		if p, ok := resolveLikeComfyUI(v); ok && !allowedPath(p, jobID) {
			t.Fatalf("%q passes and resolves to %s", v, p)
		}
	})
}
