package deploy_test

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
)

// loaderFolders are the model folders ComfyUI reads a loader input's file
// from: models/unet is read as diffusion_models and models/clip as
// text_encoders (folder_paths' legacy names, which worker-comfyui's flux
// images use).
var loaderFolders = map[string][]string{
	"ckpt_name":  {"checkpoints"},
	"unet_name":  {"unet", "diffusion_models"},
	"clip_name":  {"clip", "text_encoders"},
	"clip_name1": {"clip", "text_encoders"},
	"clip_name2": {"clip", "text_encoders"},
	"vae_name":   {"vae"},
	"lora_name":  {"loras"},
}

// emulatorFolder is the folder of comfysim.VariantModels that lists a file
// of the image's models/<dir>.
var emulatorFolder = map[string]func(comfysim.Config) []string{
	"checkpoints":      func(c comfysim.Config) []string { return c.Checkpoints },
	"unet":             func(c comfysim.Config) []string { return c.DiffusionModels },
	"diffusion_models": func(c comfysim.Config) []string { return c.DiffusionModels },
	"clip":             func(c comfysim.Config) []string { return c.TextEncoders },
	"text_encoders":    func(c comfysim.Config) []string { return c.TextEncoders },
	"vae":              func(c comfysim.Config) []string { return c.VAEs },
	"loras":            func(c comfysim.Config) []string { return c.Loras },
}

// TestEveryVariantHasAnExampleThatNamesItsFiles: for each MODEL_TYPE of
// Dockerfile.worker that bakes models in, examples/<MODEL_TYPE>.json is a
// request whose every loader file is one that image holds, in a folder the
// loader reads, so the example runs on that image unchanged
// (worker-comfyui's test_input.json ran on one image of six).
func TestEveryVariantHasAnExampleThatNamesItsFiles(t *testing.T) {
	t.Parallel()
	variants, _ := variantModels(t, parseDockerfile(t, "Dockerfile.worker").stage(t, "downloader"))
	for typ, files := range variants {
		if typ == "base" {
			continue
		}
		t.Run(typ, func(t *testing.T) {
			var req struct {
				Input struct {
					Workflow json.RawMessage `json:"workflow"`
				} `json:"input"`
			}
			require.NoError(t, json.Unmarshal([]byte(readFile(t, "examples", typ+".json")), &req))
			need := fleet.WorkflowModels(req.Input.Workflow)
			require.NotEmpty(t, need, "the example loads models")
			for input, names := range need {
				folders, ok := loaderFolders[input]
				require.True(t, ok, "loader input %s: add the folders it reads to loaderFolders", input)
				for _, name := range names {
					found := slices.ContainsFunc(files, func(m model) bool {
						dir, file := filepath.Split(m.path)
						return file == name && slices.Contains(folders, strings.TrimSuffix(strings.TrimPrefix(dir, "models/"), "/"))
					})
					require.True(t, found, "%s=%s is not among the files MODEL_TYPE=%s bakes into %v: %v", input, name, typ, folders, files)
				}
			}
		})
	}

	// Every JSON request in examples/ is a variant's, or txt2img.json (the
	// emulator's and a base image with your own SD 1.5 checkpoint).
	matches, err := filepath.Glob(repoPath("examples", "*.json"))
	require.NoError(t, err)
	for _, m := range matches {
		name := strings.TrimSuffix(filepath.Base(m), ".json")
		_, isVariant := variants[name]
		require.True(t, isVariant && name != "base" || name == "txt2img", "examples/%s.json names no model variant of Dockerfile.worker", name)
	}
}

// TestEmulatorOffersEveryVariantsFiles: comfysim.VariantModels, which
// `comfyfleet dev` and the sim profile's emulator offer, lists each file a
// variant bakes in for a loader, so every example runs in dev (the devstack
// tests run them).
func TestEmulatorOffersEveryVariantsFiles(t *testing.T) {
	t.Parallel()
	variants, _ := variantModels(t, parseDockerfile(t, "Dockerfile.worker").stage(t, "downloader"))
	for typ, files := range variants {
		for _, m := range files {
			dir, file := filepath.Split(m.path)
			folder := strings.TrimSuffix(strings.TrimPrefix(dir, "models/"), "/")
			list, ok := emulatorFolder[folder]
			if !ok {
				continue // model_patches: read by no loader of the emulator
			}
			require.Contains(t, list(comfysim.VariantModels), file, "MODEL_TYPE=%s bakes %s", typ, m.path)
		}
	}
}

// TestModelTypeDefaultsAgree: compose, .env.example and Dockerfile.worker
// build the same variant when MODEL_TYPE is not set (.env.example once
// said base while the image defaulted to flux1-dev-fp8).
func TestModelTypeDefaultsAgree(t *testing.T) {
	t.Parallel()
	image := parseDockerfile(t, "Dockerfile.worker").stage(t, "final").args()["MODEL_TYPE"]
	require.NotEmpty(t, image)
	env := regexp.MustCompile(`(?m)^MODEL_TYPE=(.*)$`).FindAllStringSubmatch(readFile(t, "deploy", "compose", ".env.example"), -1)
	require.Len(t, env, 1)
	require.Equal(t, image, env[0][1], ".env.example")
	uses := regexp.MustCompile(`\$\{MODEL_TYPE(:-[^}]*)?\}`).FindAllStringSubmatch(readFile(t, "deploy", "compose", "compose.yaml"), -1)
	require.NotEmpty(t, uses)
	for _, u := range uses {
		require.Equal(t, ":-"+image, u[1], "compose.yaml: %s", u[0])
	}
}
