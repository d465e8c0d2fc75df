package comfysim

import "slices"

// VariantModels holds the model files the variants of Dockerfile.worker bake
// in (MODEL_TYPE sdxl, sd3, flux1-schnell, flux1-dev, flux1-dev-fp8,
// z-image-turbo, jawi-vision), by the folder ComfyUI reads them from: the
// image's models/unet is read as diffusion_models and models/clip as
// text_encoders. Only its model lists are set. The deploy package's tests
// keep it in step with the Dockerfile and with the examples in examples/.
var VariantModels = Config{
	Checkpoints: []string{"sd_xl_base_1.0.safetensors", "sd3_medium_incl_clips_t5xxlfp8.safetensors",
		"flux1-dev-fp8.safetensors"},
	DiffusionModels: []string{"flux1-schnell.safetensors", "flux1-dev.safetensors", "z_image_turbo_bf16.safetensors"},
	TextEncoders:    []string{"clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp16.safetensors", "qwen_3_4b.safetensors"},
	VAEs:            []string{"ae.safetensors", "sdxl_vae.safetensors", "sdxl-vae-fp16-fix.safetensors"},
	Loras:           []string{"jawi-vision.safetensors"},
}

// StackCheckpoints is the checkpoint list of the emulators `comfyfleet dev`
// and cmd/comfysim start unless told otherwise: DefaultCheckpoint and the
// variants' checkpoints.
func StackCheckpoints() []string {
	return append([]string{DefaultCheckpoint}, VariantModels.Checkpoints...)
}

// WithVariantModels returns c with each model folder it leaves nil offering
// the folder's defaults and every file of VariantModels (the checkpoints:
// StackCheckpoints), so that a workflow written for any model variant of the
// worker image runs on the emulator; a folder c lists stays as listed.
// `comfyfleet dev` and cmd/comfysim start their emulators so.
func (c Config) WithVariantModels() Config {
	fill := func(own, def, more []string) []string {
		if own != nil {
			return own
		}
		out := slices.Clone(def)
		for _, f := range more {
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
		return out
	}
	c.Checkpoints = fill(c.Checkpoints, StackCheckpoints(), nil)
	c.DiffusionModels = fill(c.DiffusionModels, DefaultDiffusionModels, VariantModels.DiffusionModels)
	c.TextEncoders = fill(c.TextEncoders, DefaultTextEncoders, VariantModels.TextEncoders)
	c.VAEs = fill(c.VAEs, DefaultVAEs, VariantModels.VAEs)
	c.Loras = fill(c.Loras, nil, VariantModels.Loras)
	return c
}
