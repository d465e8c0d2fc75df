package deploy_test

import (
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

// model is one file a MODEL_TYPE bakes in: its path under /comfyui and the
// Hugging Face repository it comes from ("" = given by a build arg).
type model struct{ path, repo string }

// wantModels is reference/worker-comfyui.md §5.3, plus jawi-vision.
var wantModels = map[string][]model{
	"base": nil,
	"sdxl": {
		{"models/checkpoints/sd_xl_base_1.0.safetensors", "stabilityai/stable-diffusion-xl-base-1.0"},
		{"models/vae/sdxl_vae.safetensors", "stabilityai/sdxl-vae"},
		{"models/vae/sdxl-vae-fp16-fix.safetensors", "madebyollin/sdxl-vae-fp16-fix"},
	},
	"sd3": {
		{"models/checkpoints/sd3_medium_incl_clips_t5xxlfp8.safetensors", "stabilityai/stable-diffusion-3-medium"},
	},
	"flux1-schnell": {
		{"models/unet/flux1-schnell.safetensors", "black-forest-labs/FLUX.1-schnell"},
		{"models/clip/clip_l.safetensors", "comfyanonymous/flux_text_encoders"},
		{"models/clip/t5xxl_fp8_e4m3fn.safetensors", "comfyanonymous/flux_text_encoders"},
		{"models/vae/ae.safetensors", "black-forest-labs/FLUX.1-schnell"},
	},
	"flux1-dev": {
		{"models/unet/flux1-dev.safetensors", "black-forest-labs/FLUX.1-dev"},
		{"models/clip/clip_l.safetensors", "comfyanonymous/flux_text_encoders"},
		{"models/clip/t5xxl_fp8_e4m3fn.safetensors", "comfyanonymous/flux_text_encoders"},
		{"models/vae/ae.safetensors", "black-forest-labs/FLUX.1-dev"},
	},
	"flux1-dev-fp8": {
		{"models/checkpoints/flux1-dev-fp8.safetensors", "Comfy-Org/flux1-dev"},
	},
	"z-image-turbo": {
		{"models/text_encoders/qwen_3_4b.safetensors", "Comfy-Org/z_image_turbo"},
		{"models/diffusion_models/z_image_turbo_bf16.safetensors", "Comfy-Org/z_image_turbo"},
		{"models/vae/ae.safetensors", "Comfy-Org/z_image_turbo"},
		{"models/model_patches/Z-Image-Turbo-Fun-Controlnet-Union.safetensors", "alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union"},
	},
	"jawi-vision": {
		{"models/diffusion_models/flux1-schnell.safetensors", "black-forest-labs/FLUX.1-schnell"},
		{"models/text_encoders/clip_l.safetensors", "comfyanonymous/flux_text_encoders"},
		{"models/text_encoders/t5xxl_fp16.safetensors", "comfyanonymous/flux_text_encoders"},
		{"models/vae/ae.safetensors", "black-forest-labs/FLUX.1-schnell"},
		{"models/loras/jawi-vision.safetensors", ""},
	},
}

var (
	semver        = regexp.MustCompile(`^\d+\.\d+\.\d+$`)
	branchRe      = regexp.MustCompile(`if \[ "\$MODEL_TYPE" = "([a-z0-9-]+)" \]`)
	fetchRe       = regexp.MustCompile(`fetch-model (--hf |--civitai )?(\S+) (\S+)`)
	hfURLRe       = regexp.MustCompile(`^https://huggingface\.co/([^/]+/[^/]+)/resolve/main/(\S+)$`)
	pipInstallRe  = regexp.MustCompile(`pip install ([^;&|]*)`)
	gitCloneRe    = regexp.MustCompile(`git clone .*? (\S+)$`)
	secretMountRe = regexp.MustCompile(`^--mount=type=secret,id=([a-z_]+),required=false$`)
)

// runText is a RUN command with its whitespace (line continuations) collapsed.
func runText(n *parser.Node) string {
	return strings.Join(strings.Fields(strings.Join(words(n), " ")), " ")
}

func goDirective(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(readFile(t, "go.mod"))
	require.NotNil(t, m)
	return m[1]
}

func TestWorkerDockerfileStagesAndPins(t *testing.T) {
	t.Parallel()
	df := parseDockerfile(t, "Dockerfile.worker")
	require.Regexp(t, `^docker/dockerfile:1\.\d+$`, df.syntax, "the Dockerfile frontend is pinned")
	require.Equal(t, []string{"gobuild", "uv", "comfyui", "base", "fetcher", "downloader", "final"}, df.stageNames(),
		"final is last: a plain build makes it")

	require.Regexp(t, `^nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+$`, df.metaArgs["BASE_IMAGE"])
	require.Equal(t, goDirective(t), df.metaArgs["GO_VERSION"], "Go as go.mod says")
	require.Regexp(t, semver, df.metaArgs["UV_VERSION"])
	froms := map[string]string{}
	for _, s := range df.stages {
		froms[s.name] = s.from
	}
	require.Equal(t, map[string]string{
		"gobuild": "golang:${GO_VERSION}", "uv": "ghcr.io/astral-sh/uv:${UV_VERSION}", "comfyui": "${BASE_IMAGE}",
		"base": "comfyui", "fetcher": "${BASE_IMAGE}", "downloader": "fetcher", "final": "comfyui",
	}, froms)

	comfyui := df.stage(t, "comfyui")
	args := comfyui.args()
	for _, name := range []string{"COMFYUI_VERSION", "COMFY_CLI_VERSION", "TORCH_VERSION", "TORCHVISION_VERSION",
		"TORCHAUDIO_VERSION", "GGUF_VERSION", "SENTENCEPIECE_VERSION", "PROTOBUF_VERSION"} {
		require.Regexp(t, semver, args[name], "%s is pinned", name)
	}
	require.Regexp(t, `^[0-9a-f]{40}$`, args["COMFYUI_GGUF_COMMIT"], "ComfyUI-GGUF is pinned by commit")
	require.Regexp(t, `^\d+\.\d+$`, args["CUDA_VERSION_FOR_COMFY"])
	require.Equal(t, "true", args["INSTALL_GGUF_NODES"], "GGUF nodes are installed by default")

	var runs []string
	for _, s := range df.stages {
		for _, n := range s.find("run") {
			runs = append(runs, runText(n))
		}
	}
	all := strings.Join(runs, "\n")
	require.Contains(t, all, `comfy --skip-prompt --workspace /comfyui install --version "${COMFYUI_VERSION}" --nvidia --cuda-version "${CUDA_VERSION_FOR_COMFY}"`,
		"ComfyUI is installed with comfy-cli at the pinned version")
	require.Contains(t, all, `printf 'torch==%s\ntorchvision==%s\ntorchaudio==%s\n'`, "PyTorch is pinned by constraints")
	for _, run := range runs {
		for _, m := range pipInstallRe.FindAllStringSubmatch(run, -1) {
			for _, pkg := range strings.Fields(m[1]) {
				if strings.HasPrefix(pkg, "-") {
					continue
				}
				require.Contains(t, pkg, "==", "%q is not pinned in: %s", pkg, run)
			}
		}
		for _, line := range strings.Split(run, "&&") {
			if m := gitCloneRe.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
				require.Contains(t, run, `checkout --detach "${COMFYUI_GGUF_COMMIT}"`, "a clone is checked out at a pinned commit: %s", run)
			}
		}
	}
	gguf := ""
	for _, run := range runs {
		if strings.Contains(run, "ComfyUI-GGUF") {
			gguf = run
		}
	}
	require.Contains(t, gguf, `if [ "$INSTALL_GGUF_NODES" = "true" ]`)
	require.Contains(t, gguf, "https://github.com/city96/ComfyUI-GGUF")

	// The scripts, the network volume's paths, then the binaries in base
	// and (above the models) in final.
	copies := func(s stage) map[string]string {
		out := map[string]string{}
		for _, n := range s.find("copy") {
			w := words(n)
			for _, src := range w[:len(w)-1] {
				out[src] = w[len(w)-1]
			}
		}
		return out
	}
	scripts := copies(comfyui)
	require.Equal(t, "/usr/local/bin/comfyfleet-entrypoint", scripts["deploy/worker/entrypoint.sh"])
	require.Equal(t, "/usr/local/bin/fetch-model", scripts["deploy/worker/fetch-model.sh"])
	require.Equal(t, "/usr/local/bin/comfy-node-install", scripts["deploy/worker/comfy-node-install.sh"])
	require.Equal(t, "/comfyui/extra_model_paths.yaml", scripts["deploy/worker/extra_model_paths.yaml"])
	for _, name := range []string{"base", "final"} {
		bins := copies(df.stage(t, name))
		for _, b := range []string{"gpuworker", "runpod-adapter", "comfyfleet", "healthcheck"} { // comfyfleet: standalone mode
			require.Equal(t, "/usr/local/bin/", bins["/out/"+b], "%s has %s", name, b)
		}
	}
	// tini is PID 1 and passes SIGTERM to the entrypoint, which orders
	// the drain (no -g: tini signals only its child).
	require.Equal(t, []string{"/usr/bin/tini", "--", "/usr/local/bin/comfyfleet-entrypoint"}, words(comfyui.find("entrypoint")[0]))
	require.Equal(t, []string{"worker"}, words(comfyui.find("cmd")[0]))
	require.Len(t, comfyui.find("healthcheck"), 1)
	var apt string
	for _, n := range comfyui.find("run") {
		if strings.Contains(runText(n), "apt-get install") {
			apt = runText(n)
		}
	}
	for _, pkg := range []string{"tini", "wget", "curl", "git", "ffmpeg"} {
		require.Contains(t, strings.Fields(apt), pkg, "apt installs %s", pkg)
	}
	env := map[string]string{}
	for _, s := range []stage{comfyui, df.stage(t, "final")} {
		for _, n := range s.find("env") {
			w := words(n) // key, value, "=" for each pair
			for i := 0; i+1 < len(w); i += 3 {
				env[w[i]] = w[i+1]
			}
		}
	}
	require.Equal(t, "/comfyui/input", env["COMFYUI_INPUT_DIR"])
	require.Equal(t, "/comfyui/output", env["COMFYUI_OUTPUT_DIR"])
	require.Equal(t, "${MODEL_TYPE}", env["POOL"], "a worker takes its variant's jobs unless POOL says otherwise")
	for typ := range wantModels {
		require.NoError(t, proto.ValidID(typ), "MODEL_TYPE %s is the image's POOL", typ)
	}

	gobuild := strings.Join(slices.Collect(func(yield func(string) bool) {
		for _, n := range df.stage(t, "gobuild").find("run") {
			if !yield(runText(n)) {
				return
			}
		}
	}), "\n")
	require.Contains(t, gobuild, "CGO_ENABLED=0")
	require.Contains(t, gobuild, "./cmd/gpuworker ./cmd/runpod-adapter ./cmd/comfyfleet ./deploy/healthcheck")

	final := df.stage(t, "final")
	require.Equal(t, []string{"--from=downloader"}, final.find("copy")[0].Flags)
	require.Equal(t, []string{"/comfyui/models", "/comfyui/models"}, words(final.find("copy")[0]))
	require.Equal(t, []string{"--from=gobuild"}, final.find("copy")[1].Flags, "the binaries come last, above the models")
	require.Equal(t, df.stage(t, "downloader").args()["MODEL_TYPE"], final.args()["MODEL_TYPE"])
	require.Equal(t, "flux1-dev-fp8", final.args()["MODEL_TYPE"], "the default image is upstream's default, flux1-dev-fp8")
}

// TestWorkerDockerfileDownloaderIsIndependentOfTheCode: nothing the
// downloader stage starts from or copies reads the Go code or ComfyUI, so
// a code change or a ComfyUI upgrade never downloads a model again.
func TestWorkerDockerfileDownloaderIsIndependentOfTheCode(t *testing.T) {
	t.Parallel()
	df := parseDockerfile(t, "Dockerfile.worker")
	byName := map[string]stage{}
	for _, s := range df.stages {
		byName[s.name] = s
	}
	// ancestry: the stages a stage is built FROM or copies --from, and theirs.
	var ancestry func(name string, seen map[string]bool)
	ancestry = func(name string, seen map[string]bool) {
		s, ok := byName[name]
		if !ok || seen[name] {
			return
		}
		seen[name] = true
		ancestry(s.from, seen)
		for _, n := range append(s.find("copy"), s.find("add")...) {
			for _, f := range n.Flags {
				if from, ok := strings.CutPrefix(f, "--from="); ok {
					ancestry(from, seen)
				}
			}
		}
	}
	seen := map[string]bool{}
	ancestry("downloader", seen)
	require.Equal(t, map[string]bool{"downloader": true, "fetcher": true}, seen, "the downloader's ancestry")
	require.Equal(t, "${BASE_IMAGE}", byName["fetcher"].from)
	for name := range seen {
		for _, n := range append(byName[name].find("copy"), byName[name].find("add")...) {
			require.Empty(t, n.Flags, "%s copies from another stage: %v", name, n.Flags)
			w := words(n)
			require.Equal(t, []string{"deploy/worker/fetch-model.sh", "/usr/local/bin/fetch-model"}, w,
				"%s copies only fetch-model (not cmd/, internal/, go.mod, ...)", name)
		}
	}

	// The other way round: the binaries are in no stage the models depend on.
	all := map[string]bool{}
	ancestry("final", all)
	require.True(t, all["gobuild"] && all["downloader"], "final has the binaries and the models")
}

// TestWorkerDockerfileModelTypes: each MODEL_TYPE branch downloads the
// files of reference/worker-comfyui.md §5.3 into their folders.
func TestWorkerDockerfileModelTypes(t *testing.T) {
	t.Parallel()
	dl := parseDockerfile(t, "Dockerfile.worker").stage(t, "downloader")
	got, validated := variantModels(t, dl)
	require.ElementsMatch(t, slices.Collect(maps.Keys(wantModels)), slices.Collect(maps.Keys(got)), "MODEL_TYPE branches")
	for typ, want := range wantModels {
		require.Equal(t, want, got[typ], "MODEL_TYPE=%s", typ)
	}

	// An unknown MODEL_TYPE fails the build instead of making an empty image.
	require.NotEmpty(t, validated)
	for typ := range wantModels {
		require.Contains(t, validated, typ)
	}
	listed := regexp.MustCompile(`\n?\s*([a-z0-9|-]+)\) ;;`).FindStringSubmatch(validated)
	require.NotNil(t, listed)
	require.ElementsMatch(t, slices.Collect(maps.Keys(wantModels)), strings.Split(listed[1], "|"))

	// Every folder the branches write to exists even when no branch runs,
	// so `COPY --from=downloader /comfyui/models` always works.
	for _, files := range wantModels {
		for _, f := range files {
			dir := f.path[:strings.LastIndex(f.path, "/")]
			require.Contains(t, validated, " "+dir, "%s is created up front", dir)
		}
	}

	// jawi-vision needs its LoRA's URL; CivitAI downloads need a file name.
	all := ""
	for _, n := range dl.find("run") {
		all += runText(n) + "\n"
	}
	require.Contains(t, all, `if [ -z "$JAWI_VISION_LORA_URL" ]; then echo "MODEL_TYPE=jawi-vision needs`)
	for _, i := range []string{"1", "2"} {
		require.Contains(t, all, `if [ -n "$CIVITAI_DOWNLOAD_URL_`+i+`" ]; then fetch-model --civitai "${CIVITAI_FILENAME_`+i+`:?`)
	}
	args := dl.args()
	for _, name := range []string{"CIVITAI_DOWNLOAD_URL_1", "CIVITAI_FILENAME_1", "CIVITAI_DOWNLOAD_URL_2", "CIVITAI_FILENAME_2", "JAWI_VISION_LORA_URL", "JAWI_VISION_LORA_SHA256"} {
		v, ok := args[name]
		require.True(t, ok, "%s is a build arg", name)
		require.Empty(t, v, "%s is optional", name)
	}
}

// TestWorkerDockerfileKeepsTokensSecret: tokens are BuildKit secrets,
// never ARG or ENV, so they are in no layer and no `docker history`.
func TestWorkerDockerfileKeepsTokensSecret(t *testing.T) {
	t.Parallel()
	for _, file := range [][]string{{"Dockerfile.worker"}, {"deploy", "Dockerfile"}} {
		df := parseDockerfile(t, file...)
		for name := range df.metaArgs {
			require.False(t, secretName.MatchString(name), "%v: ARG %s", file, name)
		}
		for _, s := range df.stages {
			for name := range s.args() {
				require.False(t, secretName.MatchString(name), "%v: ARG %s", file, name)
			}
			for _, n := range s.find("env") {
				for _, w := range words(n) {
					require.False(t, secretName.MatchString(strings.SplitN(w, "=", 2)[0]), "%v: ENV %s", file, w)
				}
			}
			for _, n := range s.find("run") {
				run := runText(n)
				var mounted []string
				for _, f := range n.Flags {
					if m := secretMountRe.FindStringSubmatch(f); m != nil {
						mounted = append(mounted, m[1])
					}
				}
				if strings.Contains(run, "fetch-model --hf") {
					require.Contains(t, mounted, "hf_token", run)
				}
				if strings.Contains(run, "fetch-model --civitai") {
					require.Contains(t, mounted, "civitai_token", run)
				}
				require.NotContains(t, run, "Authorization", "tokens are sent by fetch-model only")
			}
		}
	}
	src := readFile(t, "Dockerfile.worker")
	require.NotContains(t, src, "ARG HUGGINGFACE_ACCESS_TOKEN", "upstream's token build arg is gone")
}

func TestControlPlaneDockerfile(t *testing.T) {
	t.Parallel()
	df := parseDockerfile(t, "deploy", "Dockerfile")
	require.Regexp(t, `^docker/dockerfile:1\.\d+$`, df.syntax)
	require.Equal(t, goDirective(t), df.metaArgs["GO_VERSION"])

	cmds, err := os.ReadDir(repoPath("cmd"))
	require.NoError(t, err)
	var binaries []string
	for _, e := range cmds {
		if e.IsDir() {
			binaries = append(binaries, e.Name())
		}
	}
	require.ElementsMatch(t, append([]string{"build", "runtime"}, binaries...), df.stageNames(), "one image per binary in cmd/")

	build := df.stage(t, "build")
	require.Equal(t, "golang:${GO_VERSION}", build.from)
	var buildRun string
	for _, n := range build.find("run") {
		if strings.Contains(runText(n), "go build") {
			buildRun = runText(n)
		}
	}
	require.Contains(t, buildRun, "CGO_ENABLED=0", "static binaries for an empty base")
	require.Contains(t, buildRun, "-trimpath")
	for _, b := range binaries {
		require.Contains(t, buildRun, "./cmd/"+b+" ", "%s is built", b)
	}
	require.Contains(t, buildRun, "./deploy/healthcheck")

	runtime := df.stage(t, "runtime")
	require.Equal(t, "scratch", runtime.from, "small: nothing but the binary")
	require.Equal(t, []string{"65532:65532"}, words(runtime.find("user")[0]), "non-root")
	for _, b := range binaries {
		s := df.stage(t, b)
		require.Equal(t, "runtime", s.from, b)
		require.Empty(t, s.find("user"), "%s keeps the non-root user", b)
		require.Equal(t, []string{"/out/" + b, "/usr/local/bin/" + b}, words(s.find("copy")[0]), b)
		require.Equal(t, []string{"/usr/local/bin/" + b}, words(s.find("entrypoint")[0]), b)
		if b != "comfyfleet" { // the CLI runs and exits
			require.Len(t, s.find("healthcheck"), 1, b)
		}
	}
}

// dockerignored reports whether .dockerignore keeps path out of the build
// context (the last matching pattern wins; "!" re-includes).
func dockerignored(t *testing.T, path string) bool {
	t.Helper()
	ignored := false
	for _, line := range strings.Split(readFile(t, ".dockerignore"), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		neg := strings.HasPrefix(line, "!")
		pat := strings.TrimSuffix(strings.TrimPrefix(line, "!"), "/")
		re := regexp.QuoteMeta(pat)
		re = strings.ReplaceAll(re, `\*\*/`, `(.*/)?`)
		re = strings.ReplaceAll(re, `\*`, `[^/]*`)
		if regexp.MustCompile(`^` + re + `(/.*)?$`).MatchString(path) {
			ignored = !neg
		}
	}
	return ignored
}

// TestBuildContext: what the Dockerfiles copy is in the build context, and
// local clutter (binaries, .env, models, tests) is not.
func TestBuildContext(t *testing.T) {
	t.Parallel()
	for _, file := range [][]string{{"Dockerfile.worker"}, {"deploy", "Dockerfile"}} {
		for _, s := range parseDockerfile(t, file...).stages {
			for _, n := range append(s.find("copy"), s.find("add")...) {
				if len(n.Flags) > 0 && strings.HasPrefix(n.Flags[0], "--from=") {
					continue
				}
				w := words(n)
				for _, src := range w[:len(w)-1] {
					src = strings.TrimSuffix(src, "/")
					_, err := os.Stat(repoPath(src))
					require.NoError(t, err, "%v copies %s", file, src)
					require.False(t, dockerignored(t, src), "%v copies %s, which .dockerignore leaves out", file, src)
				}
			}
		}
	}
	for _, p := range []string{"comfyfleet", "comfysim.test", ".git", ".comfyfleet", "bin/dispatcher", "deploy/compose/.env",
		"deploy/compose/models/checkpoints/x.safetensors", "deploy/compose/secrets/hf_token", "internal/worker/worker_test.go", "internal/status/testdata/x", "docs/deployment.md"} {
		require.True(t, dockerignored(t, p), "%s is kept out of the build context", p)
	}
	for _, p := range []string{"go.mod", "internal/status/transition.lua", "deploy/worker/entrypoint.sh", "cmd/gpuworker/main.go"} {
		require.False(t, dockerignored(t, p), p)
	}
}

// variantModels reads the downloader stage's MODEL_TYPE branches: the files
// each bakes in ("base" bakes none) and the RUN that validates MODEL_TYPE.
func variantModels(t *testing.T, dl stage) (got map[string][]model, validated string) {
	t.Helper()
	got = map[string][]model{}
	for _, n := range dl.find("run") {
		run := runText(n)
		if strings.Contains(run, `case "$MODEL_TYPE" in`) {
			validated = run
		}
		m := branchRe.FindStringSubmatch(run)
		if m == nil {
			continue
		}
		typ := m[1]
		require.NotContains(t, got, typ, "one branch per MODEL_TYPE")
		require.Equal(t, []string{"--mount=type=secret,id=hf_token,required=false"}, n.Flags, "%s reads the HF token as a build secret", typ)
		for _, f := range fetchRe.FindAllStringSubmatch(run, -1) {
			require.Equal(t, "--hf ", f[1], "%s: Hugging Face downloads send the hf_token secret", typ)
			mm := model{path: f[2]}
			if u := hfURLRe.FindStringSubmatch(f[3]); u != nil {
				mm.repo = u[1]
			} else {
				require.Equal(t, `"$JAWI_VISION_LORA_URL"`, f[3], "%s: %s comes from an unexpected URL", typ, f[2])
			}
			got[typ] = append(got[typ], mm)
		}
	}
	got["base"] = nil
	return got, validated
}
