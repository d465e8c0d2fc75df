package proto

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
)

// Input is RunPod's job input as worker-comfyui accepts it.
//
// Beyond these fields the gpuworker reads two options from the input
// object: "previews" (true, or a preview method "auto", "latent2rgb" or
// "taesd") publishes throttled preview events ([EventPreview]), and
// "include_temp": true returns temp outputs (PreviewImage and the like),
// which are skipped by default as in worker-comfyui. Other fields are kept
// as sent and ignored.
type Input struct {
	// Workflow is the ComfyUI API-format prompt, byte for byte as sent.
	Workflow json.RawMessage `json:"workflow"`
	// Images are uploaded to ComfyUI's input folder before the prompt runs.
	Images []InputImage `json:"images,omitempty"`
	// ComfyOrgAPIKey is the key for Comfy.org API nodes; it beats the
	// worker's COMFY_ORG_API_KEY. Secret.
	ComfyOrgAPIKey string `json:"comfy_org_api_key,omitempty"`
	// Models are model files to fetch by URL before the prompt runs, for
	// nodes that read a file without a loader input naming it ([ModelRef]).
	Models []ModelRef `json:"models,omitempty"`
}

// InputImage is one input file. Exactly one of Image and Blob is set.
type InputImage struct {
	// Name is the file name the workflow refers to (e.g. LoadImage.image).
	Name string `json:"name"`
	// Image is base64 or a data URI (everything up to the first comma is
	// dropped, as worker-comfyui does).
	Image string `json:"image,omitempty"`
	// Blob is a key in the blob store holding the raw bytes, used instead of
	// Image so large inputs never ride inside a NATS message.
	Blob string `json:"blob,omitempty"`
}

// The messages worker-comfyui gives for the same conditions
// (reference/worker-comfyui.md §2.1).
const (
	ErrMsgNoInput       = "Please provide input"
	ErrMsgInvalidJSON   = "Invalid JSON format in input"
	ErrMsgNoWorkflow    = "Missing 'workflow' parameter"
	ErrMsgImagesInvalid = "'images' must be a list of objects with 'name' and 'image' keys"
	// ErrMsgUIWorkflow is ours: the workflow is the one ComfyUI saves for
	// its editor, which /prompt cannot run.
	ErrMsgUIWorkflow = "this is a workflow in ComfyUI's UI format; export it in API format (Workflow > Export (API))"
)

// IsUIWorkflow reports whether raw is a workflow in ComfyUI's UI format
// (what Workflow > Save writes: an object with "nodes" and "links" lists)
// rather than the API format /prompt runs (node id -> {class_type,
// inputs}). An API workflow whose node ids are "nodes" and "links" has
// objects there, not lists, so it is never mistaken for one.
func IsUIWorkflow(raw json.RawMessage) bool {
	if !bytes.Contains(raw, []byte(`"nodes"`)) || !bytes.Contains(raw, []byte(`"links"`)) {
		return false // the cheap test first: DecodeInput runs on every job
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return false
	}
	return JSONKind(fields["nodes"]) == "an array" && JSONKind(fields["links"]) == "an array"
}

// DecodeInput checks a raw RunPod input the way worker-comfyui's
// validate_input does, with the same messages, and decodes it. Beyond
// worker-comfyui it rejects, with a message that says where, what
// worker-comfyui would crash on later (a non-object input, a non-string
// name, a workflow that is not a JSON object).
func DecodeInput(raw json.RawMessage) (*Input, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, errorf(ErrMsgNoInput)
	}
	if raw[0] == '"' {
		// worker-comfyui accepts the whole input as a JSON string.
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, errorf(ErrMsgInvalidJSON)
		}
		inner := bytes.TrimSpace([]byte(s))
		if !json.Valid(inner) {
			return nil, errorf(ErrMsgInvalidJSON)
		}
		if len(inner) == 0 || bytes.Equal(inner, []byte("null")) {
			return nil, errorf(ErrMsgNoInput)
		}
		raw = inner
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		if !json.Valid(raw) {
			return nil, errorf(ErrMsgInvalidJSON)
		}
		return nil, errorf("Input must be a JSON object, got %s", JSONKind(raw))
	}
	in := &Input{}
	wf, ok := fields["workflow"]
	if !ok || bytes.Equal(bytes.TrimSpace(wf), []byte("null")) {
		return nil, errorf(ErrMsgNoWorkflow)
	}
	if k := JSONKind(wf); k != "an object" {
		return nil, errorf("'workflow' must be a JSON object in ComfyUI API format, got %s", k)
	}
	if IsUIWorkflow(wf) {
		return nil, errorf("'workflow': %s", ErrMsgUIWorkflow)
	}
	in.Workflow = wf
	if imgs, ok := fields["images"]; ok && !bytes.Equal(bytes.TrimSpace(imgs), []byte("null")) {
		var list []map[string]json.RawMessage
		if err := json.Unmarshal(imgs, &list); err != nil {
			return nil, errorf(ErrMsgImagesInvalid)
		}
		seen := make(map[string]int, len(list))
		for i, el := range list {
			nameRaw, okN := el["name"]
			_, okI := el["image"]
			_, okB := el["blob"]
			if !okN || !(okI || okB) {
				return nil, errorf(ErrMsgImagesInvalid)
			}
			var img InputImage
			if err := json.Unmarshal(nameRaw, &img.Name); err != nil {
				return nil, errorf("images[%d].name must be a string", i)
			}
			if v, ok := el["image"]; ok {
				if err := json.Unmarshal(v, &img.Image); err != nil {
					return nil, errorf("images[%d].image must be a string (base64, data URI or URL)", i)
				}
			}
			if v, ok := el["blob"]; ok {
				if err := json.Unmarshal(v, &img.Blob); err != nil {
					return nil, errorf("images[%d].blob must be a string", i)
				}
			}
			if err := validImageName(img.Name); err != nil {
				return nil, errorf("images[%d].name: %v", i, err)
			}
			if j, dup := seen[img.Name]; dup {
				return nil, errorf("images[%d].name %q repeats images[%d].name", i, img.Name, j)
			}
			seen[img.Name] = i
			in.Images = append(in.Images, img)
		}
	}
	if k, ok := fields["comfy_org_api_key"]; ok && !bytes.Equal(bytes.TrimSpace(k), []byte("null")) {
		if err := json.Unmarshal(k, &in.ComfyOrgAPIKey); err != nil {
			return nil, errorf("'comfy_org_api_key' must be a string")
		}
	}
	if m, ok := fields["models"]; ok && !bytes.Equal(bytes.TrimSpace(m), []byte("null")) {
		refs, err := decodeModels(m)
		if err != nil {
			return nil, err
		}
		in.Models = refs
	}
	return in, nil
}

// validImageName keeps input names inside ComfyUI's input folder, and
// refuses the names that do not show as what they are: control characters
// and Unicode format characters (a right-to-left override turns
// "x\u202egnp.exe" into what reads as "xexe.png").
func validImageName(name string) error {
	switch {
	case name == "":
		return errorf("is empty")
	case name == "." || name == "..":
		return errorf("%q is not a file name", name)
	case bytes.ContainsAny([]byte(name), "/\\\x00"):
		return errorf("%q contains a path separator or NUL; give a bare file name", name)
	case len(name) > 255:
		return errorf("is %d bytes long, the limit is 255", len(name))
	}
	if i, r := findBadNameRune(name); i >= 0 {
		return errorf("%q has the control or format character %U at byte %d (invisible, or it makes the name read as another); give a plain file name", name, r, i)
	}
	return nil
}

// JSONKind names the JSON type of a valid JSON value ("an object", "an
// array", …) for error messages.
func JSONKind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// DecodeImageData decodes an input image given as base64 or as a data URI
// (everything up to the first comma is dropped, as worker-comfyui does).
// White space inside the base64 is ignored; URL-safe base64 is accepted.
func DecodeImageData(s string) ([]byte, error) {
	if i := strings.IndexByte(s, ','); i >= 0 {
		s = s[i+1:]
	}
	s = strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\n', '\r', '\t':
			return -1
		}
		return r
	}, s)
	enc := base64.StdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	}
	if len(s)%4 != 0 {
		return nil, errorf("Incorrect padding")
	}
	data, err := enc.DecodeString(s)
	if err != nil {
		return nil, errorf("invalid base64: %v", err)
	}
	return data, nil
}
