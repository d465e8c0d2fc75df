package deploy_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/proto"
)

// The RunPod Hub's files (.runpod/): hub.json is the listing (the
// endpoint's hardware and the variables a user may set, with their
// defaults), tests.json the test the Hub runs on each release, and
// Dockerfile the image it builds (Dockerfile.worker). The Hub itself
// cannot be reached from here; these tests check what can be: that every
// variable is one the image reads, with the image's own default, that the
// CUDA versions fit the image's base, and that the Hub's test job runs to
// COMPLETED through standalone mode, as on a Hub endpoint.

type hubEnv struct {
	Key   string `json:"key"`
	Input struct {
		Name        string `json:"name"`
		Type        string `json:"type"`
		Description string `json:"description"`
		Default     any    `json:"default"`
		Advanced    *bool  `json:"advanced"`
	} `json:"input"`
}

type hubManifest struct {
	Title       string `json:"title"`
	Description string `json:"description"`
	Type        string `json:"type"`
	Category    string `json:"category"`
	Config      struct {
		RunsOn              string   `json:"runsOn"`
		ContainerDiskInGb   int      `json:"containerDiskInGb"`
		GPUIDs              string   `json:"gpuIds"`
		GPUCount            int      `json:"gpuCount"`
		AllowedCudaVersions []string `json:"allowedCudaVersions"`
		Env                 []hubEnv `json:"env"`
	} `json:"config"`
}

type hubTests struct {
	Tests []struct {
		Name    string          `json:"name"`
		Input   json.RawMessage `json:"input"`
		Timeout int             `json:"timeout"` // milliseconds
	} `json:"tests"`
	Config struct {
		GPUTypeID string `json:"gpuTypeId"`
		GPUCount  int    `json:"gpuCount"`
		Env       []struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		} `json:"env"`
		AllowedCudaVersions []string `json:"allowedCudaVersions"`
	} `json:"config"`
}

// decodeStrict decodes a Hub file, refusing fields the types above do not
// know (a misspelt key would be ignored by the Hub).
func decodeStrict(t *testing.T, v any, parts ...string) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(readFile(t, parts...)))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(v), filepath.Join(parts...))
}

// helpDefaults reads the settings of `comfyfleet standalone --help`: each
// variable with its default ("" when it has none).
func helpDefaults(t *testing.T) map[string]string {
	t.Helper()
	b, err := exec.Command(bin(t, "comfyfleet"), "standalone", "--help").CombinedOutput()
	out := string(b)
	require.NoError(t, err, "%s", out)
	defaults := map[string]string{}
	re := regexp.MustCompile(`(?m)^  --\S+  \(env ([A-Z][A-Z0-9_]*)\)\n\s+(.*)$`)
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		def := ""
		if i := strings.LastIndex(m[2], "(default "); i >= 0 && strings.HasSuffix(m[2], ")") {
			def = m[2][i+len("(default ") : len(m[2])-1]
		}
		defaults[m[1]] = def
	}
	require.NotEmpty(t, defaults)
	return defaults
}

// baseCUDA is the CUDA version (major.minor) of Dockerfile.worker's
// default BASE_IMAGE.
func baseCUDA(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^ARG BASE_IMAGE=nvidia/cuda:(\d+\.\d+)\.\d+-`).FindStringSubmatch(readFile(t, "Dockerfile.worker"))
	require.NotNil(t, m, "Dockerfile.worker's BASE_IMAGE is an nvidia/cuda image")
	return m[1]
}

// cudaAtLeast reports whether version v (major.minor) is min or newer.
func cudaAtLeast(t *testing.T, v, min string) bool {
	t.Helper()
	parse := func(s string) (int, int) {
		major, minor, ok := strings.Cut(s, ".")
		require.True(t, ok, "CUDA version %q", s)
		a, err1 := strconv.Atoi(major)
		b, err2 := strconv.Atoi(minor)
		require.NoError(t, err1, s)
		require.NoError(t, err2, s)
		return a, b
	}
	a, b := parse(v)
	c, d := parse(min)
	return a > c || a == c && b >= d
}

func TestHubManifest(t *testing.T) {
	t.Parallel()
	var hub hubManifest
	decodeStrict(t, &hub, ".runpod", "hub.json")
	require.NotEmpty(t, hub.Title)
	require.NotEmpty(t, hub.Description)
	require.Equal(t, "serverless", hub.Type)
	require.Equal(t, "GPU", hub.Config.RunsOn)
	require.Equal(t, 1, hub.Config.GPUCount, "one ComfyUI per GPU")
	require.NotEmpty(t, hub.Config.GPUIDs)
	require.GreaterOrEqual(t, hub.Config.ContainerDiskInGb, 20, "the standalone stack keeps its queue and outputs on the container disk")

	// A host's driver must run the image's CUDA: every version listed is
	// the base image's or newer, and the base image's is listed (an older
	// list blocks new GPUs, as worker-comfyui's did: its issue #124).
	cuda := baseCUDA(t)
	require.Contains(t, hub.Config.AllowedCudaVersions, cuda)
	for _, v := range hub.Config.AllowedCudaVersions {
		require.True(t, cudaAtLeast(t, v, cuda), "allowedCudaVersions lists %s, older than the image's CUDA %s", v, cuda)
	}

	// Every variable is one the image reads, with the image's default.
	defaults := helpDefaults(t)
	script := entrypointVariables(t)
	seen := map[string]bool{}
	for _, e := range hub.Config.Env {
		in := e.Input
		require.False(t, seen[e.Key], "%s is listed twice", e.Key)
		seen[e.Key] = true
		require.NotEmpty(t, in.Name, e.Key)
		require.NotEmpty(t, in.Description, e.Key)
		require.NotNil(t, in.Advanced, "%s: advanced is set", e.Key)
		want, ok := defaults[e.Key]
		if !ok {
			want, ok = script[e.Key]
		}
		require.True(t, ok, "%s is neither a setting of comfyfleet standalone nor of the entrypoint", e.Key)
		switch in.Type {
		case "string":
			got, isString := in.Default.(string)
			require.True(t, isString, "%s: a string's default is a string", e.Key)
			if d, err := time.ParseDuration(want); err == nil && want != "" {
				gd, err := time.ParseDuration(got)
				require.NoError(t, err, "%s: the default is a duration", e.Key)
				require.Equal(t, d, gd, "%s: the image's default", e.Key)
				continue
			}
			require.Equal(t, want, got, "%s: the image's default", e.Key)
		case "number":
			got, isNumber := in.Default.(float64)
			require.True(t, isNumber, "%s: a number's default is a number", e.Key)
			require.Equal(t, want, strconv.FormatFloat(got, 'f', -1, 64), "%s: the image's default", e.Key)
		case "boolean":
			got, isBool := in.Default.(bool)
			require.True(t, isBool, "%s: a boolean's default is a boolean", e.Key)
			require.Equal(t, want, strconv.FormatBool(got), "%s: the image's default", e.Key)
		default:
			t.Fatalf("%s: type %q, want string, number or boolean", e.Key, in.Type)
		}
		if secretName.MatchString(e.Key) {
			require.Empty(t, in.Default, "%s: a secret has no default", e.Key)
		}
	}
	// What a worker-comfyui user sets on its Hub listing is there too.
	for _, k := range []string{"COMFY_ORG_API_KEY", "BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY",
		"COMFY_LOG_LEVEL", "WEBSOCKET_RECONNECT_ATTEMPTS", "WEBSOCKET_RECONNECT_DELAY_S", "REFRESH_WORKER"} {
		require.True(t, seen[k], "hub.json offers %s, as worker-comfyui's listing does", k)
	}

	// The Hub builds .runpod/Dockerfile from the repository: the worker image.
	link, err := os.Readlink(repoPath(".runpod", "Dockerfile"))
	require.NoError(t, err, ".runpod/Dockerfile is a link")
	require.Equal(t, "../Dockerfile.worker", link)
}

// TestHubTestRunsInStandaloneMode: the Hub's test (tests.json) is the
// example of the image's default variant, and it runs to COMPLETED
// through the image's standalone mode with hub.json's defaults set as the
// Hub sets them, taken from a fake RunPod platform.
func TestHubTestRunsInStandaloneMode(t *testing.T) {
	t.Parallel()
	var hub hubManifest
	decodeStrict(t, &hub, ".runpod", "hub.json")
	var tests hubTests
	decodeStrict(t, &tests, ".runpod", "tests.json")
	require.Len(t, tests.Tests, 1)
	test := tests.Tests[0]
	require.NotEmpty(t, test.Name)
	require.GreaterOrEqual(t, test.Timeout, 120_000, "ms: a cold start loads the model first")
	require.NotEmpty(t, tests.Config.GPUTypeID)
	require.Equal(t, 1, tests.Config.GPUCount)
	for _, v := range tests.Config.AllowedCudaVersions {
		require.True(t, slices.Contains(hub.Config.AllowedCudaVersions, v), "tests.json's CUDA %s is one hub.json allows", v)
	}

	variant := regexp.MustCompile(`(?m)^ARG MODEL_TYPE=(.*)$`).FindStringSubmatch(readFile(t, "Dockerfile.worker"))
	require.NotNil(t, variant)
	var example struct {
		Input json.RawMessage `json:"input"`
	}
	require.NoError(t, json.Unmarshal([]byte(readFile(t, "examples", variant[1]+".json")), &example))
	require.JSONEq(t, string(example.Input), string(test.Input), "tests.json runs examples/%s.json, the default variant's", variant[1])
	_, err := proto.DecodeInput(test.Input)
	require.NoError(t, err)

	env := map[string]string{}
	for _, e := range hub.Config.Env {
		switch d := e.Input.Default.(type) {
		case string:
			env[e.Key] = d
		case float64:
			env[e.Key] = strconv.FormatFloat(d, 'f', -1, 64)
		case bool:
			env[e.Key] = strconv.FormatBool(d)
		}
	}
	for _, e := range tests.Config.Env {
		env[e.Key] = e.Value
	}
	plat := runpodtest.StartPlatform(t)
	startImage(t, plat, env)
	// A smaller picture than the Hub's: PNGs of a megapixel take long
	// under the race detector, and the size is not what is tested.
	input := bytes.ReplaceAll(test.Input, []byte(`"width": 1024, "height": 1024`), []byte(`"width": 256, "height": 256`))
	require.NotEqual(t, test.Input, input, "the example is 1024×1024")
	plat.AddJob(map[string]any{"id": "hub-1", "input": json.RawMessage(input)})
	requireImageAnswer(t, jobDone(t, plat, "hub-1"), "base64", variant[1])
}
