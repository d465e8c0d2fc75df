package trace

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
)

// Scenario is one trace to record: its name (the file name under
// testdata/traces), what it shows, and its steps.
type Scenario struct {
	Name, Doc string
	Steps     []Step
}

// ClientID is the clientId of every scenario's socket and prompts.
const ClientID = "fidelity-client"

// The scenarios need a server whose input/ and output/ hold nothing of an
// earlier recording (file-name counters start at 1) and which knows the
// custom node FidelityLongNode (testdata/realcomfy/fidelity_nodes). Each
// scenario's workflows differ from every other's (colours, prefixes), so
// no scenario finds another's outputs in the cache.

// promptID is the fixed prompt_id of a scenario's n-th prompt.
func promptID(scenario, n int) string {
	return fmt.Sprintf("00000000-0000-4000-8000-%06d%06d", scenario, n)
}

func connect(socket, clientID string) Step {
	return Step{Connect: &Connect{Socket: socket, ClientID: clientID}}
}

func get(path string) Step { return Step{Request: &Request{Method: "GET", Path: path}} }

func poll(path string) Step {
	return Step{Request: &Request{Method: "GET", Path: path, UntilNonEmpty: true}}
}

func post(path, body string) Step {
	return Step{Request: &Request{Method: "POST", Path: path, JSON: json.RawMessage(body)}}
}

func postRaw(path, body string) Step {
	return Step{Request: &Request{Method: "POST", Path: path, Raw: &body}}
}

// queuePrompt posts a workflow with a fixed prompt_id; client is the
// client_id ("" for none).
func queuePrompt(id, client, workflow string) Step {
	body := fmt.Sprintf(`{"prompt": %s, "prompt_id": %q`, workflow, id)
	if client != "" {
		body += fmt.Sprintf(`, "client_id": %q`, client)
	}
	return post("/prompt", body+"}")
}

func waitFor(typ, node string) Step {
	return Step{Wait: &Wait{Socket: "a", Type: typ, Node: node}}
}

func waitDone() Step { return waitFor("executing", "null") }

func waitProgress(v int) Step { return Step{Wait: &Wait{Socket: "a", Type: "progress", Value: &v}} }

func waitQueue(n int) Step { return Step{Wait: &Wait{Socket: "a", Type: "status", QueueRemaining: &n}} }

func pngOf(w, h int, c color.NRGBA) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetNRGBA(x, y, color.NRGBA{R: c.R + uint8(x*16), G: c.G + uint8(y*16), B: c.B, A: 255})
		}
	}
	var b bytes.Buffer
	_ = png.Encode(&b, img)
	return b.Bytes()
}

func upload(name, subfolder, overwrite string, data []byte) Step {
	f := map[string]string{"type": "input"}
	if subfolder != "" {
		f["subfolder"] = subfolder
	}
	if overwrite != "" {
		f["overwrite"] = overwrite
	}
	return Step{Request: &Request{Method: "POST", Path: "/upload/image",
		Upload: &Upload{Field: "image", Filename: name, ContentType: "image/png", Data: data, Fields: f}}}
}

// imageChain is one output (SaveImage) fed by the weight-free nodes:
// PrimitiveInt → EmptyImage → ImageInvert → GetImageSize → ImageScale,
// and the file name prefix from PrimitiveString and StringConcatenate.
// One output node only: ComfyUI runs a prompt's outputs in the order of a
// Python set, which the emulator does not copy.
func imageChain(color int, folder string, width int) string {
	return fmt.Sprintf(`{
  "1": {"class_type": "EmptyImage", "inputs": {"width": ["9", 0], "height": 6, "batch_size": 1, "color": %d}},
  "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
  "3": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": ["7", 0]}},
  "4": {"class_type": "GetImageSize", "inputs": {"image": ["2", 0]}},
  "5": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "bilinear", "width": ["4", 0], "height": 0, "crop": "disabled"}},
  "6": {"class_type": "PrimitiveString", "inputs": {"value": %q}},
  "7": {"class_type": "StringConcatenate", "inputs": {"string_a": ["6", 0], "string_b": "img", "delimiter": "/"}},
  "9": {"class_type": "PrimitiveInt", "inputs": {"value": %d}}
}`, color, folder, width)
}

// longNode is FidelityLongNode → SaveImage.
func longNode(steps int, delay float64, seed int, check bool, prefix string) string {
	return fmt.Sprintf(`{
  "1": {"class_type": "FidelityLongNode", "inputs": {"steps": %d, "delay": %g, "seed": %d, "size": 8, "check": %t}},
  "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
  "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": %q}}
}`, steps, delay, seed, check, prefix)
}

// Scenarios are the traces the recorder makes and the replay test plays.
func Scenarios() []Scenario {
	var out []Scenario
	add := func(name, doc string, build func(n int) []Step) {
		out = append(out, Scenario{Name: name, Doc: doc, Steps: build(len(out) + 1)})
	}
	add("fresh_run", "A weight-free workflow run for the first time: messages, history, the file.", func(n int) []Step {
		id := promptID(n, 1)
		return []Step{
			connect("a", ClientID),
			queuePrompt(id, ClientID, imageChain(0x102030, "fid_fresh", 8)),
			waitDone(),
			poll("/history/" + id),
			get("/view?filename=img_00001_.png&subfolder=fid_fresh&type=output"),
		}
	})
	add("cached_rerun", "The same workflow twice: the second run is cached and re-sends executed with the old file names.", func(n int) []Step {
		wf := imageChain(0x405060, "fid_cached", 9)
		return []Step{
			connect("a", ClientID),
			queuePrompt(promptID(n, 1), ClientID, wf),
			waitDone(),
			queuePrompt(promptID(n, 2), ClientID, wf),
			waitDone(),
			poll("/history/" + promptID(n, 2)),
		}
	})
	add("validation", "Each kind of validation error of POST /prompt, and bodies it refuses.", func(n int) []Step {
		p := func(k int, wf string) Step { return queuePrompt(promptID(n, k), ClientID, wf) }
		save := `"9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fid_val/x"}}`
		empty := func(inputs string) string {
			return `{"1": {"class_type": "EmptyImage", "inputs": {` + inputs + `}}, ` + save + `}`
		}
		return []Step{
			connect("a", ClientID),
			postRaw("/prompt", "this is not json"),
			post("/prompt", `{"client_id": "x"}`),
			post("/prompt", `{"prompt": "a string"}`),
			p(1, `{}`),
			p(2, `{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}`),
			p(3, `{"1": {"inputs": {}}, `+save+`}`),
			p(4, `{"1": {"class_type": "NoSuchNode", "inputs": {}}, `+save+`}`),
			p(5, empty(`"width": 8, "batch_size": 1, "color": 0`)),
			p(6, empty(`"width": 0, "height": 8, "batch_size": 1, "color": 0`)),
			p(7, empty(`"width": 99999, "height": 8, "batch_size": 1, "color": 0`)),
			p(8, empty(`"width": "wide", "height": 8, "batch_size": 1, "color": 0`)),
			p(9, `{"1": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "sideways", "width": 8, "height": 8, "crop": "disabled"}},
			  "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}, `+save+`}`),
			p(10, `{"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
			  "2": {"class_type": "PrimitiveString", "inputs": {"value": "x"}}, `+save+`}`),
			p(11, `{"1": {"class_type": "ImageInvert", "inputs": {"image": ["7", 0]}}, `+save+`}`),
			p(12, `{"1": {"class_type": "LoadImage", "inputs": {"image": "fid_missing.png"}}, `+save+`}`),
			p(13, `{"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 5]}},
			  "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}, `+save+`}`),
			p(14, `{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
			  "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fid_val/ok"}},
			  "10": {"class_type": "PreviewAny", "inputs": {}}}`),
			waitDone(),
		}
	})
	add("runtime_error", "A node raising while it runs: ImageScaleBy to a zero size.", func(n int) []Step {
		id := promptID(n, 1)
		return []Step{
			connect("a", ClientID),
			queuePrompt(id, ClientID, `{
  "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
  "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 0.01}},
  "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fid_err/x"}}
}`),
			waitDone(),
			poll("/history/" + id),
		}
	})
	add("interrupt_between_nodes", "POST /interrupt while a node that never checks the flag runs: it lands at the next node.", func(n int) []Step {
		id := promptID(n, 1)
		return []Step{
			connect("a", ClientID),
			queuePrompt(id, ClientID, longNode(1, 1.5, 11, false, "fid_intr/x")),
			waitFor("executing", "1"),
			post("/interrupt", `{}`),
			waitDone(),
			poll("/history/" + id),
		}
	})
	add("interrupt_long_node", "POST /interrupt inside a long node reporting progress with previews.", func(n int) []Step {
		id := promptID(n, 1)
		return []Step{
			connect("a", ClientID),
			queuePrompt(id, ClientID, longNode(40, 0.25, 12, true, "fid_long/x")),
			waitProgress(2),
			post("/interrupt", `{}`),
			waitDone(),
			poll("/history/" + id),
		}
	})
	add("progress_previews", "A long node run to its end: progress, progress_state and binary previews.", func(n int) []Step {
		id := promptID(n, 1)
		return []Step{
			connect("a", ClientID),
			queuePrompt(id, ClientID, longNode(3, 0.05, 13, true, "fid_prog/x")),
			waitDone(),
			poll("/history/" + id),
			get("/view?filename=x_00001_.png&subfolder=fid_prog&type=output"),
		}
	})
	add("image_ops", "An uploaded picture through the weight-free image nodes and savers: names, shapes, pixels.", func(n int) []Step {
		id := promptID(n, 1)
		wf := `{
  "1": {"class_type": "LoadImage", "inputs": {"image": "fid_ops/grad.png"}},
  "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.0}},
  "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fid_ops/blur"}},
  "4": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 12, "height": 10, "crop": "disabled"}},
  "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "fid_ops/scale"}},
  "6": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 2.0}},
  "7": {"class_type": "ImageInvert", "inputs": {"image": ["6", 0]}},
  "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "fid_ops/scaleby"}},
  "9": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "width": 4, "height": 0, "crop": "disabled"}},
  "10": {"class_type": "PreviewAny", "inputs": {"source": ["11", 0]}},
  "11": {"class_type": "GetImageSize", "inputs": {"image": ["9", 0]}},
  "12": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 2, "color": 16744448}},
  "13": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["12", 0], "filename_prefix": "fid_ops/anim", "fps": 4.0, "lossless": true, "quality": 80, "method": "default"}},
  "14": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["12", 0], "filename_prefix": "fid_ops/apng", "fps": 4.0, "compress_level": 4}},
  "15": {"class_type": "CreateVideo", "inputs": {"images": ["12", 0], "fps": 4.0}},
  "16": {"class_type": "SaveVideo", "inputs": {"video": ["15", 0], "filename_prefix": "fid_ops/video", "format": "auto", "codec": "auto"}},
  "17": {"class_type": "SaveWEBM", "inputs": {"images": ["12", 0], "filename_prefix": "fid_ops/webm", "codec": "vp9", "fps": 4.0, "crf": 32.0}},
  "18": {"class_type": "PrimitiveInt", "inputs": {"value": -9007199254740993}},
  "19": {"class_type": "PreviewAny", "inputs": {"source": ["18", 0]}},
  "20": {"class_type": "RandomNoise", "inputs": {"noise_seed": 18446744073709551615}},
  "21": {"class_type": "PreviewAny", "inputs": {"source": ["20", 0]}}
}`
		return []Step{
			upload("grad.png", "fid_ops", "", pngOf(8, 6, color.NRGBA{R: 5, G: 40, B: 200})),
			connect("a", ClientID),
			queuePrompt(id, ClientID, wf),
			waitDone(),
			poll("/history/" + id),
			get("/view?filename=blur_00001_.png&subfolder=fid_ops&type=output"),
			get("/view?filename=scale_00001_.png&subfolder=fid_ops&type=output"),
			get("/view?filename=scaleby_00001_.png&subfolder=fid_ops&type=output"),
		}
	})
	add("upload", "Uploads: a new name, the same name again (renamed), overwrite, a bad form, and /view of the files.", func(n int) []Step {
		a, b := pngOf(4, 3, color.NRGBA{R: 10, G: 20, B: 30}), pngOf(4, 3, color.NRGBA{R: 90, G: 20, B: 30})
		return []Step{
			upload("up.png", "fid_up", "", a),
			upload("up.png", "fid_up", "", b),
			upload("up.png", "fid_up", "true", b),
			upload("top.png", "", "", a),
			{Request: &Request{Method: "POST", Path: "/upload/image", Upload: &Upload{Field: "file", Filename: "x.png", ContentType: "image/png", Data: a}}},
			{Request: &Request{Method: "POST", Path: "/upload/image", Upload: &Upload{Field: "image", Filename: "empty.png", ContentType: "image/png", Data: []byte{}, Fields: map[string]string{"subfolder": "fid_up"}}}},
			get("/view?filename=up.png&subfolder=fid_up&type=input"),
			get("/view?filename=up%20%281%29.png&subfolder=fid_up&type=input"),
		}
	})
	add("view_errors", "What /view answers for files it cannot give.", func(int) []Step {
		return []Step{
			get("/view?filename=fid_nothing.png&type=output"),
			get("/view"),
			get("/view?filename=x.png&type=bogus"),
			get("/view?filename=../../etc/passwd&type=output"),
			get("/view?filename=x.png&subfolder=../..&type=output"),
			get("/view?filename=/etc/passwd&type=output"),
		}
	})
	add("history_shapes", "History of one prompt, of an unknown one, max_items, deleting an entry.", func(n int) []Step {
		id1, id2 := promptID(n, 1), promptID(n, 2)
		return []Step{
			connect("a", ClientID),
			queuePrompt(id1, ClientID, imageChain(0x0a0b0c, "fid_hist_a", 10)),
			waitDone(),
			queuePrompt(id2, ClientID, imageChain(0x0d0e0f, "fid_hist_b", 11)),
			waitDone(),
			poll("/history/" + id2),
			get("/history?max_items=1"),
			get("/history/00000000-0000-4000-8000-999999999999"),
			post("/history", `{"delete": ["`+id1+`"]}`),
			get("/history/" + id1),
		}
	})
	add("queue_shapes", "GET /queue with a running and pending prompts, POST /queue delete and clear.", func(n int) []Step {
		a, b, c := promptID(n, 1), promptID(n, 2), promptID(n, 3)
		return []Step{
			connect("a", ClientID),
			queuePrompt(a, ClientID, longNode(200, 0.05, 21, true, "fid_queue/a")),
			waitFor("executing", "1"),
			queuePrompt(b, ClientID, longNode(1, 0, 22, true, "fid_queue/b")),
			queuePrompt(c, ClientID, longNode(1, 0, 23, true, "fid_queue/c")),
			get("/queue"),
			post("/queue", `{"delete": ["`+c+`"]}`),
			get("/queue"),
			post("/queue", `{"clear": true}`),
			get("/queue"),
			post("/interrupt", `{}`),
			waitDone(),
			get("/queue"),
			post("/free", `{"free_memory": false}`),
		}
	})
	add("no_client_id", "A prompt without client_id: only status, progress_state and execution_interrupted reach sockets.", func(n int) []Step {
		id1, id2 := promptID(n, 1), promptID(n, 2)
		return []Step{
			connect("a", ClientID),
			queuePrompt(id1, "", imageChain(0x111111, "fid_nocid", 12)),
			waitQueue(0),
			poll("/history/" + id1),
			queuePrompt(id2, "", longNode(40, 0.25, 31, true, "fid_nocid/y")),
			waitFor("progress_state", ""),
			waitFor("progress_state", ""),
			post("/interrupt", `{}`),
			waitFor("execution_interrupted", ""),
			waitQueue(0),
		}
	})
	add("feature_flags", "GET /features, and a socket that says it supports preview metadata.", func(n int) []Step {
		id := promptID(n, 1)
		return []Step{
			get("/features"),
			{Connect: &Connect{Socket: "a", ClientID: ClientID, FeatureFlags: json.RawMessage(`{"supports_preview_metadata": true}`)}},
			waitFor("feature_flags", ""),
			queuePrompt(id, ClientID, longNode(2, 0.05, 41, true, "fid_ff/x")),
			waitDone(),
		}
	})
	add("object_info", "The /object_info entries of the weight-free core nodes and of the test node.", func(int) []Step {
		var steps []Step
		for _, name := range ObjectInfoNodes {
			steps = append(steps, get("/object_info/"+name))
		}
		return append(steps, get("/object_info/NoSuchNode"))
	})
	add("misc_routes", "Answers without a body and other small routes.", func(int) []Step {
		return []Step{
			post("/interrupt", `{}`),
			post("/free", `{"unload_models": true}`),
			post("/queue", `{}`),
			post("/history", `{}`),
			get("/prompt"),
			get("/embeddings"),
		}
	})
	return out
}

// ObjectInfoNodes are the node classes whose schemas the object_info trace
// records.
var ObjectInfoNodes = []string{
	"EmptyImage", "ImageInvert", "ImageScale", "ImageScaleBy", "ImageBlur", "SaveImage", "PreviewImage", "LoadImage",
	"SaveAnimatedWEBP", "SaveAnimatedPNG", "CreateVideo", "SaveVideo", "SaveWEBM", "PrimitiveString", "PrimitiveInt",
	"StringConcatenate", "PreviewAny", "RandomNoise", "GetImageSize", "FidelityLongNode",
}
