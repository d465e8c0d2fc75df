package proto_test

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

func TestDecodeInput(t *testing.T) {
	t.Parallel()
	const wf = `{"9":{"class_type":"SaveImage","inputs":{}}}`
	tests := []struct {
		name    string
		raw     string
		wantErr string
		check   func(t *testing.T, in *proto.Input)
	}{
		{name: "missing", raw: ``, wantErr: proto.ErrMsgNoInput},
		{name: "null", raw: `null`, wantErr: proto.ErrMsgNoInput},
		{name: "string not json", raw: `"not json"`, wantErr: proto.ErrMsgInvalidJSON},
		{name: "empty object", raw: `{}`, wantErr: proto.ErrMsgNoWorkflow},
		{name: "workflow null", raw: `{"workflow":null}`, wantErr: proto.ErrMsgNoWorkflow},
		{name: "not an object", raw: `[1,2]`, wantErr: "Input must be a JSON object, got an array"},
		{name: "workflow not an object", raw: `{"workflow":"x"}`, wantErr: "'workflow' must be a JSON object in ComfyUI API format, got a string"},
		{name: "workflow in UI format", raw: `{"workflow":{"last_node_id":9,"nodes":[{"id":9,"type":"SaveImage"}],"links":[]}}`, wantErr: "'workflow': " + proto.ErrMsgUIWorkflow},
		{name: "API workflow with nodes named nodes and links", raw: `{"workflow":{"nodes":{"class_type":"SaveImage","inputs":{}},"links":{"class_type":"X","inputs":{}}}}`,
			check: func(t *testing.T, in *proto.Input) { require.Contains(t, string(in.Workflow), `"nodes"`) }},
		{name: "images not a list", raw: `{"workflow":` + wf + `,"images":"a"}`, wantErr: proto.ErrMsgImagesInvalid},
		{name: "image without image", raw: `{"workflow":` + wf + `,"images":[{"name":"a.png"}]}`, wantErr: proto.ErrMsgImagesInvalid},
		{name: "image element a string", raw: `{"workflow":` + wf + `,"images":["nameimage"]}`, wantErr: proto.ErrMsgImagesInvalid},
		{name: "image name with slash", raw: `{"workflow":` + wf + `,"images":[{"name":"../a.png","image":"AA=="}]}`, wantErr: "images[0].name: \"../a.png\" contains a path separator"},
		{name: "image name repeated", raw: `{"workflow":` + wf + `,"images":[{"name":"a.png","image":"AA=="},{"name":"a.png","image":"AA=="}]}`, wantErr: `images[1].name "a.png" repeats images[0].name`},
		{name: "image name with RLO", raw: `{"workflow":` + wf + `,"images":[{"name":"a.png","image":"AA=="},{"name":"x\u202egnp.exe","image":"AA=="}]}`, wantErr: `images[1].name: "x\u202egnp.exe" has the control or format character U+202E at byte 1`},
		{name: "image name with LRI", raw: `{"workflow":` + wf + `,"images":[{"name":"a\u2066b.png","image":"AA=="}]}`, wantErr: `images[0].name: "a\u2066b.png" has the control or format character U+2066 at byte 1`},
		{name: "image name with RLM", raw: `{"workflow":` + wf + `,"images":[{"name":"a\u200fb.png","image":"AA=="}]}`, wantErr: "images[0].name: \"a\\u200fb.png\" has the control or format character U+200F"},
		{name: "image name with LRM", raw: `{"workflow":` + wf + `,"images":[{"name":"a\u200eb.png","image":"AA=="}]}`, wantErr: "images[0].name: \"a\\u200eb.png\" has the control or format character U+200E"},
		{name: "image name with zero width space", raw: `{"workflow":` + wf + `,"images":[{"name":"a\u200bb.png","image":"AA=="}]}`, wantErr: "images[0].name: \"a\\u200bb.png\" has the control or format character U+200B"},
		{name: "image name with BOM", raw: `{"workflow":` + wf + `,"images":[{"name":"\ufeffa.png","image":"AA=="}]}`, wantErr: "images[0].name: \"\\ufeffa.png\" has the control or format character U+FEFF at byte 0"},
		{name: "image name with newline", raw: `{"workflow":` + wf + `,"images":[{"name":"a\nb.png","image":"AA=="}]}`, wantErr: `images[0].name: "a\nb.png" has the control or format character U+000A at byte 1`},
		{name: "image name with DEL", raw: `{"workflow":` + wf + `,"images":[{"name":"a\u007f.png","image":"AA=="}]}`, wantErr: "images[0].name: \"a\\x7f.png\" has the control or format character U+007F"},
		{name: "image name with C1 control", raw: `{"workflow":` + wf + `,"images":[{"name":"a\u0085.png","image":"AA=="}]}`, wantErr: "images[0].name: \"a\\u0085.png\" has the control or format character U+0085"},
		{name: "image name not a string", raw: `{"workflow":` + wf + `,"images":[{"name":1,"image":"AA=="}]}`, wantErr: "images[0].name must be a string"},
		{
			name: "valid with everything",
			raw:  `{"workflow":` + wf + `,"images":[{"name":"a.png","image":"data:image/png;base64,AA=="}],"comfy_org_api_key":"k","extra":1}`,
			check: func(t *testing.T, in *proto.Input) {
				require.JSONEq(t, wf, string(in.Workflow))
				require.Equal(t, []proto.InputImage{{Name: "a.png", Image: "data:image/png;base64,AA=="}}, in.Images)
				require.Equal(t, "k", in.ComfyOrgAPIKey)
			},
		},
		{
			name: "input given as a JSON string",
			raw:  `"{\"workflow\": {\"1\": {}}}"`,
			check: func(t *testing.T, in *proto.Input) {
				require.JSONEq(t, `{"1":{}}`, string(in.Workflow))
			},
		},
		{name: "unicode letters are fine", raw: `{"workflow":` + wf + `,"images":[{"name":"日本 ü ñ.png","image":"AA=="}]}`, check: func(t *testing.T, in *proto.Input) { require.Equal(t, "日本 ü ñ.png", in.Images[0].Name) }},
		{name: "empty images list", raw: `{"workflow":` + wf + `,"images":[]}`, check: func(t *testing.T, in *proto.Input) { require.Empty(t, in.Images) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in, err := proto.DecodeInput(json.RawMessage(tt.raw))
			if tt.wantErr != "" {
				require.Error(t, err)
				require.True(t, strings.HasPrefix(err.Error(), tt.wantErr), "error %q does not start with %q", err, tt.wantErr)
				var ie *proto.InputError
				require.ErrorAs(t, err, &ie)
				return
			}
			require.NoError(t, err)
			tt.check(t, in)
		})
	}
}

func TestDecodeInputKeepsBigSeed(t *testing.T) {
	t.Parallel()
	raw := `{"workflow":{"3":{"class_type":"KSampler","inputs":{"seed":18446744073709551615,"cfg":7.50}}}}`
	in, err := proto.DecodeInput(json.RawMessage(raw))
	require.NoError(t, err)
	require.Contains(t, string(in.Workflow), `18446744073709551615`)
	require.Contains(t, string(in.Workflow), `7.50`, "numbers keep their exact text")
	// Re-encoding the input (as the adapter does when it moves images to the
	// blob store) keeps it too.
	again, err := json.Marshal(in)
	require.NoError(t, err)
	require.Contains(t, string(again), `18446744073709551615`)
}

func TestDecodeImageData(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		want     string
		wantErr  string
	}{
		{name: "plain", in: "aGVsbG8=", want: "hello"},
		{name: "data uri", in: "data:image/png;base64,aGVsbG8=", want: "hello"},
		{name: "line breaks", in: "aGVs\nbG8=", want: "hello"},
		{name: "url safe", in: "-_8=", want: "\xfb\xff"},
		{name: "bad padding", in: "aGVsbG8", wantErr: "Incorrect padding"},
		{name: "bad alphabet", in: "aGV*bG8=", wantErr: "invalid base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := proto.DecodeImageData(tt.in)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, string(got))
		})
	}
}

func FuzzDecodeInput(f *testing.F) {
	f.Add([]byte(`{"workflow":{"1":{"class_type":"SaveImage","inputs":{}}},"images":[{"name":"a.png","image":"AA=="}]}`))
	f.Add([]byte(`"{\"workflow\":{}}"`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"images":[1]}`))
	f.Add([]byte(`{"workflow":{},"images":[{"name":"x\u202egnp.exe","image":"AA=="}]}`))
	f.Add([]byte(`{"workflow":{"nodes":[],"links":[]}}`))
	f.Add([]byte(`{"workflow":{},"models":[{"url":"https://h/x.safetensors","folder":"loras","name":"x","sha256":"` + strings.Repeat("0", 64) + `","headers":{"A":"b"}}]}`))
	f.Add([]byte(`{"workflow":{},"models":[{"url":"http://h","folder":"..","headers":{"Host":"x"}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := proto.DecodeInput(data)
		if err != nil {
			var ie *proto.InputError
			if !errorsAs(err, &ie) || ie.Msg == "" {
				t.Fatalf("error %v is not a non-empty *InputError", err)
			}
			return
		}
		if len(in.Workflow) == 0 || in.Workflow[0] != '{' {
			t.Fatalf("accepted input without an object workflow: %q", data)
		}
		seen := map[string]bool{}
		for _, img := range in.Images {
			if img.Name == "" || strings.ContainsAny(img.Name, "/\\") || seen[img.Name] ||
				strings.ContainsFunc(img.Name, func(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) }) {
				t.Fatalf("accepted bad image name %q", img.Name)
			}
			seen[img.Name] = true
		}
		for _, m := range in.Models {
			if !proto.IsModelURL(m.URL) || m.Folder == "" || strings.ContainsAny(m.Folder+m.Name, "/\\") || strings.HasPrefix(m.Name, ".") {
				t.Fatalf("accepted bad model %+v", m)
			}
			for n, v := range m.Headers {
				if strings.ContainsAny(n+v, "\r\n") {
					t.Fatalf("accepted a header with a line break: %q", n)
				}
			}
		}
	})
}

func FuzzDecodeImageData(f *testing.F) {
	f.Add("data:image/png;base64,aGVsbG8=")
	f.Add("aGVsbG8")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = proto.DecodeImageData(s) // must not panic
	})
}
