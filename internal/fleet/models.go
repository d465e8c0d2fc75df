package fleet

import (
	"encoding/json"
	"github.com/comfyfleet/comfyfleet/proto"
	"regexp"
	"slices"
	"strings"
)

// Models are named by the loader input that takes them ("ckpt_name",
// "lora_name", "vae_name", "unet_name", "clip_name1", …): a worker reports
// the choices its ComfyUI's loaders offer for each such input
// (/object_info), and a workflow needs the values its loader nodes give
// them. The input name stands for the model folder: every loader with a
// ckpt_name input lists the same checkpoints.

// modelInput matches the inputs of loader nodes that name a model file.
var modelInput = regexp.MustCompile(`^[a-z_]+_name[0-9]*$`)

// IsModelInput reports whether input of node class names a model file:
// a "<something>_name" input of a class whose name contains "Loader".
func IsModelInput(class, input string) bool {
	return strings.Contains(class, "Loader") && modelInput.MatchString(input)
}

// WorkflowModels lists the model files an API-format workflow's loader
// nodes name, by input, each list sorted and without repeats. A workflow
// that does not decode names none (admission reports its errors
// elsewhere).
func WorkflowModels(workflow json.RawMessage) map[string][]string {
	var nodes map[string]struct {
		ClassType string                     `json:"class_type"`
		Inputs    map[string]json.RawMessage `json:"inputs"`
	}
	if json.Unmarshal(workflow, &nodes) != nil {
		return nil
	}
	var out map[string][]string
	for _, n := range nodes {
		for input, raw := range n.Inputs {
			if !IsModelInput(n.ClassType, input) {
				continue
			}
			var file string
			if json.Unmarshal(raw, &file) != nil || file == "" {
				continue // a link to another node, or not a name
			}
			if out == nil {
				out = map[string][]string{}
			}
			if !slices.Contains(out[input], file) {
				out[input] = append(out[input], file)
			}
		}
	}
	for _, files := range out {
		slices.Sort(files)
	}
	return out
}

// Has reports whether the worker offers every model of need.
func Has(w proto.Heartbeat, need map[string][]string) bool {
	for input, files := range need {
		for _, f := range files {
			if !slices.Contains(w.Models[input], f) {
				return false
			}
		}
	}
	return true
}

// HasWarm reports whether every model of need is among the worker's warm
// models.
func HasWarm(w proto.Heartbeat, need map[string][]string) bool {
	for _, files := range need {
		for _, f := range files {
			if !slices.Contains(w.Warm, f) {
				return false
			}
		}
	}
	return true
}
