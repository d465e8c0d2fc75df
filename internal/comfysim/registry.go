package comfysim

import "math/big"

// inputDef is one declared input of a node class, as INPUT_TYPES returns it.
type inputDef struct {
	name string
	// typ is the io type ("INT", "IMAGE", "COMBO", ...). Empty means a v1
	// combo whose options come from combo.
	typ string
	// opts is the static options dict; nil renders as a one-element tuple in
	// object_info (and as {} in validation errors, like get_input_info).
	opts *pyDict
	// combo lists the options of a v1 combo (typ "") or of a v3 COMBO.
	combo    func(s *Server) []string
	optional bool
}

// nodeDef is a node class: its schema (for /object_info and validation) and
// its emulated behaviour.
type nodeDef struct {
	name, display, description, category, module string
	v3                                           bool
	inputs                                       []inputDef
	hidden                                       [][2]string // name, hidden type
	returnTypes                                  []string
	returnNames                                  []string // nil = returnTypes (v1); v3 uses display names
	outputTooltips                               []string // v1: nil = absent; v3: "" = None
	outputNode                                   bool
	searchAliases                                []string
	essentials                                   string
	deprecated, experimental                     bool

	// validateArgs are the argument names of VALIDATE_INPUTS; validate is
	// called with them when non-empty and returns true or a message string.
	validateArgs []string
	validate     func(s *Server, args map[string]any) (any, *nodeError)
	// isChanged returns IS_CHANGED's value for the cache signature.
	isChanged func(s *Server, inputs *pyDict) any
	// run executes the node.
	run func(x *nodeRun) (outputs []any, ui *pyDict, err error)
}

func (d *nodeDef) input(name string) (inputDef, bool) {
	for _, in := range d.inputs {
		if in.name == name {
			return in, true
		}
	}
	return inputDef{}, false
}

// spec returns (input_type, extra_info) as get_input_info does: the type is a
// string or, for a v1 combo, the list of options.
func (in inputDef) spec(s *Server) (typ any, extra *pyDict) {
	extra = in.opts
	if extra == nil {
		extra = newDict()
	}
	switch {
	case in.typ == "":
		typ = strList(in.combo(s))
	case in.typ == "COMBO" && in.combo != nil:
		extra = extra.Copy()
		extra.Set("options", strList(in.combo(s)))
		typ = "COMBO"
	default:
		typ = in.typ
	}
	return typ, extra
}

// comboOptions returns the options of a combo input, or nil if it is not one.
func (in inputDef) comboOptions(s *Server) ([]any, bool) {
	typ, extra := in.spec(s)
	if l, ok := typ.([]any); ok {
		return l, true
	}
	if typ == "COMBO" {
		if o, ok := extra.Get("options"); ok {
			if l, ok := o.([]any); ok {
				return l, true
			}
		}
		return []any{}, true
	}
	return nil, false
}

func strList(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func bigInt(s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		panic("comfysim: bad int " + s)
	}
	return n
}

func i(n int64) *big.Int { return big.NewInt(n) }

// objectInfo renders the /object_info entry of a class.
func (d *nodeDef) objectInfo(s *Server) *pyDict {
	input := newDict()
	order := newDict()
	var req, opt []string
	reqD, optD := newDict(), newDict()
	for _, in := range d.inputs {
		typ, _ := in.spec(s)
		var entry []any
		switch {
		case in.typ == "COMBO":
			_, extra := in.spec(s)
			entry = []any{typ, extra}
		case in.opts == nil:
			entry = []any{typ}
		default:
			entry = []any{typ, in.opts}
		}
		if in.optional {
			optD.Set(in.name, entry)
			opt = append(opt, in.name)
		} else {
			reqD.Set(in.name, entry)
			req = append(req, in.name)
		}
	}
	input.Set("required", reqD)
	order.Set("required", req)
	if len(opt) > 0 {
		input.Set("optional", optD)
		order.Set("optional", opt)
	}
	if len(d.hidden) > 0 {
		h := newDict()
		var names []string
		for _, hd := range d.hidden {
			if d.v3 {
				h.Set(hd[0], []any{hd[1]})
			} else {
				h.Set(hd[0], hd[1])
			}
			names = append(names, hd[0])
		}
		input.Set("hidden", h)
		order.Set("hidden", names)
	}
	outIsList := make([]any, len(d.returnTypes))
	for k := range outIsList {
		outIsList[k] = false
	}
	names := d.returnNames
	if names == nil {
		names = d.returnTypes
	}
	info := newDict(
		"input", input,
		"input_order", order,
		"is_input_list", false,
		"output", d.returnTypes,
		"output_is_list", outIsList,
		"output_name", names,
	)
	if d.v3 {
		tips := make([]any, len(d.returnTypes))
		for k := range tips {
			if k < len(d.outputTooltips) && d.outputTooltips[k] != "" {
				tips[k] = d.outputTooltips[k]
			}
		}
		var aliases any
		if len(d.searchAliases) > 0 {
			aliases = d.searchAliases
		}
		var ess any
		if d.essentials != "" {
			ess = d.essentials
		}
		info.Set("output_tooltips", tips)
		info.Set("output_matchtypes", nil)
		info.Set("name", d.name)
		info.Set("display_name", d.display)
		info.Set("description", d.description)
		info.Set("python_module", d.module)
		info.Set("category", d.category)
		info.Set("output_node", d.outputNode)
		info.Set("deprecated", d.deprecated)
		info.Set("experimental", d.experimental)
		info.Set("dev_only", false)
		info.Set("api_node", false)
		info.Set("price_badge", nil)
		info.Set("search_aliases", aliases)
		info.Set("essentials_category", ess)
		info.Set("has_intermediate_output", false)
		return info
	}
	info.Set("name", d.name)
	info.Set("display_name", d.display)
	info.Set("description", d.description)
	info.Set("python_module", d.module)
	info.Set("category", d.category)
	info.Set("output_node", d.outputNode)
	info.Set("has_intermediate_output", false)
	if d.outputTooltips != nil {
		info.Set("output_tooltips", d.outputTooltips)
	}
	if d.deprecated {
		info.Set("deprecated", true)
	}
	if d.experimental {
		info.Set("experimental", true)
	}
	aliases := d.searchAliases
	if aliases == nil {
		aliases = []string{}
	}
	info.Set("search_aliases", aliases)
	if d.essentials != "" {
		info.Set("essentials_category", d.essentials)
	}
	return info
}

// samplerNames is comfy.samplers.KSampler.SAMPLERS in v0.27.
var samplerNames = []string{"euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
	"exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
	"dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
	"dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
	"ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
	"res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3",
	"sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"}

// schedulerNames is comfy.samplers.KSampler.SCHEDULERS in v0.27.
var schedulerNames = []string{"simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
	"linear_quadratic", "kl_optimal"}

const maxResolution = 16384

var (
	imageOutputHidden = [][2]string{{"prompt", "PROMPT"}, {"extra_pnginfo", "EXTRA_PNGINFO"}}
	filenamePrefixTip = "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."
)

// buildRegistry returns the node classes the emulator knows, keyed by name,
// and their names in registration order (the order of /object_info).
func buildRegistry() (map[string]*nodeDef, []string) {
	defs := []*nodeDef{
		{
			name: "CheckpointLoaderSimple", display: "Load Checkpoint", module: "nodes", category: "model/loaders",
			description: "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
			inputs: []inputDef{{name: "ckpt_name", combo: func(s *Server) []string { return s.checkpoints },
				opts: newDict("tooltip", "The name of the checkpoint (model) to load.")}},
			returnTypes: []string{"MODEL", "CLIP", "VAE"},
			outputTooltips: []string{"The model used for denoising latents.",
				"The CLIP model used for encoding text prompts.",
				"The VAE model used for encoding and decoding images to and from latent space."},
			searchAliases: []string{"load model", "checkpoint", "model loader", "load checkpoint", "ckpt", "model"},
			run:           runCheckpointLoader,
		},
		{
			name: "CLIPTextEncode", display: "CLIP Text Encode (Prompt)", module: "nodes", category: "model/conditioning",
			description: "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
			inputs: []inputDef{
				{name: "text", typ: "STRING", opts: newDict("multiline", true, "dynamicPrompts", true, "tooltip", "The text to be encoded.")},
				{name: "clip", typ: "CLIP", opts: newDict("tooltip", "The CLIP model used for encoding the text.")},
			},
			returnTypes:    []string{"CONDITIONING"},
			outputTooltips: []string{"A conditioning containing the embedded text used to guide the diffusion model."},
			searchAliases:  []string{"text", "prompt", "text prompt", "positive prompt", "negative prompt", "encode text", "text encoder", "encode prompt"},
			run:            runCLIPTextEncode,
		},
		{
			name: "EmptyLatentImage", display: "Empty Latent Image", module: "nodes", category: "model/latent",
			description: "Create a new batch of empty latent images to be denoised via sampling.",
			inputs: []inputDef{
				{name: "width", typ: "INT", opts: newDict("default", i(512), "min", i(16), "max", i(maxResolution), "step", i(8), "tooltip", "The width of the latent images in pixels.")},
				{name: "height", typ: "INT", opts: newDict("default", i(512), "min", i(16), "max", i(maxResolution), "step", i(8), "tooltip", "The height of the latent images in pixels.")},
				{name: "batch_size", typ: "INT", opts: newDict("default", i(1), "min", i(1), "max", i(4096), "tooltip", "The number of latent images in the batch.")},
			},
			returnTypes:    []string{"LATENT"},
			outputTooltips: []string{"The empty latent image batch."},
			searchAliases:  []string{"empty", "empty latent", "new latent", "create latent", "blank latent", "blank"},
			run:            runEmptyLatentImage,
		},
		{
			name: "KSampler", display: "KSampler", module: "nodes", category: "model/sampling",
			description: "Uses the provided model, positive and negative conditioning to denoise the latent image.",
			inputs: []inputDef{
				{name: "model", typ: "MODEL", opts: newDict("tooltip", "The model used for denoising the input latent.")},
				{name: "seed", typ: "INT", opts: newDict("default", i(0), "min", i(0), "max", bigInt("18446744073709551615"), "control_after_generate", true, "tooltip", "The random seed used for creating the noise.")},
				{name: "steps", typ: "INT", opts: newDict("default", i(20), "min", i(1), "max", i(10000), "tooltip", "The number of steps used in the denoising process.")},
				{name: "cfg", typ: "FLOAT", opts: newDict("default", 8.0, "min", 0.0, "max", 100.0, "step", 0.1, "round", 0.01, "tooltip", "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality.")},
				{name: "sampler_name", combo: func(*Server) []string { return samplerNames }, opts: newDict("tooltip", "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output.")},
				{name: "scheduler", combo: func(*Server) []string { return schedulerNames }, opts: newDict("tooltip", "The scheduler controls how noise is gradually removed to form the image.")},
				{name: "positive", typ: "CONDITIONING", opts: newDict("tooltip", "The conditioning describing the attributes you want to include in the image.")},
				{name: "negative", typ: "CONDITIONING", opts: newDict("tooltip", "The conditioning describing the attributes you want to exclude from the image.")},
				{name: "latent_image", typ: "LATENT", opts: newDict("tooltip", "The latent image to denoise.")},
				{name: "denoise", typ: "FLOAT", opts: newDict("default", 1.0, "min", 0.0, "max", 1.0, "step", 0.01, "tooltip", "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling.")},
			},
			returnTypes:    []string{"LATENT"},
			outputTooltips: []string{"The denoised latent."},
			searchAliases:  []string{"sampler", "sample", "generate", "denoise", "diffuse", "txt2img", "img2img"},
			run:            runKSampler,
		},
		{
			name: "VAEDecode", display: "VAE Decode", module: "nodes", category: "model/latent",
			description: "Decodes latent images back into pixel space images.",
			inputs: []inputDef{
				{name: "samples", typ: "LATENT", opts: newDict("tooltip", "The latent to be decoded.")},
				{name: "vae", typ: "VAE", opts: newDict("tooltip", "The VAE model used for decoding the latent.")},
			},
			returnTypes:    []string{"IMAGE"},
			outputTooltips: []string{"The decoded image."},
			searchAliases:  []string{"decode", "decode latent", "latent to image", "render latent"},
			run:            runVAEDecode,
		},
		{
			name: "SaveImage", display: "Save Image", module: "nodes", category: "image",
			description: "Saves the input images to your ComfyUI output directory.",
			inputs: []inputDef{
				{name: "images", typ: "IMAGE", opts: newDict("tooltip", "The images to save.")},
				{name: "filename_prefix", typ: "STRING", opts: newDict("default", "ComfyUI", "tooltip", filenamePrefixTip)},
			},
			hidden:        imageOutputHidden,
			returnTypes:   []string{"IMAGE"},
			returnNames:   []string{"images"},
			outputNode:    true,
			searchAliases: []string{"save", "save image", "export image", "output image", "write image", "download"},
			essentials:    "Basics",
			run:           runSaveImage,
		},
		{
			name: "PreviewImage", display: "Preview Image", module: "nodes", category: "image",
			description:   "Saves the input images to your ComfyUI output directory.",
			inputs:        []inputDef{{name: "images", typ: "IMAGE"}},
			hidden:        imageOutputHidden,
			returnTypes:   []string{"IMAGE"},
			returnNames:   []string{"images"},
			outputNode:    true,
			searchAliases: []string{"preview", "preview image", "show image", "view image", "display image", "image viewer"},
			essentials:    "Basics",
			run:           runPreviewImage,
		},
		{
			name: "LoadImage", display: "Load Image", module: "nodes", category: "image",
			inputs:        []inputDef{{name: "image", combo: func(s *Server) []string { return s.inputImages() }, opts: newDict("image_upload", true)}},
			returnTypes:   []string{"IMAGE", "MASK"},
			searchAliases: []string{"load image", "open image", "import image", "image input", "upload image", "read image", "image loader"},
			essentials:    "Basics",
			validateArgs:  []string{"image"},
			validate:      validateLoadImage,
			isChanged:     loadImageIsChanged,
			run:           runLoadImage,
		},
		{
			name: "PreviewAny", display: "Preview as Text", module: "comfy_extras.nodes_preview_any", category: "utilities",
			inputs:        []inputDef{{name: "source", typ: "*", opts: newDict()}},
			returnTypes:   []string{"STRING"},
			outputNode:    true,
			searchAliases: []string{"show output", "inspect", "debug", "print value", "show text"},
			run:           runPreviewAny,
		},
		{
			name: "SaveAnimatedWEBP", display: "Save Animated WEBP", module: "comfy_extras.nodes_images", category: "image", v3: true,
			inputs: []inputDef{
				{name: "images", typ: "IMAGE", opts: newDict()},
				{name: "filename_prefix", typ: "STRING", opts: newDict("default", "ComfyUI", "multiline", false)},
				{name: "fps", typ: "FLOAT", opts: newDict("default", 6.0, "min", 0.01, "max", 1000.0, "step", 0.01)},
				{name: "lossless", typ: "BOOLEAN", opts: newDict("default", true)},
				{name: "quality", typ: "INT", opts: newDict("default", i(80), "min", i(0), "max", i(100))},
				{name: "method", typ: "COMBO", opts: newDict("multiselect", false), combo: func(*Server) []string { return []string{"default", "fastest", "slowest"} }},
			},
			hidden:      imageOutputHidden,
			returnTypes: []string{"IMAGE"},
			returnNames: []string{"images"},
			outputNode:  true,
			run:         runSaveAnimatedWEBP,
		},
		{
			name: "EmptyLatentAudio", display: "Empty Latent Audio", module: "comfy_extras.nodes_audio", category: "model/latent", v3: true,
			inputs: []inputDef{
				{name: "seconds", typ: "FLOAT", opts: newDict("default", 47.6, "min", 1.0, "max", 1000.0, "step", 0.1)},
				{name: "batch_size", typ: "INT", opts: newDict("tooltip", "The number of latent images in the batch.", "default", i(1), "min", i(1), "max", i(4096))},
			},
			returnTypes: []string{"LATENT"},
			returnNames: []string{"LATENT"},
			essentials:  "Audio",
			run:         runEmptyLatentAudio,
		},
		{
			name: "VAEDecodeAudio", display: "VAE Decode Audio", module: "comfy_extras.nodes_audio", category: "model/latent", v3: true,
			inputs: []inputDef{
				{name: "samples", typ: "LATENT", opts: newDict()},
				{name: "vae", typ: "VAE", opts: newDict()},
			},
			returnTypes:   []string{"AUDIO"},
			returnNames:   []string{"AUDIO"},
			searchAliases: []string{"latent to audio"},
			run:           runVAEDecodeAudio,
		},
		{
			name: "SaveAudio", display: "Save Audio (FLAC) (DEPRECATED)", module: "comfy_extras.nodes_audio", category: "audio", v3: true,
			inputs: []inputDef{
				{name: "audio", typ: "AUDIO", opts: newDict()},
				{name: "filename_prefix", typ: "STRING", opts: newDict("default", "audio/ComfyUI", "multiline", false)},
			},
			hidden:        imageOutputHidden,
			returnTypes:   []string{"AUDIO"},
			returnNames:   []string{"audio"},
			outputNode:    true,
			deprecated:    true,
			searchAliases: []string{"export flac"},
			essentials:    "Audio",
			run:           runSaveAudio,
		},
		{
			name: "CreateVideo", display: "Create Video", module: "comfy_extras.nodes_video", category: "video", v3: true,
			description: "Create a video from images.",
			inputs: []inputDef{
				{name: "images", typ: "IMAGE", opts: newDict("tooltip", "The images to create a video from.")},
				{name: "fps", typ: "FLOAT", opts: newDict("default", 30.0, "min", 1.0, "max", 120.0, "step", 1.0)},
				{name: "audio", typ: "AUDIO", optional: true, opts: newDict("tooltip", "The audio to add to the video.")},
				{name: "bit_depth", typ: "INT", optional: true, opts: newDict("tooltip", "Bit depth of the created video. 10-bit keeps smoother gradients with less banding, but some players and downstream nodes may not support it.", "default", i(8), "min", i(8), "max", i(10), "step", i(2), "display", "number")},
			},
			returnTypes:   []string{"VIDEO"},
			returnNames:   []string{"VIDEO"},
			searchAliases: []string{"images to video"},
			essentials:    "Video Tools",
			run:           runCreateVideo,
		},
		{
			name: "SaveVideo", display: "Save Video", module: "comfy_extras.nodes_video", category: "video", v3: true,
			description: "Saves the input images to your ComfyUI output directory.",
			inputs: []inputDef{
				{name: "video", typ: "VIDEO", opts: newDict("tooltip", "The video to save.")},
				{name: "filename_prefix", typ: "STRING", opts: newDict("tooltip", filenamePrefixTip, "default", "video/ComfyUI", "multiline", false)},
				{name: "format", typ: "COMBO", opts: newDict("tooltip", "The format to save the video as.", "default", "auto", "multiselect", false), combo: func(*Server) []string { return []string{"auto", "mp4"} }},
				{name: "codec", typ: "COMBO", opts: newDict("tooltip", "The codec to use for the video.", "default", "auto", "multiselect", false), combo: func(*Server) []string { return []string{"auto", "h264"} }},
			},
			hidden:        imageOutputHidden,
			returnTypes:   []string{"VIDEO"},
			returnNames:   []string{"video"},
			outputNode:    true,
			searchAliases: []string{"export video"},
			essentials:    "Basics",
			run:           runSaveVideo,
		},
		{
			name: "UNETLoader", display: "Load Diffusion Model", module: "nodes", category: "advanced/loaders",
			inputs: []inputDef{
				{name: "unet_name", combo: func(s *Server) []string { return s.modelFiles("diffusion_models") }},
				{name: "weight_dtype", combo: func(*Server) []string { return weightDtypes }},
			},
			returnTypes: []string{"MODEL"},
			run:         runUNETLoader,
		},
		{
			name: "DualCLIPLoader", display: "DualCLIPLoader", module: "nodes", category: "advanced/loaders",
			description: "[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\nflux: clip-l, t5\nhidream: at least one of t5 or llama, recommended t5 and llama\nhunyuan_image: qwen2.5vl 7b and byt5 small",
			inputs: []inputDef{
				{name: "clip_name1", combo: func(s *Server) []string { return s.modelFiles("text_encoders") }},
				{name: "clip_name2", combo: func(s *Server) []string { return s.modelFiles("text_encoders") }},
				{name: "type", combo: func(*Server) []string { return dualCLIPTypes }},
				{name: "device", combo: func(*Server) []string { return []string{"default", "cpu"} }, opts: newDict("advanced", true), optional: true},
			},
			returnTypes: []string{"CLIP"},
			run:         runDualCLIPLoader,
		},
		{
			name: "VAELoader", display: "Load VAE", module: "nodes", category: "model/loaders",
			inputs:      []inputDef{{name: "vae_name", combo: vaeNames}},
			returnTypes: []string{"VAE"},
			run:         runVAELoader,
		},
		{
			name: "LoraLoader", display: "Load LoRA", module: "nodes", category: "model/loaders",
			description: "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
			inputs: []inputDef{
				{name: "model", typ: "MODEL", opts: newDict("tooltip", "The diffusion model the LoRA will be applied to.")},
				{name: "clip", typ: "CLIP", opts: newDict("tooltip", "The CLIP model the LoRA will be applied to.")},
				{name: "lora_name", combo: func(s *Server) []string { return s.modelFiles("loras") }, opts: newDict("tooltip", "The name of the LoRA.")},
				{name: "strength_model", typ: "FLOAT", opts: newDict("default", 1.0, "min", -100.0, "max", 100.0, "step", 0.01, "tooltip", "How strongly to modify the diffusion model. This value can be negative.")},
				{name: "strength_clip", typ: "FLOAT", opts: newDict("default", 1.0, "min", -100.0, "max", 100.0, "step", 0.01, "tooltip", "How strongly to modify the CLIP model. This value can be negative.")},
			},
			returnTypes:    []string{"MODEL", "CLIP"},
			outputTooltips: []string{"The modified diffusion model.", "The modified CLIP model."},
			run:            runLoraLoader,
		},
		{
			name: "SaveWEBM", display: "SaveWEBM", module: "comfy_extras.nodes_video", category: "image/video", v3: true, experimental: true,
			inputs: []inputDef{
				{name: "images", typ: "IMAGE", opts: newDict()},
				{name: "filename_prefix", typ: "STRING", opts: newDict("default", "ComfyUI", "multiline", false)},
				{name: "codec", typ: "COMBO", opts: newDict("multiselect", false), combo: func(*Server) []string { return []string{"vp9", "av1"} }},
				{name: "fps", typ: "FLOAT", opts: newDict("default", 24.0, "min", 0.01, "max", 1000.0, "step", 0.01)},
				{name: "crf", typ: "FLOAT", opts: newDict("tooltip", "Higher crf means lower quality with a smaller file size, lower crf means higher quality higher filesize.", "default", 32.0, "min", 0.0, "max", 63.0, "step", 1.0)},
			},
			hidden:        imageOutputHidden,
			returnTypes:   []string{},
			outputNode:    true,
			searchAliases: []string{"export webm"},
			run:           runSaveWEBM,
		},
		{
			name: "VHS_VideoCombine", display: "Video Combine 🎥🅥🅗🅢", module: "custom_nodes.ComfyUI-VideoHelperSuite",
			category: "Video Helper Suite 🎥🅥🅗🅢",
			inputs: []inputDef{
				{name: "images", typ: "IMAGE"},
				{name: "frame_rate", typ: "FLOAT", opts: newDict("default", i(8), "min", i(1), "step", i(1))},
				{name: "loop_count", typ: "INT", opts: newDict("default", i(0), "min", i(0), "max", i(100), "step", i(1))},
				{name: "filename_prefix", typ: "STRING", opts: newDict("default", "AnimateDiff")},
				{name: "format", combo: func(*Server) []string { return vhsFormats }},
				{name: "pingpong", typ: "BOOLEAN", opts: newDict("default", false)},
				{name: "save_output", typ: "BOOLEAN", opts: newDict("default", true)},
				{name: "audio", typ: "AUDIO", optional: true},
				{name: "meta_batch", typ: "VHS_BatchManager", optional: true},
				{name: "vae", typ: "VAE", optional: true},
			},
			hidden:      [][2]string{{"prompt", "PROMPT"}, {"extra_pnginfo", "EXTRA_PNGINFO"}, {"unique_id", "UNIQUE_ID"}},
			returnTypes: []string{"VHS_FILENAMES"},
			returnNames: []string{"Filenames"},
			outputNode:  true,
			run:         runVHSVideoCombine,
		},
		{
			name: "SaveImageWebsocket", display: "SaveImageWebsocket", module: "custom_nodes.websocket_image_save", category: "api node/image",
			inputs:      []inputDef{{name: "images", typ: "IMAGE"}},
			returnTypes: []string{},
			outputNode:  true,
			isChanged:   alwaysChanged,
			run:         runSaveImageWebsocket,
		},
	}
	m := make(map[string]*nodeDef, len(defs))
	order := make([]string, 0, len(defs))
	for _, d := range defs {
		m[d.name] = d
		order = append(order, d.name)
	}
	return m, order
}
