package fleet

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Models are named by the loader input that takes them ("ckpt_name",
// "lora_name", "vae_name", "unet_name", "clip_name1", …): a worker reports
// the choices its ComfyUI's loaders offer for each such input
// (/object_info), and a workflow needs the values its loader nodes give
// them. The input name stands for the model folder: every loader with a
// ckpt_name input lists the same checkpoints.
//
// A job may also name a model by URL (proto.IsModelURL), in a loader
// input or in input.models: the worker fetches it into its model cache,
// so no worker's /object_info lists it beforehand, and admission does not
// judge it. A worker reports the files of its cache in its heartbeat
// (Cached, by proto.ModelURLKey and digest), and the workflow's input is
// rewritten to the cached file's name, so its warm set (Warm) holds that
// name, or the URL's key, after a job that used it. Need and Tier rank
// the workers for a job by these: warm, then cached on disk, then cold.

// modelInput matches the inputs of loader nodes that name a model file.
var modelInput = regexp.MustCompile(`^[a-z_]+_name[0-9]*$`)

// IsModelInput reports whether input of node class names a model file:
// a "<something>_name" input of a class whose name contains "Loader".
func IsModelInput(class, input string) bool {
	return strings.Contains(class, "Loader") && modelInput.MatchString(input)
}

// loaderValues calls fn with every string value a loader input of an
// API-format workflow gives (links to other nodes and other JSON are
// skipped). A workflow that does not decode gives none.
func loaderValues(workflow json.RawMessage, fn func(input, value string)) {
	var nodes map[string]struct {
		ClassType string                     `json:"class_type"`
		Inputs    map[string]json.RawMessage `json:"inputs"`
	}
	if json.Unmarshal(workflow, &nodes) != nil {
		return
	}
	for _, n := range nodes {
		for input, raw := range n.Inputs {
			if !IsModelInput(n.ClassType, input) {
				continue
			}
			var value string
			if json.Unmarshal(raw, &value) != nil || value == "" {
				continue // a link to another node, or not a name
			}
			fn(input, value)
		}
	}
}

// WorkflowModels lists the model files an API-format workflow's loader
// nodes name, by input, each list sorted and without repeats. Values that
// name a model by URL are not files of ComfyUI's folders and are left out
// (URLModels lists them). A workflow that does not decode names none
// (admission reports its errors elsewhere).
func WorkflowModels(workflow json.RawMessage) map[string][]string {
	var out map[string][]string
	loaderValues(workflow, func(input, file string) {
		if proto.IsModelURL(file) {
			return
		}
		if out == nil {
			out = map[string][]string{}
		}
		if !slices.Contains(out[input], file) {
			out[input] = append(out[input], file)
		}
	})
	for _, files := range out {
		slices.Sort(files)
	}
	return out
}

// URLModel is a model a job names by URL.
type URLModel struct {
	// Key is its URL as proto.ModelURLKey gives it (no credentials).
	Key string
	// SHA256 is its hex digest, lowercased, when input.models gives one.
	SHA256 string
}

// URLModels lists the models a job names by URL: the URL values of its
// workflow's loader inputs and the entries of its input.models (refs),
// sorted by key, one per key (an entry's digest is kept). URLs that do not
// parse are left out: the worker fails the job on them.
func URLModels(workflow json.RawMessage, refs []proto.ModelRef) []URLModel {
	var out []URLModel
	add := func(raw, sha string) {
		key := proto.ModelURLKey(raw)
		if key == "(invalid URL)" {
			return
		}
		sha = strings.ToLower(sha)
		i := slices.IndexFunc(out, func(m URLModel) bool { return m.Key == key })
		switch {
		case i < 0:
			out = append(out, URLModel{Key: key, SHA256: sha})
		case out[i].SHA256 == "":
			out[i].SHA256 = sha
		}
	}
	loaderValues(workflow, func(_, value string) {
		if proto.IsModelURL(value) {
			add(value, "")
		}
	})
	for _, r := range refs {
		if proto.IsModelURL(r.URL) {
			add(r.URL, r.SHA256)
		}
	}
	slices.SortFunc(out, func(a, b URLModel) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// Need is what a job asks of a worker's models.
type Need struct {
	// Files are the model files its loaders name, by input
	// (WorkflowModels).
	Files map[string][]string
	// URLs are the models it names by URL (URLModels).
	URLs []URLModel
}

// JobNeed reads the models a job input (RunPod's input object) names: its
// workflow's loader inputs and its input.models. A part that does not
// decode names none.
func JobNeed(input json.RawMessage) Need {
	var fields struct {
		Workflow json.RawMessage `json:"workflow"`
		Models   json.RawMessage `json:"models"`
	}
	if json.Unmarshal(input, &fields) != nil {
		return Need{}
	}
	var refs []proto.ModelRef
	if len(fields.Models) > 0 && json.Unmarshal(fields.Models, &refs) != nil {
		refs = nil
	}
	return Need{Files: WorkflowModels(fields.Workflow), URLs: URLModels(fields.Workflow, refs)}
}

// Empty reports whether the job names no model at all.
func (n Need) Empty() bool { return len(n.Files) == 0 && len(n.URLs) == 0 }

// Tier ranks how ready a worker is for a job's models, best first.
type Tier int

const (
	// TierWarm: every model of the job is in the worker's warm set (its
	// last job's models, most likely still in VRAM).
	TierWarm Tier = iota
	// TierCached: every model the job names by URL is in the worker's
	// model cache (no download), and it offers the job's files.
	TierCached
	// TierCold: anything else; it may download or load models.
	TierCold
)

// String names the tier as metrics label it: "warm", "cached", "cold".
func (t Tier) String() string {
	switch t {
	case TierWarm:
		return "warm"
	case TierCached:
		return "cached"
	default:
		return "cold"
	}
}

// Tier ranks worker w for the job. A job that names models only by file
// is warm or cold on a worker (every worker that offers the files has them
// on disk); one that names models by URL is cached on a worker whose
// cache holds them all.
func (n Need) Tier(w proto.Heartbeat) Tier {
	if HasWarm(w, n.Files) && HasURLWarm(w, n.URLs) {
		return TierWarm
	}
	if len(n.URLs) > 0 && HasURLCached(w, n.URLs) && (w.Models == nil || Has(w, n.Files)) {
		return TierCached
	}
	return TierCold
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

// Matches reports whether the cached file c is m: the same URL key or,
// when the job gives a digest, the same digest (one file served from two
// URLs).
func (m URLModel) Matches(c proto.CachedModel) bool {
	return c.URL == m.Key || m.SHA256 != "" && strings.EqualFold(c.SHA256, m.SHA256)
}

// cachedEntry finds the worker's cached file for m.
func cachedEntry(w proto.Heartbeat, m URLModel) (proto.CachedModel, bool) {
	for _, c := range w.Cached {
		if m.Matches(c) {
			return c, true
		}
	}
	return proto.CachedModel{}, false
}

// urlWarm: m's URL key is in the warm set (the warm set was taken from
// the workflow as sent), or the file its cache holds for m is (taken from
// the rewritten workflow).
func urlWarm(w proto.Heartbeat, m URLModel) bool {
	if slices.Contains(w.Warm, m.Key) {
		return true
	}
	c, ok := cachedEntry(w, m)
	return ok && c.File != "" && slices.Contains(w.Warm, c.File)
}

// HasURLWarm reports whether every model of need is warm on the worker.
func HasURLWarm(w proto.Heartbeat, need []URLModel) bool {
	for _, m := range need {
		if !urlWarm(w, m) {
			return false
		}
	}
	return true
}

// HasURLCached reports whether every model of need is on the worker's
// disk: in its model cache, or warm (it ran a job with it last).
func HasURLCached(w proto.Heartbeat, need []URLModel) bool {
	for _, m := range need {
		if _, ok := cachedEntry(w, m); !ok && !urlWarm(w, m) {
			return false
		}
	}
	return true
}
