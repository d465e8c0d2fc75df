package comfysim_test

import (
	"bytes"
	"encoding/json"
	"image/gif"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

// fluxPrompt is a split-loader workflow: UNETLoader + DualCLIPLoader +
// VAELoader, optionally through a LoraLoader.
func fluxPrompt(unet, lora, seed string) string {
	model, clip := `["1", 0]`, `["2", 0]`
	extra := ""
	if lora != "" {
		extra = `"10": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["2", 0], "lora_name": "` + lora + `", "strength_model": 0.8, "strength_clip": 1}},`
		model, clip = `["10", 0]`, `["10", 1]`
	}
	return `{
  "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "` + unet + `", "weight_dtype": "default"}},
  "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp8_e4m3fn.safetensors", "type": "flux"}},
  "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},` + extra + `
  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ` + clip + `}},
  "7": {"class_type": "KSampler", "inputs": {"seed": ` + seed + `, "steps": 2, "cfg": 1, "sampler_name": "euler", "scheduler": "simple", "denoise": 1,
        "model": ` + model + `, "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "flux", "images": ["8", 0]}}
}`
}

func TestSplitLoadersAndLora(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{Loras: []string{"style.safetensors"}})

	_, b := h.get("/object_info/UNETLoader")
	un := obj(t, decode(t, b), "UNETLoader")
	require.Equal(t, []any{"flux1-dev.safetensors"}, obj(t, un, "input", "required")["unet_name"].([]any)[0])
	require.Equal(t, []any{"default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"}, obj(t, un, "input", "required")["weight_dtype"].([]any)[0])
	require.Equal(t, []any{"MODEL"}, un["output"])
	_, b = h.get("/object_info/DualCLIPLoader")
	dc := obj(t, decode(t, b), "DualCLIPLoader")
	require.Equal(t, []any{"clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"}, obj(t, dc, "input", "required")["clip_name1"].([]any)[0])
	require.Contains(t, obj(t, dc, "input", "required")["type"].([]any)[0], "flux")
	require.Contains(t, obj(t, dc, "input"), "optional")
	_, b = h.get("/object_info/VAELoader")
	require.Equal(t, []any{"ae.safetensors", "pixel_space"}, obj(t, decode(t, b), "VAELoader", "input", "required")["vae_name"].([]any)[0])
	_, b = h.get("/object_info/LoraLoader")
	ll := obj(t, decode(t, b), "LoraLoader")
	require.Equal(t, []any{"MODEL", "CLIP"}, ll["output"])
	require.Equal(t, []any{"style.safetensors"}, obj(t, ll, "input", "required")["lora_name"].([]any)[0])
	_, b = h.get("/models/loras")
	require.JSONEq(t, `["style.safetensors"]`, string(b))
	_, b = h.get("/models/diffusion_models")
	require.JSONEq(t, `["flux1-dev.safetensors"]`, string(b))

	// Runs, and the LoRA changes the picture.
	read := func(prompt string) []byte {
		pid := newID()
		h.submit(body(prompt, "c", pid))
		e := h.history(pid)
		require.Equal(t, "success", obj(t, e, "status")["status_str"], "%v", e["status"])
		ref := obj(t, e, "outputs", "9")["images"].([]any)[0].(map[string]any)
		st, data, _ := h.do(http.MethodGet, viewPath(ref), "", nil)
		require.Equal(t, http.StatusOK, st)
		return data
	}
	plain := read(fluxPrompt("flux1-dev.safetensors", "", "1"))
	styled := read(fluxPrompt("flux1-dev.safetensors", "style.safetensors", "1"))
	require.NotEqual(t, plain, styled)

	// A missing model is a validation error that lists the options.
	st, b := h.post("/prompt", body(fluxPrompt("nope.safetensors", "", "2"), "c", newID()))
	require.Equal(t, http.StatusBadRequest, st)
	ne := obj(t, decode(t, b), "node_errors", "1")
	reason := ne["errors"].([]any)[0].(map[string]any)
	require.Equal(t, "value_not_in_list", reason["type"])
	require.Equal(t, "unet_name: 'nope.safetensors' not in ['flux1-dev.safetensors']", reason["details"])
	st, b = h.post("/prompt", body(fluxPrompt("flux1-dev.safetensors", "gone.safetensors", "3"), "c", newID()))
	require.Equal(t, http.StatusBadRequest, st)
	require.Contains(t, string(b), `lora_name: 'gone.safetensors' not in ['style.safetensors']`)
}

func TestVideoNodesAndWebsocketSave(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	prompt := workflow{batch: 3, extraNodes: `
  "20": {"class_type": "SaveWEBM", "inputs": {"images": ["8", 0], "filename_prefix": "clip", "codec": "vp9", "fps": 12, "crf": 32}},
  "21": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["8", 0], "frame_rate": 8, "loop_count": 0, "filename_prefix": "AnimateDiff", "format": "image/gif", "pingpong": false, "save_output": true}},
  "22": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["8", 0], "frame_rate": 8, "loop_count": 0, "filename_prefix": "AnimateDiff", "format": "video/h264-mp4", "pingpong": true, "save_output": false}},
  "23": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}`}.json()
	pid := newID()
	ws := h.dial("ws-client")
	h.submit(body(prompt, "ws-client", pid))
	e := h.history(pid)
	require.Equal(t, "success", obj(t, e, "status")["status_str"], "%v", e["status"])
	outs := obj(t, e, "outputs")
	require.NotContains(t, outs, "23", "SaveImageWebsocket has no UI output")

	webm := obj(t, outs, "20")
	require.Equal(t, []any{true}, webm["animated"])
	ref := webm["images"].([]any)[0].(map[string]any)
	require.Equal(t, map[string]any{"filename": "clip_00001_.webm", "subfolder": "", "type": "output"}, ref)
	st, b, hdr := h.do(http.MethodGet, viewPath(ref), "", nil)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, "video/webm", hdr.Get("Content-Type"))
	require.Equal(t, "video/webm", http.DetectContentType(b))

	g := obj(t, outs, "21")["gifs"].([]any)[0].(map[string]any)
	require.Equal(t, "AnimateDiff_00001.gif", g["filename"])
	require.Equal(t, "output", g["type"])
	require.Equal(t, "image/gif", g["format"])
	require.Equal(t, "AnimateDiff_00001.png", g["workflow"])
	st, b, _ = h.do(http.MethodGet, viewPath(g), "", nil)
	require.Equal(t, http.StatusOK, st)
	anim, err := gif.DecodeAll(bytes.NewReader(b))
	require.NoError(t, err)
	require.Len(t, anim.Image, 3)

	m := obj(t, outs, "22")["gifs"].([]any)[0].(map[string]any)
	require.Equal(t, "temp", m["type"])
	require.True(t, strings.HasSuffix(m["filename"].(string), ".mp4"))
	st, b, _ = h.do(http.MethodGet, viewPath(m), "", nil)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, "ftyp", string(b[4:8]))

	// SaveImageWebsocket sent one full-size PNG per image.
	pngs := 0
	for pngs < 3 {
		msg := ws.next()
		if len(msg.Binary) > 8 && bytes.HasPrefix(msg.Binary[8:], []byte("\x89PNG")) {
			pngs++
		}
	}
}

func TestFaultsForClients(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	upload := func() (int, []byte) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		part, err := mw.CreateFormFile("image", "a.png")
		require.NoError(t, err)
		_, _ = part.Write([]byte("\x89PNG\r\n\x1a\nnot really"))
		require.NoError(t, mw.WriteField("subfolder", "job1"))
		require.NoError(t, mw.WriteField("overwrite", "true"))
		require.NoError(t, mw.Close())
		st, b, _ := h.do(http.MethodPost, "/upload/image", mw.FormDataContentType(), &buf)
		return st, b
	}

	st, _ := upload()
	require.Equal(t, http.StatusOK, st)
	ups := h.sim.Uploads()
	require.Len(t, ups, 1)
	require.Equal(t, comfysim.UploadRecord{Filename: "a.png", Name: "a.png", Subfolder: "job1", Type: "input",
		ContentType: "application/octet-stream", Overwrite: "true", Size: 18}, ups[0])

	h.sim.SetFault(comfysim.Fault{UploadStatus: http.StatusInternalServerError})
	st, b := upload()
	require.Equal(t, http.StatusInternalServerError, st)
	require.Contains(t, string(b), "Server got itself in trouble")
	require.Len(t, h.sim.Uploads(), 1, "nothing stored")

	h.sim.SetFault(comfysim.Fault{PromptStatus: http.StatusInternalServerError})
	st, b = h.post("/prompt", body(workflow{}.json(), "c", newID()))
	require.Equal(t, http.StatusInternalServerError, st)
	require.Contains(t, string(b), "500 Internal Server Error")
	require.EqualValues(t, 0, h.sim.Stats().PromptsQueued)

	h.sim.SetFault(comfysim.Fault{PromptWithoutID: true, DropHistory: true})
	pid := newID()
	st, b = h.post("/prompt", `{"prompt": `+workflow{seed: "5"}.json()+`, "client_id": "c", "prompt_id": "`+pid+`", "extra_data": {"api_key_comfy_org": "secret-key"}}`)
	require.Equal(t, http.StatusOK, st)
	require.NotContains(t, decode(t, b), "prompt_id")
	require.Eventually(t, func() bool { return h.sim.Stats().PromptsExecuted == 1 }, waitFor, 5e6)
	_, b = h.get("/history/" + pid)
	require.Equal(t, "{}", string(b), "the entry was dropped")
	prompts := h.sim.Prompts()
	require.Len(t, prompts, 1)
	require.Equal(t, pid, prompts[0].PromptID)
	require.Equal(t, "c", prompts[0].ClientID)
	var extra map[string]any
	require.NoError(t, json.Unmarshal(prompts[0].ExtraData, &extra))
	require.Equal(t, "secret-key", extra["api_key_comfy_org"], "the record keeps what ComfyUI hides")

	// Large outputs and /view 404s.
	h.sim.SetFault(comfysim.Fault{PadOutputsTo: 50 << 20, ViewNotFound: []string{"big_00002_.png"}})
	pid = newID()
	h.submit(body(workflow{seed: "6", prefix: "big", batch: 2}.json(), "c", pid))
	e := h.history(pid)
	refs := obj(t, e, "outputs", "9")["images"].([]any)
	fi, err := os.Stat(filepath.Join(h.sim.Dir(), "output", "big_00001_.png"))
	require.NoError(t, err)
	require.EqualValues(t, 50<<20, fi.Size())
	st, _, hdr := h.do(http.MethodGet, viewPath(refs[0].(map[string]any)), "", nil)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, "52428800", hdr.Get("Content-Length"))
	st, _, _ = h.do(http.MethodGet, viewPath(refs[1].(map[string]any)), "", nil)
	require.Equal(t, http.StatusNotFound, st)

	// Interrupt and free are counted.
	h.post("/interrupt", `{}`)
	h.post("/free", `{"unload_models": true, "free_memory": true}`)
	require.EqualValues(t, 1, h.sim.Stats().InterruptRequests)
	require.EqualValues(t, 1, h.sim.Stats().FreeRequests)
}

// TestVariantNodes: the nodes of the worker image variants' examples
// (EmptySD3LatentImage, FluxGuidance, CLIPLoader, ModelSamplingAuraFlow,
// ConditioningZeroOut) are in /object_info with ComfyUI's schemas, run, and
// change the picture as they change what the sampler is given.
func TestVariantNodes(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{}.WithVariantModels())

	_, b := h.get("/object_info/EmptySD3LatentImage")
	sd3 := obj(t, decode(t, b), "EmptySD3LatentImage")
	require.Equal(t, "latent/sd3", sd3["category"])
	width := obj(t, sd3, "input", "required")["width"].([]any)
	require.Equal(t, "INT", width[0])
	require.Equal(t, json.Number("1024"), width[1].(map[string]any)["default"])
	require.Equal(t, json.Number("16"), width[1].(map[string]any)["step"])
	_, b = h.get("/object_info/CLIPLoader")
	cl := obj(t, decode(t, b), "CLIPLoader")
	require.Contains(t, obj(t, cl, "input", "required")["clip_name"].([]any)[0], "qwen_3_4b.safetensors")
	require.Contains(t, obj(t, cl, "input", "required")["type"].([]any)[0], "lumina2")
	_, b = h.get("/object_info/FluxGuidance")
	fg := obj(t, decode(t, b), "FluxGuidance")
	require.Equal(t, json.Number("3.5"), obj(t, fg, "input", "required")["guidance"].([]any)[1].(map[string]any)["default"])
	_, b = h.get("/models/checkpoints")
	require.Contains(t, string(b), "flux1-dev-fp8.safetensors")
	require.Contains(t, string(b), comfysim.DefaultCheckpoint, "the defaults stay")

	zimage := func(guidance, shift, negative string) string {
		return `{
  "4": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
  "10": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}},
  "11": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
  "13": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["4", 0], "shift": ` + shift + `}},
  "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["10", 0]}},
  "12": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": ` + guidance + `}},
  "7": ` + negative + `,
  "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 1, "sampler_name": "res_multistep", "scheduler": "simple", "denoise": 1,
        "model": ["13", 0], "positive": ["12", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["11", 0]}},
  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "z", "images": ["8", 0]}}
}`
	}
	zero := `{"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}}`
	plain := `{"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["10", 0]}}`
	read := func(prompt string) []byte {
		pid := newID()
		h.submit(body(prompt, "c", pid))
		e := h.history(pid)
		require.Equal(t, "success", obj(t, e, "status")["status_str"], "%v", e["status"])
		ref := obj(t, e, "outputs", "9")["images"].([]any)[0].(map[string]any)
		st, data, _ := h.do(http.MethodGet, viewPath(ref), "", nil)
		require.Equal(t, http.StatusOK, st)
		return data
	}
	base := read(zimage("3.5", "3", zero))
	require.NotEqual(t, base, read(zimage("4.5", "3", zero)), "FluxGuidance's guidance changes the picture")
	require.NotEqual(t, base, read(zimage("3.5", "2", zero)), "ModelSamplingAuraFlow's shift changes it")
	require.NotEqual(t, base, read(zimage("3.5", "3", plain)), "a zeroed negative is not the encoded one")
	require.Equal(t, base, read(zimage("3.5", "3", zero)), "the same prompt makes the same picture")
}
