package node

import (
	"fmt"
	"slices"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// The split model loaders of flux-style workflows (UNETLoader,
// DualCLIPLoader, VAELoader) and LoraLoader. Like CheckpointLoaderSimple
// they load nothing: their values name the files, so what a sampler or
// decoder renders depends on every model it was given.

// weightDtypes is UNETLoader's weight_dtype combo.
var weightDtypes = []string{"default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"}

// dualCLIPTypes is DualCLIPLoader's type combo.
var dualCLIPTypes = []string{"sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
	"kandinsky5", "kandinsky5_image", "newbie"}

// vaeNames is VAELoader.vae_list: the files in models/vae plus the
// pixel-space pseudo VAE.
func vaeNames(h Host) []string {
	return append(append([]string{}, h.ModelFiles("vae")...), "pixel_space")
}

// modelFile is folder_paths.get_full_path_or_raise: the file must be in
// the folder's list.
func (x *Run) modelFile(folder, input string) (string, error) {
	name := x.str(input)
	if !slices.Contains(x.Host.ModelFiles(folder), name) {
		return "", Raise("FileNotFoundError",
			fmt.Sprintf("Model in folder '%s' with filename '%s' not found.", folder, name), x.Class.FuncName())
	}
	return name, nil
}

func runUNETLoader(x *Run) ([]any, *pyvalue.Dict, error) {
	name, err := x.modelFile("diffusion_models", "unet_name")
	if err != nil {
		return nil, nil, err
	}
	id := "unet:" + name + ":" + x.str("weight_dtype")
	return []any{modelVal{id, pyObjectRepr("comfy.model_patcher.ModelPatcher")}}, nil, nil
}

func runDualCLIPLoader(x *Run) ([]any, *pyvalue.Dict, error) {
	a, err := x.modelFile("text_encoders", "clip_name1")
	if err != nil {
		return nil, nil, err
	}
	b, err := x.modelFile("text_encoders", "clip_name2")
	if err != nil {
		return nil, nil, err
	}
	id := "clip:" + a + "+" + b + ":" + x.str("type")
	return []any{clipVal{id, pyObjectRepr("comfy.sd.CLIP")}}, nil, nil
}

func runVAELoader(x *Run) ([]any, *pyvalue.Dict, error) {
	name := x.str("vae_name")
	if name != "pixel_space" {
		var err error
		if name, err = x.modelFile("vae", "vae_name"); err != nil {
			return nil, nil, err
		}
	}
	return []any{vaeVal{"vae:" + name, pyObjectRepr("comfy.sd.VAE")}}, nil, nil
}

func runLoraLoader(x *Run) ([]any, *pyvalue.Dict, error) {
	model, ok := x.Inputs["model"].(modelVal)
	if !ok {
		return nil, nil, x.noneInput("model", "clone")
	}
	clip, ok := x.Inputs["clip"].(clipVal)
	if !ok {
		return nil, nil, x.noneInput("clip", "clone")
	}
	sm, sc := x.float("strength_model"), x.float("strength_clip")
	if sm == 0 && sc == 0 {
		return []any{model, clip}, nil, nil
	}
	name, err := x.modelFile("loras", "lora_name")
	if err != nil {
		return nil, nil, err
	}
	m := modelVal{fmt.Sprintf("%s+lora:%s:%g", model.ckpt, name, sm), pyObjectRepr("comfy.model_patcher.ModelPatcher")}
	c := clipVal{fmt.Sprintf("%s+lora:%s:%g", clip.ckpt, name, sc), pyObjectRepr("comfy.sd.CLIP")}
	return []any{m, c}, nil, nil
}

// clipTypes is CLIPLoader's type combo.
var clipTypes = []string{"stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
	"lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis"}

func runCLIPLoader(x *Run) ([]any, *pyvalue.Dict, error) {
	name, err := x.modelFile("text_encoders", "clip_name")
	if err != nil {
		return nil, nil, err
	}
	return []any{clipVal{"clip:" + name + ":" + x.str("type"), pyObjectRepr("comfy.sd.CLIP")}}, nil, nil
}

// runModelSamplingAuraFlow patches the model's sampling shift: a different
// model to the sampler, so a different picture.
func runModelSamplingAuraFlow(x *Run) ([]any, *pyvalue.Dict, error) {
	model, ok := x.Inputs["model"].(modelVal)
	if !ok {
		return nil, nil, x.noneInput("model", "clone")
	}
	return []any{modelVal{fmt.Sprintf("%s+auraflow:%g", model.ckpt, x.float("shift")), pyObjectRepr("comfy.model_patcher.ModelPatcher")}}, nil, nil
}
