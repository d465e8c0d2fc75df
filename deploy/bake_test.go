package deploy_test

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// bakeBlock is one top-level block of docker-bake.hcl: kind ("target",
// "group", "variable"), its label and its body.
type bakeBlock struct{ kind, name, body string }

var (
	bakeBlockRe   = regexp.MustCompile(`(?m)^(target|group|variable) "([^"]+)" \{$`)
	bakeStringsRe = regexp.MustCompile(`"([^"]*)"`)
)

// parseBake reads docker-bake.hcl's top-level blocks. It checks the shape
// this file keeps (labelled blocks closed by a "}" at the start of a
// line), which is enough to test it without an HCL parser.
func parseBake(t *testing.T) []bakeBlock {
	t.Helper()
	src := readFile(t, "docker-bake.hcl")
	var blocks []bakeBlock
	for _, loc := range bakeBlockRe.FindAllStringSubmatchIndex(src, -1) {
		rest := src[loc[1]:]
		end := strings.Index(rest, "\n}")
		require.GreaterOrEqual(t, end, 0, "docker-bake.hcl: block %s is not closed", src[loc[4]:loc[5]])
		body := rest[:end]
		require.Equal(t, strings.Count(body, "{"), strings.Count(body, "}"), "docker-bake.hcl: braces of %s", src[loc[4]:loc[5]])
		blocks = append(blocks, bakeBlock{kind: src[loc[2]:loc[3]], name: src[loc[4]:loc[5]], body: body})
	}
	require.NotEmpty(t, blocks)
	return blocks
}

// attr returns the strings of attribute name in a block's body (one for a
// string, all for a list).
func (b bakeBlock) attr(name string) []string {
	re := regexp.MustCompile(`(?ms)^\s*` + regexp.QuoteMeta(name) + `\s*=\s*(\[.*?\]|\{.*?\}|"[^"]*")`)
	m := re.FindStringSubmatch(b.body)
	if m == nil {
		return nil
	}
	var out []string
	for _, s := range bakeStringsRe.FindAllStringSubmatch(m[1], -1) {
		out = append(out, s[1])
	}
	return out
}

// TestDockerBake: docker-bake.hcl has a target per MODEL_TYPE of
// Dockerfile.worker, each building the final stage with its MODEL_TYPE, its
// own tag and the two token secrets, and the default group builds them all.
func TestDockerBake(t *testing.T) {
	t.Parallel()
	_, validated := variantModels(t, parseDockerfile(t, "Dockerfile.worker").stage(t, "downloader"))
	listed := regexp.MustCompile(`\n?\s*([a-z0-9|-]+)\) ;;`).FindStringSubmatch(validated)
	require.NotNil(t, listed)
	variants := strings.Split(listed[1], "|")

	targets := map[string]bakeBlock{}
	var group bakeBlock
	vars := map[string]bool{}
	for _, b := range parseBake(t) {
		switch b.kind {
		case "target":
			targets[b.name] = b
		case "group":
			require.Equal(t, "default", b.name)
			group = b
		case "variable":
			vars[b.name] = true
		}
	}
	require.ElementsMatch(t, variants, group.attr("targets"), "the default group builds every MODEL_TYPE")

	common, ok := targets["_common"]
	require.True(t, ok)
	require.Equal(t, []string{"."}, common.attr("context"))
	require.Equal(t, []string{"Dockerfile.worker"}, common.attr("dockerfile"))
	require.Equal(t, []string{"final"}, common.attr("target"))
	require.ElementsMatch(t, []string{"id=hf_token,env=HUGGINGFACE_ACCESS_TOKEN", "id=civitai_token,env=CIVITAI_ACCESS_TOKEN"}, common.attr("secret"))
	require.NotContains(t, common.body, "args", "tokens and variants are not common build args")

	var names []string
	for name, b := range targets {
		if strings.HasPrefix(name, "_") {
			continue
		}
		names = append(names, name)
		require.Equal(t, []string{"_common"}, b.attr("inherits"), name)
		require.Regexp(t, `\bMODEL_TYPE\s*=\s*"`+regexp.QuoteMeta(name)+`"`, b.body, "target %s builds MODEL_TYPE=%s", name, name)
		require.Contains(t, b.attr("tags"), "${REGISTRY}/worker:${TAG}-"+name, name)
		for _, arg := range regexp.MustCompile(`(?m)(?:^|\{)\s*([A-Z_0-9]+)\s*=`).FindAllStringSubmatch(b.body, -1) {
			require.Contains(t, buildArgs(t, "Dockerfile.worker"), arg[1], "%s: build arg %s", name, arg[1])
			require.False(t, secretName.MatchString(arg[1]), "%s: %s looks like a secret", name, arg[1])
		}
		for _, ref := range regexp.MustCompile(`\$\{([A-Z_0-9]+)\}`).FindAllStringSubmatch(b.body, -1) {
			require.True(t, vars[ref[1]], "%s uses ${%s}, which is no variable", name, ref[1])
		}
	}
	slices.Sort(names)
	slices.Sort(variants)
	require.Equal(t, variants, names, "one target per MODEL_TYPE")
	require.Contains(t, targets["jawi-vision"].body, `JAWI_VISION_LORA_URL    = "${JAWI_VISION_LORA_URL}"`)
}
