package deploy_test

import (
	"maps"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
)

// docTable returns a table of docs/configuration.md by its marker name.
func docTable(t *testing.T, name string) []configdoc.Row {
	t.Helper()
	tables, err := configdoc.Tables([]byte(readFile(t, "docs", "configuration.md")))
	require.NoError(t, err)
	rows, ok := tables[name]
	require.True(t, ok, "docs/configuration.md has no table <!-- settings: %s -->", name)
	for _, r := range rows {
		require.NotEmpty(t, r.Meaning, "%s: %s has no meaning", name, r.Env)
	}
	return rows
}

// docSection returns the text of docs/configuration.md from a heading to
// the next heading of the same level.
func docSection(t *testing.T, heading string) string {
	t.Helper()
	doc := readFile(t, "docs", "configuration.md")
	i := strings.Index(doc, "\n"+heading)
	require.GreaterOrEqual(t, i, 0, "no section %q", heading)
	rest := doc[i+1:]
	level := heading[:strings.Index(heading, " ")+1]
	if j := strings.Index(rest[len(heading):], "\n"+level); j >= 0 {
		rest = rest[:len(heading)+j]
	}
	return rest
}

// buildArgs returns a Dockerfile's ARGs with their defaults, without the
// ones BuildKit sets (TARGETOS, ...). An ARG declared twice must keep one
// default.
func buildArgs(t *testing.T, parts ...string) map[string]string {
	t.Helper()
	df := parseDockerfile(t, parts...)
	out := maps.Clone(df.metaArgs)
	for _, s := range df.stages {
		for k, v := range s.args() {
			if strings.HasPrefix(k, "TARGET") || strings.HasPrefix(k, "BUILD") {
				continue
			}
			if _, inMeta := df.metaArgs[k]; inMeta && v == "" {
				continue // re-declared to use the global default
			}
			if prev, ok := out[k]; ok {
				require.Equal(t, prev, v, "%v: ARG %s has two defaults", parts, k)
			}
			out[k] = v
		}
	}
	return out
}

func TestBuildArgsAreDocumented(t *testing.T) {
	t.Parallel()
	for table, file := range map[string][]string{
		"worker-build-args":        {"Dockerfile.worker"},
		"control-plane-build-args": {"deploy", "Dockerfile"},
	} {
		got := map[string]string{}
		for _, r := range docTable(t, table) {
			got[r.Env] = r.Default
		}
		require.Equal(t, buildArgs(t, file...), got, "docs/configuration.md <!-- settings: %s --> against %v", table, file)
	}
	section := docSection(t, "### Build arguments of Dockerfile.worker")
	for _, id := range []string{"hf_token", "civitai_token"} {
		require.Contains(t, readFile(t, "Dockerfile.worker"), "id="+id)
		require.Contains(t, section, "--secret id="+id)
	}
}

// The deployment guide and its Indonesian translation.
const (
	guide      = "deployment.md"
	guideIndon = "deployment_id.md"
)

// codeBlocks returns the fenced code blocks of a markdown file.
func codeBlocks(doc string) []string {
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			if in {
				blocks = append(blocks, strings.Join(cur, "\n"))
				cur = nil
			}
			in = !in
			continue
		}
		if in {
			cur = append(cur, line)
		}
	}
	return blocks
}

// headings returns the levels of a markdown file's headings, in order.
func headings(doc string) []string {
	var out []string
	in := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			in = !in
		}
		if !in && strings.HasPrefix(line, "#") {
			level, _, _ := strings.Cut(line, " ")
			out = append(out, level)
		}
	}
	return out
}

// TestDeploymentGuides: the guide covers what a user needs, and the
// Indonesian translation has the same sections and the same commands, so
// one cannot be changed without the other.
func TestDeploymentGuides(t *testing.T) {
	t.Parallel()
	en := readFile(t, "docs", guide)
	id := readFile(t, "docs", guideIndon)
	for typ := range wantModels {
		require.Contains(t, en, "`"+typ+"`", "the guide explains MODEL_TYPE %s", typ)
	}
	for _, want := range []string{
		"docker compose --profile sim up", "docker compose --profile gpu up", "./gpus.sh", "RUNPOD_WEBHOOK_GET_JOB",
		"/runpod-volume/models/", "diffusion_models", "text_encoders", "audio_encoders", "--secret id=hf_token",
		"INSTALL_GGUF_NODES", "CIVITAI_DOWNLOAD_URL_1", "BUCKET_ENDPOINT_URL", "NATS_URL", "REDIS_URL",
		"deploy/compose/.env.example", "configuration.md", "deployment_id.md",
	} {
		require.Contains(t, en, want, "docs/%s", guide)
	}
	require.Contains(t, id, "deployment.md")
	require.Equal(t, headings(en), headings(id), "the translation has the guide's sections")
	require.Equal(t, codeBlocks(en), codeBlocks(id), "the translation has the guide's commands, unchanged")
	require.NotEmpty(t, codeBlocks(en))

	// Every folder of extra_model_paths.yaml is in the guide's volume layout.
	var paths map[string]map[string]string
	require.NoError(t, yaml.Unmarshal([]byte(readFile(t, "deploy", "worker", "extra_model_paths.yaml")), &paths))
	for key := range paths["runpod_worker_comfy"] {
		if key != "base_path" {
			require.Contains(t, en, key+"/", "the guide's volume layout shows %s/", key)
		}
	}
}

// TestExtraModelPaths: the network volume maps worker-comfyui's folders and
// the newer ones it misses (worker-comfyui#165).
func TestExtraModelPaths(t *testing.T) {
	t.Parallel()
	var paths map[string]map[string]string
	require.NoError(t, yaml.Unmarshal([]byte(readFile(t, "deploy", "worker", "extra_model_paths.yaml")), &paths))
	require.Len(t, paths, 1)
	section := paths["runpod_worker_comfy"]
	require.Equal(t, "/runpod-volume", section["base_path"])
	for _, key := range []string{
		// worker-comfyui's
		"checkpoints", "clip", "clip_vision", "configs", "controlnet", "embeddings", "loras", "upscale_models", "vae", "unet",
		// worker-comfyui#165, and the model patches z-image-turbo uses
		"diffusion_models", "text_encoders", "audio_encoders", "model_patches",
	} {
		require.Equal(t, "models/"+key+"/", section[key], key)
	}
	for key, v := range section {
		if key != "base_path" {
			require.Equal(t, "models/"+key+"/", v, key)
		}
	}
}
