package deploy_test

import (
	"context"
	"maps"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
)

// The services of compose.yaml and the profile each belongs to ("" = always).
var wantServices = map[string]string{
	"nats": "", "redis": "", "s3": "", "dispatcher": "", "runpod-adapter": "",
	"comfysim-1": "sim", "gpuworker-sim1": "sim", "comfysim-2": "sim", "gpuworker-sim2": "sim",
	"comfyui-gpu0": "gpu", "gpuworker-gpu0": "gpu", "comfyui-gpu1": "gpu", "gpuworker-gpu1": "gpu",
	"prometheus": "observability", "grafana": "observability",
	"nats-2": "cluster", "nats-3": "cluster",
}

// pendingSettings are worker settings compose passes before the binaries
// bind them: the S3 output settings, added to gpuworker in parallel work.
var pendingSettings = map[string]bool{
	"BUCKET_ENDPOINT_URL": true, "BUCKET_ACCESS_KEY_ID": true, "BUCKET_SECRET_ACCESS_KEY": true,
	"BUCKET_NAME": true, "BUCKET_REGION": true, "BUCKET_PREFIX": true,
}

func allProfiles(t *testing.T) *types.Project {
	t.Helper()
	return loadCompose(t, composeFile(), "gpu", "sim", "observability", "cluster")
}

func TestComposeServicesAndProfiles(t *testing.T) {
	t.Parallel()
	p := allProfiles(t)
	require.ElementsMatch(t, slices.Collect(maps.Keys(wantServices)), p.ServiceNames())
	for name, s := range p.Services {
		if want := wantServices[name]; want == "" {
			require.Empty(t, s.Profiles, name)
		} else {
			require.Equal(t, []string{want}, s.Profiles, name)
		}
		require.NotEmpty(t, s.Image, name)
		require.Equal(t, "unless-stopped", s.Restart, name)
		require.NotNil(t, s.Logging, "%s: logs are rotated", name)
	}

	// Without a .env every variable has its default.
	opts, err := cli.NewProjectOptions([]string{composeFile()}, cli.WithWorkingDirectory(filepath.Dir(composeFile())),
		cli.WithEnv(nil), cli.WithProfiles([]string{"gpu", "sim", "observability", "cluster"}), cli.WithName("comfyfleet"))
	require.NoError(t, err)
	bare, err := opts.LoadProject(context.Background())
	require.NoError(t, err, "compose.yaml loads without a .env")
	require.ElementsMatch(t, p.ServiceNames(), bare.ServiceNames())

	// Without a profile only the control plane runs; each profile adds its pairs.
	for profile, want := range map[string][]string{
		"":        {"nats", "redis", "s3", "dispatcher", "runpod-adapter"},
		"sim":     {"nats", "redis", "s3", "dispatcher", "runpod-adapter", "comfysim-1", "gpuworker-sim1", "comfysim-2", "gpuworker-sim2"},
		"gpu":     {"nats", "redis", "s3", "dispatcher", "runpod-adapter", "comfyui-gpu0", "gpuworker-gpu0", "comfyui-gpu1", "gpuworker-gpu1"},
		"cluster": {"nats", "nats-2", "nats-3", "redis", "s3", "dispatcher", "runpod-adapter"},
	} {
		var profiles []string
		if profile != "" {
			profiles = []string{profile}
		}
		require.ElementsMatch(t, want, loadCompose(t, composeFile(), profiles...).ServiceNames(), "profile %q", profile)
	}

	for name, s := range p.Services {
		want := 1
		if name == "dispatcher" {
			want = 2 // never a single point of failure
		}
		require.Equal(t, want, s.GetScale(), name)
	}
	ports := p.Services["runpod-adapter"].Ports
	require.Len(t, ports, 1)
	require.Equal(t, uint32(8000), ports[0].Target)
	require.Equal(t, "8000", ports[0].Published)
	require.Equal(t, "127.0.0.1", ports[0].HostIP, "the API is published on loopback until .env gives it keys and an address")
	for _, name := range []string{"nats", "redis", "s3"} {
		for _, port := range p.Services[name].Ports {
			require.Equal(t, "127.0.0.1", port.HostIP, "%s is published on loopback only by default", name)
		}
	}
}

func TestComposeHealthChecksAndStartOrder(t *testing.T) {
	t.Parallel()
	p := allProfiles(t)
	for name, s := range p.Services {
		hc := s.HealthCheck
		require.NotNil(t, hc, "%s has no health check", name)
		require.False(t, hc.Disable, name)
		require.NotEmpty(t, hc.Test, name)
		require.Contains(t, []string{"CMD", "CMD-SHELL"}, hc.Test[0], name)
		require.NotNil(t, hc.Interval, name)
		require.NotNil(t, hc.Timeout, name)
		require.NotNil(t, hc.Retries, name)
		require.NotNil(t, hc.StartPeriod, name)

		for dep, d := range s.DependsOn {
			require.Contains(t, p.Services, dep, "%s depends on a missing service", name)
			require.Equal(t, types.ServiceConditionHealthy, d.Condition, "%s waits for %s to be healthy", name, dep)
		}
	}

	// The probes of our images, by service.
	probe := func(name string) []string {
		test := p.Services[name].HealthCheck.Test
		require.Equal(t, "CMD", test[0], name)
		require.Equal(t, "/usr/local/bin/healthcheck", test[1], name)
		return test[2:]
	}
	require.Equal(t, []string{"backends"}, probe("dispatcher"))
	require.Equal(t, []string{"http", "http://127.0.0.1:8000/health"}, probe("runpod-adapter"))
	for name := range p.Services {
		switch {
		case strings.HasPrefix(name, "gpuworker-"):
			require.Equal(t, []string{"worker"}, probe(name))
		case strings.HasPrefix(name, "comfyui-"), strings.HasPrefix(name, "comfysim-"):
			require.Equal(t, []string{"http", "http://127.0.0.1:8188/"}, probe(name))
		}
	}

	deps := func(name string) []string { return slices.Sorted(maps.Keys(p.Services[name].DependsOn)) }
	require.Equal(t, []string{"nats", "redis"}, deps("dispatcher"))
	require.Equal(t, []string{"dispatcher", "nats", "redis"}, deps("runpod-adapter"))
	for _, name := range []string{"nats", "redis", "s3"} {
		require.Empty(t, deps(name), name)
	}
	for name := range p.Services {
		if strings.HasPrefix(name, "comfyui-") || strings.HasPrefix(name, "comfysim-") {
			require.Empty(t, deps(name), name)
		}
	}

	// Start order has no cycle.
	_, err := startOrder(p)
	require.NoError(t, err)
}

// TestComposeWorkerPairs: each gpuworker drives its own ComfyUI, waits for
// it, and has a unique id; each GPU ComfyUI is pinned to one device.
func TestComposeWorkerPairs(t *testing.T) {
	t.Parallel()
	p := allProfiles(t)
	ids := map[string]string{}
	devices := map[string]string{}
	for name, s := range p.Services {
		if !strings.HasPrefix(name, "gpuworker-") {
			continue
		}
		env := s.Environment
		id, url := deref(env["WORKER_ID"]), deref(env["COMFYUI_URL"])
		require.NotEmpty(t, id, name)
		require.NotContains(t, ids, id, "%s and %s share WORKER_ID %s", name, ids[id], id)
		ids[id] = name

		pair := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), ":8188")
		require.Equal(t, "http://"+pair+":8188", url, name)
		require.Contains(t, p.Services, pair, "%s drives a missing service", name)
		require.Equal(t, p.Services[pair].Profiles, s.Profiles, "%s and %s are in one profile", name, pair)
		require.Equal(t, types.ServiceConditionHealthy, s.DependsOn[pair].Condition, "%s waits for %s", name, pair)
		for _, dep := range []string{"nats", "redis", "s3"} {
			require.Contains(t, s.DependsOn, dep, name)
		}
		require.Equal(t, "local-"+strings.TrimPrefix(name, "gpuworker-"), id, "%s: WORKER_ID", name)
		require.Equal(t, "nats://worker:comfyfleet-worker@nats:4222", deref(env["NATS_URL"]), "%s connects as nats.conf's worker user", name)
		require.Equal(t, "redis://redis:6379/0", deref(env["REDIS_URL"]), name)
		require.Equal(t, "gpuworker", s.Build.Target, name)
		require.NotNil(t, s.StopGracePeriod, "%s: stop_grace_period covers the drain", name)
	}
	require.Len(t, ids, 4)

	for name, s := range p.Services {
		var reqs []types.DeviceRequest
		if s.Deploy != nil && s.Deploy.Resources.Reservations != nil {
			reqs = s.Deploy.Resources.Reservations.Devices
		}
		if !strings.HasPrefix(name, "comfyui-gpu") {
			require.Empty(t, reqs, "%s reserves no GPU", name)
			continue
		}
		require.Len(t, reqs, 1, name)
		r := reqs[0]
		require.Equal(t, "nvidia", r.Driver, name)
		require.Equal(t, []string{"gpu"}, r.Capabilities, name)
		require.Zero(t, r.Count, "%s: pinned by device id, not by count", name)
		want := strings.TrimPrefix(name, "comfyui-gpu")
		require.Equal(t, []string{want}, r.IDs, name)
		require.NotContains(t, devices, want, "GPU %s is given twice", want)
		devices[want] = name

		require.Equal(t, []string{"comfyui"}, []string(s.Command), "%s runs the worker image in comfyui mode", name)
		require.Equal(t, "Dockerfile.worker", s.Build.Dockerfile, name)
		require.Equal(t, root, s.Build.Context, name)
		var secrets []string
		for _, sec := range s.Build.Secrets {
			secrets = append(secrets, sec.Source)
		}
		require.ElementsMatch(t, []string{"hf_token", "civitai_token"}, secrets, name)
		require.Len(t, s.Volumes, 2, name)
		require.Equal(t, "/runpod-volume/models", s.Volumes[0].Target, "%s: MODELS_DIR is laid out as a network volume", name)
		require.True(t, s.Volumes[0].ReadOnly, name)

		// ComfyUI's output folder is a volume its gpuworker shares, in
		// the group of the gpuworker image's user, so that the worker
		// deletes a job's outputs once they are stored.
		out := s.Volumes[1]
		require.Equal(t, types.VolumeTypeVolume, out.Type, name)
		require.Equal(t, "comfyui-output-gpu"+want, out.Source, name)
		require.Equal(t, "/comfyui/output", out.Target, "%s: the image's output folder", name)
		w := p.Services["gpuworker-gpu"+want]
		require.Len(t, w.Volumes, 1, "gpuworker-gpu%s", want)
		require.Equal(t, out.Source, w.Volumes[0].Source, "gpuworker-gpu%s mounts its ComfyUI's output folder", want)
		require.False(t, w.Volumes[0].ReadOnly, "gpuworker-gpu%s deletes from it", want)
		require.Equal(t, w.Volumes[0].Target, deref(w.Environment["COMFYUI_OUTPUT_DIR"]), "gpuworker-gpu%s: COMFYUI_OUTPUT_DIR", want)
		require.Equal(t, workerImageGID(t), deref(s.Environment["COMFYUI_OUTPUT_GID"]), "%s: the group of deploy/Dockerfile's USER", name)
	}
	require.Len(t, devices, 2)

	// Tokens come from files as build secrets (every Compose v2 reads a
	// file secret; one from an environment variable in .env reaches the
	// build only on some versions); none is a build arg. No file: no token.
	for name, v := range map[string]string{"hf_token": "HUGGINGFACE_TOKEN_FILE", "civitai_token": "CIVITAI_TOKEN_FILE"} {
		require.Equal(t, "/dev/null", p.Secrets[name].File, name)
		require.Empty(t, p.Secrets[name].Environment, name)
		withFile := loadComposeEnv(t, composeFile(), map[string]string{v: "./secrets/" + name}, "gpu")
		require.Equal(t, filepath.Join(root, "deploy", "compose", "secrets", name), withFile.Secrets[name].File, "%s is relative to compose.yaml", v)
	}
	for name, s := range p.Services {
		if s.Build == nil {
			continue
		}
		for arg := range s.Build.Args {
			require.False(t, secretName.MatchString(arg), "%s: build arg %s looks like a secret", name, arg)
		}
	}
}

// workerImageGID is the group of the user deploy/Dockerfile's images run as.
func workerImageGID(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^USER [0-9]+:([0-9]+)$`).FindStringSubmatch(readFile(t, "deploy", "Dockerfile"))
	require.NotNil(t, m, "deploy/Dockerfile has a USER uid:gid line")
	return m[1]
}

// secretName matches names that hold secrets.
var secretName = regexp.MustCompile(`(?i)token|secret|password|passwd|api_?key|access_?key`)

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// TestComposeVolumesAndNATSConfig: NATS and S3 keep their data on named
// volumes, and nats.conf stores JetStream where the volume is mounted.
func TestComposeVolumesAndNATSConfig(t *testing.T) {
	t.Parallel()
	p := allProfiles(t)
	require.ElementsMatch(t, []string{"nats-data", "nats-2-data", "nats-3-data", "redis-data", "s3-data", "prometheus-data", "grafana-data",
		"comfyui-output-gpu0", "comfyui-output-gpu1"}, slices.Collect(maps.Keys(p.Volumes)))
	mounts := func(name string) map[string]types.ServiceVolumeConfig {
		out := map[string]types.ServiceVolumeConfig{}
		for _, v := range p.Services[name].Volumes {
			out[v.Target] = v
		}
		return out
	}
	nats := mounts("nats")
	require.Equal(t, types.VolumeTypeVolume, nats["/data"].Type)
	require.Equal(t, "nats-data", nats["/data"].Source)
	require.Equal(t, types.VolumeTypeBind, nats["/etc/nats/nats.conf"].Type)
	require.Equal(t, repoPath("deploy", "compose", "nats.conf"), nats["/etc/nats/nats.conf"].Source)
	require.True(t, nats["/etc/nats/nats.conf"].ReadOnly)
	require.Equal(t, []string{"--config", "/etc/nats/nats.conf"}, []string(p.Services["nats"].Command))
	require.Equal(t, "s3-data", mounts("s3")["/data"].Source)
	require.Equal(t, "redis-data", mounts("redis")["/data"].Source)

	opts := composeNATSOptions(t)
	require.True(t, opts.JetStream, "JetStream is on")
	require.Equal(t, "/data", opts.StoreDir, "JetStream stores on the nats-data volume")
	require.Equal(t, 4222, opts.Port)
	require.Equal(t, 8222, opts.HTTPPort, "the health check reads the monitoring port")
	require.Equal(t, int32(1<<20), opts.MaxPayload)
	require.Contains(t, strings.Join(p.Services["nats"].HealthCheck.Test, " "), "http://127.0.0.1:8222/healthz")

	// The bucket the workers are given is the one the store creates.
	s3 := p.Services["s3"]
	require.Contains(t, strings.Join(s3.Command, " "), `mkdir -p "/data/${BUCKET}"`)
	require.Equal(t, deref(p.Services["gpuworker-sim1"].Environment["BUCKET_NAME"]), deref(s3.Environment["BUCKET"]))
}

// imageTag matches a pinned third-party image: a name and a version tag.
var imageTag = regexp.MustCompile(`^[a-z0-9./-]+:v?\d+\.\d+\.\d+(-[a-z0-9.]+)?$`)

func TestComposeImagesArePinned(t *testing.T) {
	t.Parallel()
	p := allProfiles(t)
	for name, s := range p.Services {
		if s.Build != nil {
			require.True(t, strings.HasPrefix(s.Image, "comfyfleet/"), "%s: %s", name, s.Image)
			continue
		}
		require.Regexp(t, imageTag, s.Image, "%s: third-party images are pinned by version", name)
	}
	// The NATS server in compose is the version the tests run in-process.
	goMod := readFile(t, "go.mod")
	m := regexp.MustCompile(`github.com/nats-io/nats-server/v2 v(\S+)`).FindStringSubmatch(goMod)
	require.NotNil(t, m)
	require.Equal(t, "nats:"+m[1]+"-alpine", p.Services["nats"].Image)
}

// TestComposeBuildsFromThisRepository: every image we build comes from a
// target of deploy/Dockerfile or from Dockerfile.worker.
func TestComposeBuildsFromThisRepository(t *testing.T) {
	t.Parallel()
	p := allProfiles(t)
	targets := parseDockerfile(t, "deploy", "Dockerfile").stageNames()
	for name, s := range p.Services {
		if s.Build == nil {
			continue
		}
		require.Equal(t, root, s.Build.Context, name)
		switch s.Build.Dockerfile {
		case "deploy/Dockerfile":
			require.Contains(t, targets, s.Build.Target, name)
			require.Contains(t, s.Image, "/"+s.Build.Target+":", name)
		case "Dockerfile.worker":
			require.Empty(t, s.Build.Target, "%s builds the default (final) stage", name)
		default:
			t.Fatalf("%s builds from %s", name, s.Build.Dockerfile)
		}
	}
}

// settingsOf returns the environment variables a binary reads, from its
// --help.
func settingsOf(t *testing.T, binary string) map[string]bool {
	t.Helper()
	out, err := exec.Command(bin(t, binary), "--help").CombinedOutput()
	require.NoError(t, err, "%s --help: %s", binary, out)
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`\(env ([A-Z][A-Z0-9_]*)`).FindAllStringSubmatch(string(out), -1) {
		names[m[1]] = true
	}
	require.NotEmpty(t, names, binary)
	return names
}

// TestComposeEnvironmentIsRealSettings: every variable compose gives a
// service is a setting its program reads, so a renamed setting cannot
// silently fall back to its default in containers.
func TestComposeEnvironmentIsRealSettings(t *testing.T) {
	t.Parallel()
	p := allProfiles(t)
	entrypoint := entrypointVariables(t)
	for name, s := range p.Services {
		if s.Build == nil {
			continue
		}
		var known map[string]bool
		if s.Build.Dockerfile == "Dockerfile.worker" {
			known = map[string]bool{}
			for v := range entrypoint {
				known[v] = true
			}
		} else {
			known = settingsOf(t, s.Build.Target)
		}
		for k := range s.Environment {
			require.True(t, known[k] || pendingSettings[k], "%s: %s is not a setting of %s", name, k, s.Build.Target)
		}
	}
}

// composeVar matches a ${VAR...} reference ($${...} is a literal $).
var composeVar = regexp.MustCompile(`(^|[^$])\$\{([A-Z_][A-Z0-9_]*)(:?[-?+]([^}]*))?\}`)

// TestDotEnvExampleHasEverySetting: .env.example sets every variable
// compose.yaml reads, and nothing else, with compose's own default.
func TestDotEnvExampleHasEverySetting(t *testing.T) {
	t.Parallel()
	used := map[string]string{}
	var yaml []string // compose.yaml without its comment lines
	for _, line := range strings.Split(readFile(t, "deploy", "compose", "compose.yaml"), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			yaml = append(yaml, line)
		}
	}
	for _, m := range composeVar.FindAllStringSubmatch(strings.Join(yaml, "\n"), -1) {
		name, def := m[2], m[4]
		if prev, ok := used[name]; ok && prev != def {
			t.Errorf("compose.yaml gives %s two defaults: %q and %q", name, prev, def)
		}
		used[name] = def
	}
	// The variable of an environment-sourced secret is read by compose.
	used["PROMETHEUS_ADMIN_KEY"] = ""
	env := dotEnv(t)
	require.ElementsMatch(t, slices.Collect(maps.Keys(used)), slices.Collect(maps.Keys(env)))
	for name, def := range used {
		if env[name] != "" {
			require.Equal(t, def, env[name], ".env.example sets %s to another value than compose.yaml's default", name)
		}
	}
	// Secrets stay empty in the example.
	for name, v := range env {
		if secretName.MatchString(name) && !strings.HasPrefix(name, "S3_ROOT_") {
			require.Empty(t, v, ".env.example: %s", name)
		}
	}
}

// TestGPUPairGenerator: compose.yaml's GPU pairs are what gpus.sh writes,
// and the script scales them to any set of device ids.
func TestGPUPairGenerator(t *testing.T) {
	t.Parallel()
	script := repoPath("deploy", "compose", "gpus.sh")
	out, err := exec.Command("sh", script, "--stdout", "2").CombinedOutput()
	require.NoError(t, err, "%s", out)
	compose := readFile(t, "deploy", "compose", "compose.yaml")
	var blocks string
	for _, kind := range []string{"PAIRS", "VOLUMES"} {
		start := strings.Index(compose, "  # BEGIN GENERATED GPU "+kind)
		end := strings.Index(compose, "  # END GENERATED GPU "+kind+"\n")
		require.True(t, start > 0 && end > start, kind)
		blocks += compose[start : end+len("  # END GENERATED GPU "+kind+"\n")]
	}
	require.Equal(t, string(out), blocks, "compose.yaml's GPU pairs differ from `./gpus.sh 2`: run it")

	for _, tt := range []struct {
		arg  string
		want []string
	}{{"4", []string{"0", "1", "2", "3"}}, {"0,2,5", []string{"0", "2", "5"}}, {"1", []string{"0"}}} {
		dir := t.TempDir()
		for _, f := range []string{"compose.yaml", "gpus.sh", "nats.conf", ".env.example"} {
			writeFile(t, filepath.Join(dir, f), readFile(t, "deploy", "compose", f))
		}
		out, err := exec.Command("sh", filepath.Join(dir, "gpus.sh"), tt.arg).CombinedOutput()
		require.NoError(t, err, "%s", out)
		p := loadCompose(t, filepath.Join(dir, "compose.yaml"), "gpu")
		var got []string
		for name, s := range p.Services {
			if id, ok := strings.CutPrefix(name, "comfyui-gpu"); ok {
				got = append(got, id)
				require.Equal(t, []string{id}, s.Deploy.Resources.Reservations.Devices[0].IDs)
				w := p.Services["gpuworker-gpu"+id]
				require.Equal(t, "http://comfyui-gpu"+id+":8188", deref(w.Environment["COMFYUI_URL"]))
				require.Equal(t, "local-gpu"+id, deref(w.Environment["WORKER_ID"]))
				require.Contains(t, p.Volumes, "comfyui-output-gpu"+id, "gpus.sh %s declares the pair's output volume", tt.arg)
			}
		}
		require.ElementsMatch(t, tt.want, got, "gpus.sh %s", tt.arg)
		require.Len(t, p.Services, 5+2*len(tt.want), "gpus.sh %s keeps the rest of the file", tt.arg)
	}

	for _, bad := range []string{"0", "x", "1,,2", ",1", "-1"} {
		out, err := exec.Command("sh", script, "--stdout", bad).CombinedOutput()
		require.Error(t, err, "gpus.sh %s: %s", bad, out)
	}
}

// notInCompose are the settings compose does not pass, and why.
var notInCompose = map[string]map[string]string{
	"runpod-adapter": {
		"API_KEYS_FILE":              "a file in the container: use API_KEYS, or mount one in an override file",
		"ADMIN_KEYS_FILE":            "a file in the container: use ADMIN_KEYS, or mount one in an override file",
		"WORKER_KEYS_FILE":           "a file in the container: use WORKER_KEYS, or mount one in an override file",
		"SERVERLESS_TENANT":          "serverless mode",
		"SHUTDOWN_GRACE":             "the default fits the service's stop_grace_period; the name is the gpuworkers' in .env",
		"RUNPOD_WEBHOOK_GET_JOB":     "serverless mode runs in the worker image on RunPod, not in compose",
		"RUNPOD_WEBHOOK_POST_OUTPUT": "serverless mode",
		"RUNPOD_WEBHOOK_POST_STREAM": "serverless mode",
		"RUNPOD_WEBHOOK_PING":        "serverless mode",
		"RUNPOD_AI_API_KEY":          "serverless mode",
		"RUNPOD_POD_ID":              "serverless mode",
		"RUNPOD_ENDPOINT_ID":         "serverless mode",
		"RUNPOD_PING_INTERVAL":       "serverless mode",
		"SERVERLESS_CONCURRENCY":     "serverless mode",
		"REFRESH_WORKER":             "serverless mode",
	},
	"gpuworker": {
		"WARMUP_WORKFLOW": "a file in the container: mount one in an override file and set it there",
		"LEASE_TTL":       "the default (the heartbeat TTL) fits; tests shorten it",
		"WARM_DEFER":      "the default fits",
		"ADMIN_KEYS_FILE": "a file in the container: use ADMIN_KEYS",
		"ALLOWED_ORIGINS": "/metrics is scraped by Prometheus, not called from browsers",
		"COMFYUI_INPUT_DIR": "the gpuworker has its own container, without ComfyUI's input folder: a job's inputs are emptied over HTTP; " +
			"share the folder as a volume in an override file and set it there to have them deleted",
		"COMFYUI_MODELS_DIR":     "models by URL need ComfyUI's models folder, which the gpuworker's own container lacks: share it as a volume in an override file and set COMFYUI_MODELS_DIR and this there (docs/models.md)",
		"MODEL_CACHE_DIR":        "models by URL need ComfyUI's models folder, which the gpuworker's own container lacks: share it as a volume in an override file and set COMFYUI_MODELS_DIR and this there (docs/models.md)",
		"MODEL_CACHE_GB":         "models by URL need ComfyUI's models folder, which the gpuworker's own container lacks: share it as a volume in an override file and set COMFYUI_MODELS_DIR and this there (docs/models.md)",
		"MODEL_MAX_GB":           "models by URL need ComfyUI's models folder, which the gpuworker's own container lacks: share it as a volume in an override file and set COMFYUI_MODELS_DIR and this there (docs/models.md)",
		"MODEL_DOWNLOAD_TIMEOUT": "models by URL need ComfyUI's models folder, which the gpuworker's own container lacks: share it as a volume in an override file and set COMFYUI_MODELS_DIR and this there (docs/models.md)",
		"MODEL_URL_ALLOW":        "models by URL need ComfyUI's models folder, which the gpuworker's own container lacks: share it as a volume in an override file and set COMFYUI_MODELS_DIR and this there (docs/models.md)",
		"MODEL_URL_ALLOW_HTTP":   "models by URL need ComfyUI's models folder, which the gpuworker's own container lacks: share it as a volume in an override file and set COMFYUI_MODELS_DIR and this there (docs/models.md)",
		"HF_TOKEN":               "models by URL need ComfyUI's models folder, which the gpuworker's own container lacks: share it as a volume in an override file and set COMFYUI_MODELS_DIR and this there (docs/models.md)",
		"CIVITAI_TOKEN":          "models by URL need ComfyUI's models folder, which the gpuworker's own container lacks: share it as a volume in an override file and set COMFYUI_MODELS_DIR and this there (docs/models.md)",
	},
	"dispatcher": {
		"SWEEP_INTERVAL":      "the default fits; tests shorten it",
		"INTAKE_ACK_WAIT":     "the default fits; tests shorten it",
		"INTAKE_CONCURRENCY":  "the default fits",
		"EXECUTION_GRACE":     "the default fits; tests shorten it",
		"LEASE_GRACE":         "the default fits the workers' default LEASE_TTL, which compose does not change either",
		"ADMIN_KEYS_FILE":     "a file in the container: use ADMIN_KEYS, or mount one in an override file",
		"ALLOWED_ORIGINS":     "the HTTP API (LISTEN_ADDR) is off by default",
		"LANE_AHEAD":          "the default (the pool's live workers) fits",
		"FAIR_SHARE_INTERVAL": "the default fits",
	},
	"comfysim": {
		"COMFYSIM_CONTROL_ADDR": "fault injection is for tests",
		"COMFYSIM_DIR":          "the emulator's files live in the container's temporary folder",
		"COMFYSIM_MODELS_DIR":   "its gpuworker has no models folder to share with it (models by URL need a shared volume: docs/models.md)",
	},
	"worker-image": {
		"COMFYUI_DIR":            "a path inside the image",
		"COMFYUI_PYTHON":         "a path inside the image",
		"COMFYUI_LISTEN":         "comfyui mode listens on 0.0.0.0 for its gpuworker",
		"COMFYUI_PORT":           "the health check and COMFYUI_URL use 8188",
		"COMFYUI_PID_FILE":       "a path inside the image",
		"COMFYUI_MANAGER_CONFIG": "a path inside the image",
		"COMFYUI_START_TIMEOUT":  "worker mode only; compose runs comfyui mode",
		"COMFYUI_STOP_TIMEOUT":   "worker mode only",
		"GPU_CHECK":              "the gpu profile has GPUs",
		"NETWORK_VOLUME":         "MODELS_DIR is mounted where the image expects it",
		"RUNPOD_WEBHOOK_GET_JOB": "serverless mode",
	},
}

// notEverywhere are the settings compose passes to some services of a
// program and not to others, and why.
var notEverywhere = map[string]map[string]string{
	"gpuworker": {
		"COMFYUI_OUTPUT_DIR": "a gpu pair shares ComfyUI's output folder as a volume, and its gpuworker deletes a job's outputs from it once stored; " +
			"the sim profile's emulators keep their files in their own containers",
	},
}

// TestComposePassesEverySetting: each service gets every setting of its
// program, so .env.example (which has every variable compose reads) has
// every setting; the exceptions say why.
func TestComposePassesEverySetting(t *testing.T) {
	t.Parallel()
	p := allProfiles(t)
	for name, s := range p.Services {
		if s.Build == nil {
			continue
		}
		program := s.Build.Target
		var settings map[string]bool
		if s.Build.Dockerfile == "Dockerfile.worker" {
			program, settings = "worker-image", map[string]bool{}
			for v := range entrypointVariables(t) {
				settings[v] = true
			}
		} else {
			settings = settingsOf(t, program)
		}
		for env := range settings {
			_, passed := s.Environment[env]
			_, why := notInCompose[program][env]
			if _, some := notEverywhere[program][env]; some {
				continue
			}
			require.True(t, passed || why, "%s: compose does not pass %s to %s; pass it (and add it to .env.example) or say why not in notInCompose", name, env, program)
			require.False(t, passed && why, "%s: %s is passed and also listed in notInCompose", name, env)
		}
		for env := range notInCompose[program] {
			require.True(t, settings[env], "notInCompose lists %s, which %s no longer reads", env, program)
		}
	}
}

// TestComposeBuildsEveryVariant: with MODEL_TYPE set to each variant in
// .env, the gpu profile's ComfyUI services build that variant with build
// args the Dockerfile declares, jawi-vision with its LoRA's URL and hash.
func TestComposeBuildsEveryVariant(t *testing.T) {
	t.Parallel()
	declared := buildArgs(t, "Dockerfile.worker")
	for typ := range wantModels {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			set := map[string]string{"MODEL_TYPE": typ}
			if typ == "jawi-vision" {
				set["JAWI_VISION_LORA_URL"] = "https://example.org/jawi-vision.safetensors"
				set["JAWI_VISION_LORA_SHA256"] = strings.Repeat("ab", 32)
			}
			p := loadComposeEnv(t, composeFile(), set, "gpu")
			n := 0
			for name, s := range p.Services {
				if !strings.HasPrefix(name, "comfyui-gpu") {
					continue
				}
				n++
				require.Equal(t, "comfyfleet/worker:dev-"+typ, s.Image, name)
				args := map[string]string{}
				for k, v := range s.Build.Args {
					require.Contains(t, declared, k, "%s passes build arg %s, which Dockerfile.worker does not declare", name, k)
					require.NotNil(t, v, "%s: build arg %s resolves", name, k)
					args[k] = *v
				}
				require.Equal(t, typ, args["MODEL_TYPE"], name)
				require.Equal(t, set["JAWI_VISION_LORA_URL"], args["JAWI_VISION_LORA_URL"], name)
				require.Equal(t, set["JAWI_VISION_LORA_SHA256"], args["JAWI_VISION_LORA_SHA256"], name)
			}
			require.Positive(t, n)
		})
	}
	// The build's message for jawi-vision without a URL names the .env
	// variables.
	require.Contains(t, readFile(t, "Dockerfile.worker"), "MODEL_TYPE=jawi-vision needs JAWI_VISION_LORA_URL")
	require.Contains(t, readFile(t, "Dockerfile.worker"), "set them in deploy/compose/.env")
}

// securitySettings are the NATS credentials and the TLS files of NATS and
// Redis (role.Security), which every binary has and compose passes none
// of.
var securitySettings = []string{"NATS_CREDS", "NATS_NKEY_SEED_FILE", "NATS_USER", "NATS_PASSWORD", "NATS_PASSWORD_FILE",
	"NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY", "NATS_TLS_SERVER_NAME",
	"REDIS_TLS_CA", "REDIS_TLS_CERT", "REDIS_TLS_KEY", "REDIS_TLS_SERVER_NAME"}

// sentinelSettings find a Redis behind Redis Sentinel and make the job
// transitions wait for its replicas; compose runs one Redis.
var sentinelSettings = []string{"REDIS_SENTINELS", "REDIS_MASTER_NAME", "REDIS_SENTINEL_USER", "REDIS_SENTINEL_PASSWORD",
	"REDIS_WAIT_REPLICAS", "REDIS_WAIT_TIMEOUT"}

func init() {
	for _, program := range []string{"dispatcher", "gpuworker", "runpod-adapter"} {
		for _, env := range sentinelSettings {
			notInCompose[program][env] = "compose runs one Redis, without replicas or sentinels; they are for a Redis of one's own with Sentinel failover (docs/scaling.md)"
		}
		for _, env := range securitySettings {
			notInCompose[program][env] = "compose's services reach NATS and Redis on the stack's own network, each NATS user named in its NATS_URL; " +
				"credentials files and TLS are for processes that join from outside it (docs/deployment.md, docs/security.md)"
		}
	}
}
