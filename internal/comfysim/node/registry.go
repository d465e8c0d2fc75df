package node

import (
	"math/big"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// Registry is the set of node classes one emulated process knows
// (NODE_CLASS_MAPPINGS), in registration order, which is the order of
// /object_info.
type Registry struct {
	classes map[string]*Class
	order   []string
}

// Class returns the class registered under name, or nil.
func (r *Registry) Class(name string) *Class { return r.classes[name] }

// ObjectInfo renders /object_info: every class's entry, in registration
// order.
func (r *Registry) ObjectInfo(h Host) *pyvalue.Dict {
	out := pyvalue.NewDict()
	for _, name := range r.order {
		out.Set(name, r.classes[name].ObjectInfo(h))
	}
	return out
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

// bigInt and i are Python int literals in the schemas.
func bigInt(s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		panic("comfysim: bad int " + s)
	}
	return n
}

func i(n int64) *big.Int { return big.NewInt(n) }

var (
	imageOutputHidden = [][2]string{{"prompt", "PROMPT"}, {"extra_pnginfo", "EXTRA_PNGINFO"}}
	filenamePrefixTip = "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."
)

// NewRegistry returns the node classes the emulator knows.
func NewRegistry() *Registry {
	defs := []*Class{
		{
			Name: "CheckpointLoaderSimple", DisplayName: "Load Checkpoint", PythonModule: "nodes", Category: "model/loaders",
			Description: "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
			Inputs: []Input{{Name: "ckpt_name", Combo: func(h Host) []string { return h.ModelFiles("checkpoints") },
				Options: pyvalue.NewDict("tooltip", "The name of the checkpoint (model) to load.")}},
			ReturnTypes: []string{"MODEL", "CLIP", "VAE"},
			OutputTooltips: []string{"The model used for denoising latents.",
				"The CLIP model used for encoding text prompts.",
				"The VAE model used for encoding and decoding images to and from latent space."},
			SearchAliases: []string{"load model", "checkpoint", "model loader", "load checkpoint", "ckpt", "model"},
			Func:          runCheckpointLoader,
		},
		{
			Name: "CLIPTextEncode", DisplayName: "CLIP Text Encode (Prompt)", PythonModule: "nodes", Category: "model/conditioning",
			Description: "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
			Inputs: []Input{
				{Name: "text", Type: "STRING", Options: pyvalue.NewDict("multiline", true, "dynamicPrompts", true, "tooltip", "The text to be encoded.")},
				{Name: "clip", Type: "CLIP", Options: pyvalue.NewDict("tooltip", "The CLIP model used for encoding the text.")},
			},
			ReturnTypes:    []string{"CONDITIONING"},
			OutputTooltips: []string{"A conditioning containing the embedded text used to guide the diffusion model."},
			SearchAliases:  []string{"text", "prompt", "text prompt", "positive prompt", "negative prompt", "encode text", "text encoder", "encode prompt"},
			Func:           runCLIPTextEncode,
		},
		{
			Name: "EmptyLatentImage", DisplayName: "Empty Latent Image", PythonModule: "nodes", Category: "model/latent",
			Description: "Create a new batch of empty latent images to be denoised via sampling.",
			Inputs: []Input{
				{Name: "width", Type: "INT", Options: pyvalue.NewDict("default", i(512), "min", i(16), "max", i(maxResolution), "step", i(8), "tooltip", "The width of the latent images in pixels.")},
				{Name: "height", Type: "INT", Options: pyvalue.NewDict("default", i(512), "min", i(16), "max", i(maxResolution), "step", i(8), "tooltip", "The height of the latent images in pixels.")},
				{Name: "batch_size", Type: "INT", Options: pyvalue.NewDict("default", i(1), "min", i(1), "max", i(4096), "tooltip", "The number of latent images in the batch.")},
			},
			ReturnTypes:    []string{"LATENT"},
			OutputTooltips: []string{"The empty latent image batch."},
			SearchAliases:  []string{"empty", "empty latent", "new latent", "create latent", "blank latent", "blank"},
			Func:           runEmptyLatentImage,
		},
		{
			Name: "KSampler", DisplayName: "KSampler", PythonModule: "nodes", Category: "model/sampling",
			Description: "Uses the provided model, positive and negative conditioning to denoise the latent image.",
			Inputs: []Input{
				{Name: "model", Type: "MODEL", Options: pyvalue.NewDict("tooltip", "The model used for denoising the input latent.")},
				{Name: "seed", Type: "INT", Options: pyvalue.NewDict("default", i(0), "min", i(0), "max", bigInt("18446744073709551615"), "control_after_generate", true, "tooltip", "The random seed used for creating the noise.")},
				{Name: "steps", Type: "INT", Options: pyvalue.NewDict("default", i(20), "min", i(1), "max", i(10000), "tooltip", "The number of steps used in the denoising process.")},
				{Name: "cfg", Type: "FLOAT", Options: pyvalue.NewDict("default", 8.0, "min", 0.0, "max", 100.0, "step", 0.1, "round", 0.01, "tooltip", "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality.")},
				{Name: "sampler_name", Combo: func(Host) []string { return samplerNames }, Options: pyvalue.NewDict("tooltip", "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output.")},
				{Name: "scheduler", Combo: func(Host) []string { return schedulerNames }, Options: pyvalue.NewDict("tooltip", "The scheduler controls how noise is gradually removed to form the image.")},
				{Name: "positive", Type: "CONDITIONING", Options: pyvalue.NewDict("tooltip", "The conditioning describing the attributes you want to include in the image.")},
				{Name: "negative", Type: "CONDITIONING", Options: pyvalue.NewDict("tooltip", "The conditioning describing the attributes you want to exclude from the image.")},
				{Name: "latent_image", Type: "LATENT", Options: pyvalue.NewDict("tooltip", "The latent image to denoise.")},
				{Name: "denoise", Type: "FLOAT", Options: pyvalue.NewDict("default", 1.0, "min", 0.0, "max", 1.0, "step", 0.01, "tooltip", "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling.")},
			},
			ReturnTypes:    []string{"LATENT"},
			OutputTooltips: []string{"The denoised latent."},
			SearchAliases:  []string{"sampler", "sample", "generate", "denoise", "diffuse", "txt2img", "img2img"},
			Func:           runKSampler,
		},
		{
			Name: "VAEDecode", DisplayName: "VAE Decode", PythonModule: "nodes", Category: "model/latent",
			Description: "Decodes latent images back into pixel space images.",
			Inputs: []Input{
				{Name: "samples", Type: "LATENT", Options: pyvalue.NewDict("tooltip", "The latent to be decoded.")},
				{Name: "vae", Type: "VAE", Options: pyvalue.NewDict("tooltip", "The VAE model used for decoding the latent.")},
			},
			ReturnTypes:    []string{"IMAGE"},
			OutputTooltips: []string{"The decoded image."},
			SearchAliases:  []string{"decode", "decode latent", "latent to image", "render latent"},
			Func:           runVAEDecode,
		},
		{
			Name: "SaveImage", DisplayName: "Save Image", PythonModule: "nodes", Category: "image",
			Description: "Saves the input images to your ComfyUI output directory.",
			Inputs: []Input{
				{Name: "images", Type: "IMAGE", Options: pyvalue.NewDict("tooltip", "The images to save.")},
				{Name: "filename_prefix", Type: "STRING", Options: pyvalue.NewDict("default", "ComfyUI", "tooltip", filenamePrefixTip)},
			},
			Hidden:        imageOutputHidden,
			ReturnTypes:   []string{"IMAGE"},
			ReturnNames:   []string{"images"},
			OutputNode:    true,
			SearchAliases: []string{"save", "save image", "export image", "output image", "write image", "download"},
			Essentials:    "Basics",
			Func:          runSaveImage,
		},
		{
			Name: "PreviewImage", DisplayName: "Preview Image", PythonModule: "nodes", Category: "image",
			Description:   "Saves the input images to your ComfyUI output directory.",
			Inputs:        []Input{{Name: "images", Type: "IMAGE"}},
			Hidden:        imageOutputHidden,
			ReturnTypes:   []string{"IMAGE"},
			ReturnNames:   []string{"images"},
			OutputNode:    true,
			SearchAliases: []string{"preview", "preview image", "show image", "view image", "display image", "image viewer"},
			Essentials:    "Basics",
			Func:          runPreviewImage,
		},
		{
			Name: "LoadImage", DisplayName: "Load Image", PythonModule: "nodes", Category: "image",
			Inputs:        []Input{{Name: "image", Combo: func(h Host) []string { return h.InputImages() }, Options: pyvalue.NewDict("image_upload", true)}},
			ReturnTypes:   []string{"IMAGE", "MASK"},
			SearchAliases: []string{"load image", "open image", "import image", "image input", "upload image", "read image", "image loader"},
			Essentials:    "Basics",
			ValidateArgs:  []string{"image"},
			Validate:      validateLoadImage,
			IsChanged:     loadImageIsChanged,
			Func:          runLoadImage,
		},
		{
			Name: "PreviewAny", DisplayName: "Preview as Text", PythonModule: "comfy_extras.nodes_preview_any", Category: "utilities",
			Inputs:        []Input{{Name: "source", Type: "*", Options: pyvalue.NewDict()}},
			ReturnTypes:   []string{"STRING"},
			OutputNode:    true,
			SearchAliases: []string{"show output", "inspect", "debug", "print value", "show text"},
			Func:          runPreviewAny,
		},
		{
			Name: "SaveAnimatedWEBP", DisplayName: "Save Animated WEBP", PythonModule: "comfy_extras.nodes_images", Category: "image", V3: true,
			Inputs: []Input{
				{Name: "images", Type: "IMAGE", Options: pyvalue.NewDict()},
				{Name: "filename_prefix", Type: "STRING", Options: pyvalue.NewDict("default", "ComfyUI", "multiline", false)},
				{Name: "fps", Type: "FLOAT", Options: pyvalue.NewDict("default", 6.0, "min", 0.01, "max", 1000.0, "step", 0.01)},
				{Name: "lossless", Type: "BOOLEAN", Options: pyvalue.NewDict("default", true)},
				{Name: "quality", Type: "INT", Options: pyvalue.NewDict("default", i(80), "min", i(0), "max", i(100))},
				{Name: "method", Type: "COMBO", Options: pyvalue.NewDict("multiselect", false), Combo: func(Host) []string { return []string{"default", "fastest", "slowest"} }},
			},
			Hidden:      imageOutputHidden,
			ReturnTypes: []string{"IMAGE"},
			ReturnNames: []string{"images"},
			OutputNode:  true,
			Func:        runSaveAnimatedWEBP,
		},
		{
			Name: "EmptyLatentAudio", DisplayName: "Empty Latent Audio", PythonModule: "comfy_extras.nodes_audio", Category: "model/latent", V3: true,
			Inputs: []Input{
				{Name: "seconds", Type: "FLOAT", Options: pyvalue.NewDict("default", 47.6, "min", 1.0, "max", 1000.0, "step", 0.1)},
				{Name: "batch_size", Type: "INT", Options: pyvalue.NewDict("tooltip", "The number of latent images in the batch.", "default", i(1), "min", i(1), "max", i(4096))},
			},
			ReturnTypes: []string{"LATENT"},
			ReturnNames: []string{"LATENT"},
			Essentials:  "Audio",
			Func:        runEmptyLatentAudio,
		},
		{
			Name: "VAEDecodeAudio", DisplayName: "VAE Decode Audio", PythonModule: "comfy_extras.nodes_audio", Category: "model/latent", V3: true,
			Inputs: []Input{
				{Name: "samples", Type: "LATENT", Options: pyvalue.NewDict()},
				{Name: "vae", Type: "VAE", Options: pyvalue.NewDict()},
			},
			ReturnTypes:   []string{"AUDIO"},
			ReturnNames:   []string{"AUDIO"},
			SearchAliases: []string{"latent to audio"},
			Func:          runVAEDecodeAudio,
		},
		{
			Name: "SaveAudio", DisplayName: "Save Audio (FLAC) (DEPRECATED)", PythonModule: "comfy_extras.nodes_audio", Category: "audio", V3: true,
			Inputs: []Input{
				{Name: "audio", Type: "AUDIO", Options: pyvalue.NewDict()},
				{Name: "filename_prefix", Type: "STRING", Options: pyvalue.NewDict("default", "audio/ComfyUI", "multiline", false)},
			},
			Hidden:        imageOutputHidden,
			ReturnTypes:   []string{"AUDIO"},
			ReturnNames:   []string{"audio"},
			OutputNode:    true,
			Deprecated:    true,
			SearchAliases: []string{"export flac"},
			Essentials:    "Audio",
			Func:          runSaveAudio,
		},
		{
			Name: "CreateVideo", DisplayName: "Create Video", PythonModule: "comfy_extras.nodes_video", Category: "video", V3: true,
			Description: "Create a video from images.",
			Inputs: []Input{
				{Name: "images", Type: "IMAGE", Options: pyvalue.NewDict("tooltip", "The images to create a video from.")},
				{Name: "fps", Type: "FLOAT", Options: pyvalue.NewDict("default", 30.0, "min", 1.0, "max", 120.0, "step", 1.0)},
				{Name: "audio", Type: "AUDIO", Optional: true, Options: pyvalue.NewDict("tooltip", "The audio to add to the video.")},
				{Name: "bit_depth", Type: "INT", Optional: true, Options: pyvalue.NewDict("tooltip", "Bit depth of the created video. 10-bit keeps smoother gradients with less banding, but some players and downstream nodes may not support it.", "default", i(8), "min", i(8), "max", i(10), "step", i(2), "display", "number")},
			},
			ReturnTypes:   []string{"VIDEO"},
			ReturnNames:   []string{"VIDEO"},
			SearchAliases: []string{"images to video"},
			Essentials:    "Video Tools",
			Func:          runCreateVideo,
		},
		{
			Name: "SaveVideo", DisplayName: "Save Video", PythonModule: "comfy_extras.nodes_video", Category: "video", V3: true,
			Description: "Saves the input images to your ComfyUI output directory.",
			Inputs: []Input{
				{Name: "video", Type: "VIDEO", Options: pyvalue.NewDict("tooltip", "The video to save.")},
				{Name: "filename_prefix", Type: "STRING", Options: pyvalue.NewDict("tooltip", filenamePrefixTip, "default", "video/ComfyUI", "multiline", false)},
				{Name: "format", Type: "COMBO", Options: pyvalue.NewDict("tooltip", "The format to save the video as.", "default", "auto", "multiselect", false), Combo: func(Host) []string { return []string{"auto", "mp4"} }},
				{Name: "codec", Type: "COMBO", Options: pyvalue.NewDict("tooltip", "The codec to use for the video.", "default", "auto", "multiselect", false), Combo: func(Host) []string { return []string{"auto", "h264"} }},
			},
			Hidden:        imageOutputHidden,
			ReturnTypes:   []string{"VIDEO"},
			ReturnNames:   []string{"video"},
			OutputNode:    true,
			SearchAliases: []string{"export video"},
			Essentials:    "Basics",
			Func:          runSaveVideo,
		},
		{
			Name: "UNETLoader", DisplayName: "Load Diffusion Model", PythonModule: "nodes", Category: "advanced/loaders",
			Inputs: []Input{
				{Name: "unet_name", Combo: func(h Host) []string { return h.ModelFiles("diffusion_models") }},
				{Name: "weight_dtype", Combo: func(Host) []string { return weightDtypes }},
			},
			ReturnTypes: []string{"MODEL"},
			Func:        runUNETLoader,
		},
		{
			Name: "DualCLIPLoader", DisplayName: "DualCLIPLoader", PythonModule: "nodes", Category: "advanced/loaders",
			Description: "[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\nflux: clip-l, t5\nhidream: at least one of t5 or llama, recommended t5 and llama\nhunyuan_image: qwen2.5vl 7b and byt5 small",
			Inputs: []Input{
				{Name: "clip_name1", Combo: func(h Host) []string { return h.ModelFiles("text_encoders") }},
				{Name: "clip_name2", Combo: func(h Host) []string { return h.ModelFiles("text_encoders") }},
				{Name: "type", Combo: func(Host) []string { return dualCLIPTypes }},
				{Name: "device", Combo: func(Host) []string { return []string{"default", "cpu"} }, Options: pyvalue.NewDict("advanced", true), Optional: true},
			},
			ReturnTypes: []string{"CLIP"},
			Func:        runDualCLIPLoader,
		},
		{
			Name: "VAELoader", DisplayName: "Load VAE", PythonModule: "nodes", Category: "model/loaders",
			Inputs:      []Input{{Name: "vae_name", Combo: vaeNames}},
			ReturnTypes: []string{"VAE"},
			Func:        runVAELoader,
		},
		{
			Name: "LoraLoader", DisplayName: "Load LoRA", PythonModule: "nodes", Category: "model/loaders",
			Description: "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
			Inputs: []Input{
				{Name: "model", Type: "MODEL", Options: pyvalue.NewDict("tooltip", "The diffusion model the LoRA will be applied to.")},
				{Name: "clip", Type: "CLIP", Options: pyvalue.NewDict("tooltip", "The CLIP model the LoRA will be applied to.")},
				{Name: "lora_name", Combo: func(h Host) []string { return h.ModelFiles("loras") }, Options: pyvalue.NewDict("tooltip", "The name of the LoRA.")},
				{Name: "strength_model", Type: "FLOAT", Options: pyvalue.NewDict("default", 1.0, "min", -100.0, "max", 100.0, "step", 0.01, "tooltip", "How strongly to modify the diffusion model. This value can be negative.")},
				{Name: "strength_clip", Type: "FLOAT", Options: pyvalue.NewDict("default", 1.0, "min", -100.0, "max", 100.0, "step", 0.01, "tooltip", "How strongly to modify the CLIP model. This value can be negative.")},
			},
			ReturnTypes:    []string{"MODEL", "CLIP"},
			OutputTooltips: []string{"The modified diffusion model.", "The modified CLIP model."},
			Func:           runLoraLoader,
		},
		{
			Name: "CLIPLoader", DisplayName: "Load CLIP", PythonModule: "nodes", Category: "advanced/loaders",
			Description: "[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\nstable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B",
			Inputs: []Input{
				{Name: "clip_name", Combo: func(h Host) []string { return h.ModelFiles("text_encoders") }},
				{Name: "type", Combo: func(Host) []string { return clipTypes }},
				{Name: "device", Combo: func(Host) []string { return []string{"default", "cpu"} }, Options: pyvalue.NewDict("advanced", true), Optional: true},
			},
			ReturnTypes: []string{"CLIP"},
			Func:        runCLIPLoader,
		},
		{
			Name: "EmptySD3LatentImage", DisplayName: "EmptySD3LatentImage", PythonModule: "comfy_extras.nodes_sd3", Category: "latent/sd3", V3: true,
			Inputs: []Input{
				{Name: "width", Type: "INT", Options: pyvalue.NewDict("default", i(1024), "min", i(16), "max", i(maxResolution), "step", i(16))},
				{Name: "height", Type: "INT", Options: pyvalue.NewDict("default", i(1024), "min", i(16), "max", i(maxResolution), "step", i(16))},
				{Name: "batch_size", Type: "INT", Options: pyvalue.NewDict("default", i(1), "min", i(1), "max", i(4096))},
			},
			ReturnTypes: []string{"LATENT"},
			ReturnNames: []string{"LATENT"},
			Func:        runEmptySD3LatentImage,
		},
		{
			Name: "FluxGuidance", DisplayName: "FluxGuidance", PythonModule: "comfy_extras.nodes_flux", Category: "advanced/conditioning/flux", V3: true,
			Inputs: []Input{
				{Name: "conditioning", Type: "CONDITIONING", Options: pyvalue.NewDict()},
				{Name: "guidance", Type: "FLOAT", Options: pyvalue.NewDict("default", 3.5, "min", 0.0, "max", 100.0, "step", 0.1)},
			},
			ReturnTypes: []string{"CONDITIONING"},
			ReturnNames: []string{"CONDITIONING"},
			Func:        runFluxGuidance,
		},
		{
			Name: "ConditioningZeroOut", DisplayName: "ConditioningZeroOut", PythonModule: "nodes", Category: "advanced/conditioning",
			Inputs:      []Input{{Name: "conditioning", Type: "CONDITIONING"}},
			ReturnTypes: []string{"CONDITIONING"},
			Func:        runConditioningZeroOut,
		},
		{
			Name: "ModelSamplingAuraFlow", DisplayName: "ModelSamplingAuraFlow", PythonModule: "comfy_extras.nodes_model_advanced", Category: "advanced/model",
			Inputs: []Input{
				{Name: "model", Type: "MODEL"},
				{Name: "shift", Type: "FLOAT", Options: pyvalue.NewDict("default", 1.73, "min", 0.0, "max", 100.0, "step", 0.01)},
			},
			ReturnTypes: []string{"MODEL"},
			Func:        runModelSamplingAuraFlow,
		},
		{
			Name: "SaveWEBM", DisplayName: "SaveWEBM", PythonModule: "comfy_extras.nodes_video", Category: "image/video", V3: true, Experimental: true,
			Inputs: []Input{
				{Name: "images", Type: "IMAGE", Options: pyvalue.NewDict()},
				{Name: "filename_prefix", Type: "STRING", Options: pyvalue.NewDict("default", "ComfyUI", "multiline", false)},
				{Name: "codec", Type: "COMBO", Options: pyvalue.NewDict("multiselect", false), Combo: func(Host) []string { return []string{"vp9", "av1"} }},
				{Name: "fps", Type: "FLOAT", Options: pyvalue.NewDict("default", 24.0, "min", 0.01, "max", 1000.0, "step", 0.01)},
				{Name: "crf", Type: "FLOAT", Options: pyvalue.NewDict("tooltip", "Higher crf means lower quality with a smaller file size, lower crf means higher quality higher filesize.", "default", 32.0, "min", i(0), "max", 63.0, "step", i(1))},
			},
			Hidden:        imageOutputHidden,
			ReturnTypes:   []string{},
			OutputNode:    true,
			SearchAliases: []string{"export webm"},
			Func:          runSaveWEBM,
		},
		{
			Name: "VHS_VideoCombine", DisplayName: "Video Combine 🎥🅥🅗🅢", PythonModule: "custom_nodes.ComfyUI-VideoHelperSuite",
			Category: "Video Helper Suite 🎥🅥🅗🅢",
			Inputs: []Input{
				{Name: "images", Type: "IMAGE"},
				{Name: "frame_rate", Type: "FLOAT", Options: pyvalue.NewDict("default", i(8), "min", i(1), "step", i(1))},
				{Name: "loop_count", Type: "INT", Options: pyvalue.NewDict("default", i(0), "min", i(0), "max", i(100), "step", i(1))},
				{Name: "filename_prefix", Type: "STRING", Options: pyvalue.NewDict("default", "AnimateDiff")},
				{Name: "format", Combo: func(Host) []string { return vhsFormats }},
				{Name: "pingpong", Type: "BOOLEAN", Options: pyvalue.NewDict("default", false)},
				{Name: "save_output", Type: "BOOLEAN", Options: pyvalue.NewDict("default", true)},
				{Name: "audio", Type: "AUDIO", Optional: true},
				{Name: "meta_batch", Type: "VHS_BatchManager", Optional: true},
				{Name: "vae", Type: "VAE", Optional: true},
			},
			Hidden:      [][2]string{{"prompt", "PROMPT"}, {"extra_pnginfo", "EXTRA_PNGINFO"}, {"unique_id", "UNIQUE_ID"}},
			ReturnTypes: []string{"VHS_FILENAMES"},
			ReturnNames: []string{"Filenames"},
			OutputNode:  true,
			Func:        runVHSVideoCombine,
		},
		{
			Name: "SaveImageWebsocket", DisplayName: "SaveImageWebsocket", PythonModule: "custom_nodes.websocket_image_save", Category: "api node/image",
			Inputs:      []Input{{Name: "images", Type: "IMAGE"}},
			ReturnTypes: []string{},
			OutputNode:  true,
			IsChanged:   alwaysChanged,
			Func:        runSaveImageWebsocket,
		},
	}
	defs = append(defs, weightFreeClasses()...)
	r := &Registry{classes: make(map[string]*Class, len(defs)), order: make([]string, 0, len(defs))}
	for _, d := range defs {
		r.classes[d.Name] = d
		r.order = append(r.order, d.Name)
	}
	return r
}
