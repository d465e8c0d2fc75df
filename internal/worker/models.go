package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/modelcache"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Models by URL. A loader input whose value is a URL ("lora_name":
// "https://…") and every entry of input.models are fetched into the
// worker's model cache (internal/modelcache, Deps.Models) before the
// prompt is queued, and the loader inputs are rewritten to the cached
// files' names, on the workflow's raw bytes as input files are. The
// folder of a loader input comes from modelFolders, else from an
// input.models entry of the same URL, else from the folder on disk that
// holds one of the input's options in /object_info. The attempt holds the
// files until it ends, so the cache never evicts a file a prompt running
// or queued in ComfyUI reads. Download progress is published as progress
// events of phase "download". A download that cannot succeed (not found,
// refused, a hash mismatch, over the size cap) fails the job at once; one
// that may pass (a server error, a cut connection, a timeout) is retried
// as a transient failure, and the next attempt resumes it.

// modelFolders maps a loader input to ComfyUI's model folder, by
// "Class.input" first, then by input.
var modelFolders = map[string]string{
	"CLIPVisionLoader.clip_name":    "clip_vision",
	"UpscaleModelLoader.model_name": "upscale_models",
	"ckpt_name":                     "checkpoints",
	"lora_name":                     "loras",
	"vae_name":                      "vae",
	"unet_name":                     "diffusion_models",
	"clip_name":                     "text_encoders",
	"clip_name1":                    "text_encoders",
	"clip_name2":                    "text_encoders",
	"clip_name3":                    "text_encoders",
	"clip_name4":                    "text_encoders",
	"control_net_name":              "controlnet",
	"style_model_name":              "style_models",
	"gligen_name":                   "gligen",
	"hypernetwork_name":             "hypernetworks",
	"photomaker_model_name":         "photomaker",
}

// modelWant is one model the job needs, with where its URL appears.
type modelWant struct {
	req   modelcache.Request
	key   string // proto.ModelURLKey
	node  string // the loader's node id, "" for an input.models entry
	where string // for messages: "node 4 (LoraLoader) lora_name" or "models[0]"
}

// errNoModelCache is the failure of a job naming models by URL on a
// worker without a cache.
const errNoModelCache = "This worker cannot fetch models by URL: it has no model cache (set COMFYUI_MODELS_DIR to ComfyUI's models folder)"

// modelRetry is a download that may succeed at the next attempt.
type modelRetry struct{ err *modelcache.Error }

func (e *modelRetry) Error() string { return e.err.Error() }

// fetchModels fetches the job's models by URL and returns the workflow
// pointed at them.
func (ex *execution) fetchModels(ctx context.Context, in *proto.Input, workflow []byte) ([]byte, error) {
	wants, err := ex.modelWants(ctx, in, workflow)
	if err != nil || len(wants) == 0 {
		return workflow, err
	}
	if ex.w.models == nil {
		details := make([]string, 0, len(wants))
		for _, m := range wants {
			details = append(details, fmt.Sprintf("%s: %s", m.where, ssrf.RedactString(m.req.URL)))
		}
		return nil, &failure{msg: errNoModelCache, details: details}
	}
	// One fetch per folder and URL; the cache shares one download among
	// the fetches of every job on the worker.
	type fetch struct {
		want   modelWant
		handle *modelcache.Handle
		err    error
	}
	byReq := map[string]*fetch{}
	var order []*fetch
	for _, m := range wants {
		k := m.req.Folder + "\x00" + m.req.URL
		if byReq[k] == nil {
			byReq[k] = &fetch{want: m}
			order = append(order, byReq[k])
		}
	}
	sem := make(chan struct{}, ex.w.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, f := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			f.handle, f.err = ex.w.models.Fetch(ctx, f.want.req, ex.downloadProgress(f.want))
			if f.handle != nil {
				ex.mu.Lock()
				ex.models = append(ex.models, f.handle)
				ex.mu.Unlock()
				ex.w.metrics.modelFetched(f.handle.Downloaded)
			}
			ex.touch()
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var lines []string
	var retry *modelcache.Error
	for _, f := range order {
		var me *modelcache.Error
		switch {
		case f.err == nil:
		case errors.As(f.err, &me) && me.Permanent:
			lines = append(lines, me.Error())
		case errors.As(f.err, &me):
			if retry == nil {
				retry = me
			}
		default:
			lines = append(lines, fmt.Sprintf("model %s: %v", ssrf.RedactString(f.want.req.URL), f.err))
		}
	}
	if len(lines) > 0 {
		msg := "Failed to fetch " + lines[0]
		if len(lines) > 1 {
			msg = fmt.Sprintf("Failed to fetch %d models: %s", len(lines), strings.Join(lines, "; "))
		}
		return nil, &failure{msg: msg, details: lines}
	}
	if retry != nil {
		return nil, &modelRetry{err: retry}
	}
	repl := map[string]string{}
	for _, f := range order {
		if f.want.node != "" {
			repl[f.want.req.Folder+"\x00"+f.want.req.URL] = f.handle.File
		}
	}
	out, _, err := rewriteValues(workflow, func(v inputValue) (string, bool) {
		if !v.direct || !proto.IsModelURL(v.val) || !fleet.IsModelInput(v.class, v.input) {
			return "", false
		}
		for _, m := range wants {
			if m.node == v.node && m.req.URL == v.val {
				to, ok := repl[m.req.Folder+"\x00"+m.req.URL]
				return to, ok
			}
		}
		return "", false
	})
	if err != nil {
		return nil, &failure{msg: fmt.Sprintf("Invalid workflow: %v", err)}
	}
	return out, nil
}

// modelWants lists the models the job names by URL: its loader inputs'
// URL values and its input.models entries. A loader input whose folder
// cannot be told fails the job.
func (ex *execution) modelWants(ctx context.Context, in *proto.Input, workflow []byte) ([]modelWant, error) {
	refs := map[string]proto.ModelRef{} // input.models by URL key
	for _, r := range in.Models {
		if _, dup := refs[proto.ModelURLKey(r.URL)]; !dup {
			refs[proto.ModelURLKey(r.URL)] = r
		}
	}
	var wants []modelWant
	var problems []string
	err := walkInputs(workflow, func(v inputValue) error {
		if !v.direct || !proto.IsModelURL(v.val) || !fleet.IsModelInput(v.class, v.input) {
			return nil
		}
		key := proto.ModelURLKey(v.val)
		ref := refs[key]
		where := fmt.Sprintf("node %s (%s) %s", v.node, v.class, v.input)
		folder := modelFolders[v.class+"."+v.input]
		if folder == "" {
			folder = modelFolders[v.input]
		}
		if folder == "" {
			folder = ref.Folder
		}
		if folder == "" {
			folder = ex.folderFromObjectInfo(ctx, v.class, v.input)
		}
		if folder == "" {
			problems = append(problems, fmt.Sprintf("%s: cannot tell which model folder it reads; list %s in input.models with its folder",
				where, ssrf.RedactString(v.val)))
			return nil
		}
		wants = append(wants, modelWant{key: key, node: v.node, where: where, req: modelcache.Request{
			URL: v.val, Folder: folder, Name: ref.Name, SHA256: ref.SHA256, Headers: ref.Headers}})
		return nil
	})
	if err != nil {
		return nil, &failure{msg: fmt.Sprintf("Invalid workflow: %v", err)}
	}
	if len(problems) > 0 {
		return nil, &failure{msg: "Failed to fetch models: " + strings.Join(problems, "; "), details: problems}
	}
	for i, r := range in.Models {
		wants = append(wants, modelWant{key: proto.ModelURLKey(r.URL), where: fmt.Sprintf("models[%d]", i), req: modelcache.Request{
			URL: r.URL, Folder: r.Folder, Name: r.Name, SHA256: r.SHA256, Headers: r.Headers}})
	}
	return wants, nil
}

// folderFromObjectInfo finds the folder of a loader input the worker does
// not know: the model folder on disk that holds one of its options.
func (ex *execution) folderFromObjectInfo(ctx context.Context, class, input string) string {
	oi, ok := ex.w.comfy.(objectInfoReader)
	if !ok || ex.w.models == nil {
		return ""
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	infos, err := oi.ObjectInfo(octx, class)
	if err != nil {
		return ""
	}
	opts, ok := infos[class].Options(input)
	if !ok {
		return ""
	}
	return ex.w.models.FolderOf(opts)
}

// downloadProgress publishes a download's progress as the job's progress
// events (phase "download"), throttled as ComfyUI's are.
func (ex *execution) downloadProgress(m modelWant) func(done, total int64) {
	var mu sync.Mutex
	var last time.Time
	return func(done, total int64) {
		ex.touch()
		mu.Lock()
		now := time.Now()
		if now.Sub(last) < ex.w.cfg.ProgressEvery && done != total {
			mu.Unlock()
			return
		}
		last = now
		mu.Unlock()
		pct := 0.0
		if total > 0 {
			pct = float64(done) * 100 / float64(total)
		}
		ex.w.core.Progress(ex.claim, proto.Progress{Phase: proto.PhaseDownload, URL: m.key, Node: m.node, Value: done, Max: total, Percent: pct})
	}
}

// releaseModels lets the cache evict the attempt's models again, once
// its prompt is out of ComfyUI.
func (ex *execution) releaseModels() {
	ex.mu.Lock()
	hs := ex.models
	ex.models = nil
	ex.mu.Unlock()
	for _, h := range hs {
		h.Release()
	}
}
