package devstack_test

import (
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/role"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// binary is one binary's settings, bound as its cmd package binds them:
// role.Common, then the role's.
type binary struct {
	name string
	// parse binds a fresh set, parses getenv into it and finishes it; it
	// returns the set and the common and role settings as the binary runs
	// them.
	parse func(t *testing.T, getenv func(string) string) (fs *flagenv.Set, common role.Common, cfg any)
	// inDev is the same role's settings in the dev stack's, with the
	// fields dev sets itself (devOwn) taken from want.
	inDev func(dev devstack.Config, want any) any
}

// finishBinary parses and finishes a binary's settings as its main does.
func finishBinary(t *testing.T, fs *flagenv.Set, getenv func(string) string, finish ...func() (string, error)) {
	t.Helper()
	require.NoError(t, fs.Parse(nil, getenv))
	for _, f := range finish {
		setting, err := f()
		require.NoError(t, err, setting)
	}
}

// binaries are the three binaries dev embeds. devOwn, in inDev: the
// fields dev decides whatever the settings say (the listeners, the
// workers' ComfyUI and id), whose handling the deliberate rows of the
// table check instead.
var binaries = []binary{
	{
		name: "dispatcher",
		parse: func(t *testing.T, getenv func(string) string) (*flagenv.Set, role.Common, any) {
			var c role.Common
			var r role.DispatcherConfig
			fs := flagenv.New("dispatcher", "")
			c.Bind(fs)
			r.Bind(fs)
			finishBinary(t, fs, getenv, c.Finish, r.Finish)
			return fs, c, r
		},
		inDev: func(dev devstack.Config, want any) any {
			got := dev.Dispatcher
			got.Listen = want.(role.DispatcherConfig).Listen
			return got
		},
	},
	{
		name: "gpuworker",
		parse: func(t *testing.T, getenv func(string) string) (*flagenv.Set, role.Common, any) {
			var c role.Common
			var r role.WorkerConfig
			fs := flagenv.New("gpuworker", "")
			c.Bind(fs)
			r.Bind(fs)
			finishBinary(t, fs, getenv, c.Finish, r.Finish)
			return fs, c, r
		},
		inDev: func(dev devstack.Config, want any) any {
			w := want.(role.WorkerConfig)
			got := dev.Worker
			got.Listen, got.Comfy.BaseURL, got.Worker.ID = w.Listen, w.Comfy.BaseURL, w.Worker.ID
			return got
		},
	},
	{
		name: "runpod-adapter",
		parse: func(t *testing.T, getenv func(string) string) (*flagenv.Set, role.Common, any) {
			var c role.Common
			var r role.AdapterConfig
			fs := flagenv.New("runpod-adapter", "")
			c.Bind(fs)
			r.Bind(fs)
			finishBinary(t, fs, getenv, c.Finish, r.Finish)
			return fs, c, r
		},
		inDev: func(dev devstack.Config, want any) any {
			got := dev.Adapter
			got.Listen = want.(role.AdapterConfig).Listen
			return got
		},
	},
}

// setting is one row of the table: a variable of one or more binaries
// and a valid value for it.
type setting struct {
	env    string
	sample string
	// with are other variables the sample needs to be valid (S3
	// credentials beside an endpoint, serverless mode's other URLs).
	with map[string]string
	// why, for the few settings dev applies its own way, says how; dev
	// checks it. Their fields are devOwn: left out of every row's
	// comparison.
	why string
	dev func(t *testing.T, sample string, cfg devstack.Config)
}

// table lists every setting of the three binaries; dir holds the files
// some of them name.
func table(t *testing.T, dir string) []setting {
	keys := filepath.Join(dir, "keys.txt")
	require.NoError(t, os.WriteFile(keys, []byte("# keys\nk-file-1\n\nacme:k-file-2\n"), 0o600))
	adminKeys := filepath.Join(dir, "admin-keys.txt")
	require.NoError(t, os.WriteFile(adminKeys, []byte("ops:a-file-1\n"), 0o600))
	workerKeys := filepath.Join(dir, "worker-keys.txt")
	require.NoError(t, os.WriteFile(workerKeys, []byte("rp:w-file-1\n"), 0o600))
	warm := filepath.Join(dir, "warm.json")
	require.NoError(t, os.WriteFile(warm, []byte(`{"1":{"class_type":"PreviewAny","inputs":{"source":"x"}}}`), 0o644))
	s3 := map[string]string{
		"BUCKET_ENDPOINT_URL": "https://s3.example.com", "BUCKET_ACCESS_KEY_ID": "id",
		"BUCKET_SECRET_ACCESS_KEY": "secret", "BUCKET_NAME": "out",
	}
	pki := testenv.NewPKI(t)
	seed, _ := testenv.NKeyUser(t)
	creds := testenv.NewOperator(t).CredsFile
	natsPW := filepath.Join(dir, "nats-password")
	require.NoError(t, os.WriteFile(natsPW, []byte("pw\n"), 0o600))
	rediss := map[string]string{"REDIS_URL": "rediss://fleet:pw@redis.internal:6380/0"}
	sentinels := map[string]string{"REDIS_SENTINELS": "sentinel-1:26379"}
	// One file with the certificate and its key serves as both, so that
	// each of the two settings alone can change while the pair stays valid.
	both := filepath.Join(dir, "client-both.pem")
	cert, err := os.ReadFile(pki.ClientCert)
	require.NoError(t, err)
	key, err := os.ReadFile(pki.ClientKey)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(both, append(cert, key...), 0o600))
	clientCert := map[string]string{"NATS_TLS_CERT": both, "NATS_TLS_KEY": both}
	redisCert := map[string]string{"REDIS_URL": rediss["REDIS_URL"], "REDIS_TLS_CERT": both, "REDIS_TLS_KEY": both}
	serverless := map[string]string{
		"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/ep/job-take/$RUNPOD_POD_ID", "RUNPOD_WEBHOOK_POST_OUTPUT": "https://api.runpod.ai/v2/ep/job-done/$RUNPOD_POD_ID/$ID",
	}
	return []setting{
		// role.Common
		{env: "NATS_URL", sample: "nats://nats.internal:4222", why: "use this NATS server instead of embedding one",
			dev: func(t *testing.T, sample string, cfg devstack.Config) { require.Equal(t, sample, cfg.NATSURL) }},
		{env: "REDIS_URL", sample: "redis://redis.internal:6379/2", why: "use this Redis instead of running one under --dir",
			dev: func(t *testing.T, sample string, cfg devstack.Config) { require.Equal(t, sample, cfg.RedisURL) }},
		{env: "STREAM_REPLICAS", sample: "3"},
		{env: "EVENTS_MAX_AGE", sample: "6h"},
		{env: "EVENTS_MAX_BYTES", sample: "268435456"},
		{env: "DLQ_MAX_AGE", sample: "72h"},
		{env: "DLQ_MAX_BYTES", sample: "1048576"},
		{env: "LOG_LEVEL", sample: "debug"},
		{env: "NATS_CREDS", sample: creds},
		{env: "NATS_NKEY_SEED_FILE", sample: seed},
		{env: "NATS_USER", sample: "worker"},
		{env: "NATS_PASSWORD", sample: "pw", with: map[string]string{"NATS_USER": "worker"}},
		{env: "NATS_PASSWORD_FILE", sample: natsPW, with: map[string]string{"NATS_USER": "worker"}},
		{env: "NATS_TLS_CA", sample: pki.CA},
		{env: "NATS_TLS_CERT", sample: pki.ClientCert, with: clientCert},
		{env: "NATS_TLS_KEY", sample: pki.ClientKey, with: clientCert},
		{env: "NATS_TLS_SERVER_NAME", sample: "nats.example.com"},
		{env: "REDIS_TLS_CA", sample: pki.CA, with: rediss},
		{env: "REDIS_TLS_CERT", sample: pki.ClientCert, with: redisCert},
		{env: "REDIS_TLS_KEY", sample: pki.ClientKey, with: redisCert},
		{env: "REDIS_TLS_SERVER_NAME", sample: "redis.example.com", with: rediss},
		{env: "REDIS_SENTINELS", sample: "sentinel-1:26379,sentinel-2:26379"},
		{env: "REDIS_MASTER_NAME", sample: "fleet", with: sentinels},
		{env: "REDIS_SENTINEL_USER", sample: "watcher", with: map[string]string{"REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_PASSWORD": "pw"}},
		{env: "REDIS_SENTINEL_PASSWORD", sample: "pw", with: sentinels},
		{env: "REDIS_WAIT_REPLICAS", sample: "1"},
		{env: "REDIS_WAIT_TIMEOUT", sample: "500ms"},

		// shared by several binaries
		{env: "POOL", sample: "gpu-a100",
			why: "every role's: the workers take all its pools, the first is also the API's and the dispatcher's default (a list: TestDevPools)",
			dev: func(t *testing.T, sample string, cfg devstack.Config) {
				require.Equal(t, []string{sample}, cfg.Worker.Pools)
				require.Equal(t, sample, cfg.Adapter.API.Pool)
				require.Equal(t, sample, cfg.Dispatcher.Dispatch.DefaultPool)
			}},
		{env: "LISTEN_ADDR", sample: "127.0.0.1:9999",
			why: "one listener serves the API and the dispatcher's /fleet, /dlq and /metrics (the workers' series too)",
			dev: func(t *testing.T, sample string, cfg devstack.Config) {
				require.Equal(t, sample, cfg.Listen)
				require.Equal(t, sample, cfg.Adapter.Listen)
				require.Empty(t, cfg.Dispatcher.Listen, "no listener of its own")
				require.Empty(t, cfg.Worker.Listen, "no listener of its own")
			}},
		{env: "SHUTDOWN_GRACE", sample: "7s"},
		{env: "ADMIN_KEYS", sample: "ops:a1,a2"},
		{env: "ADMIN_KEYS_FILE", sample: adminKeys},
		{env: "ALLOWED_ORIGINS", sample: "https://console.example.com,http://localhost:3000"},
		{env: "REFRESH_WORKER", sample: "true"},

		// dispatcher
		{env: "INTAKE_ACK_WAIT", sample: "11s"},
		{env: "INTAKE_CONCURRENCY", sample: "16"},
		{env: "SWEEP_INTERVAL", sample: "250ms"},
		{env: "EXECUTION_GRACE", sample: "45s"},
		{env: "LEASE_GRACE", sample: "40s"},
		{env: "TENANT_WEIGHTS", sample: "acme=3,beta=1"},
		{env: "TENANT_CAPS", sample: "acme=8"},
		{env: "LANE_AHEAD", sample: "4"},
		{env: "FAIR_SHARE_INTERVAL", sample: "50ms"},
		{env: "WEBHOOK_SECRET", sample: "whsec_c2VjcmV0LWtleS1ieXRlcw=="},
		{env: "WEBHOOK_RETRIES", sample: "5"},
		{env: "WEBHOOK_RETRY_DELAY", sample: "2s"},
		{env: "WEBHOOK_TIMEOUT", sample: "3s"},
		{env: "WEBHOOK_ALLOW", sample: "10.0.0.0/8:*,hooks.internal:8443"},
		{env: "NO_MODEL_CHECK", sample: "true"},

		// gpuworker
		{env: "COMFYUI_URL", sample: "http://gpu-1.internal:8188",
			why: "one worker per URL (comma-separated or repeated), each driving its own",
			dev: func(t *testing.T, sample string, cfg devstack.Config) {
				require.Equal(t, []string{sample}, cfg.ComfyUIURLs)
			}},
		{env: "WORKER_ID", sample: "gpu-7",
			why: "a prefix: the workers are <id>-1, <id>-2, … (TestDevWorkerIDs)",
			dev: func(t *testing.T, sample string, cfg devstack.Config) { require.Equal(t, sample, cfg.Worker.Worker.ID) }},
		{env: "BATCH_EVERY", sample: "4"},
		{env: "COMFY_ORG_API_KEY", sample: "comfyui-org-key"},
		{env: "WEBSOCKET_RECONNECT_ATTEMPTS", sample: "9"},
		{env: "WEBSOCKET_RECONNECT_DELAY_S", sample: "0.5"},
		{env: "EXECUTION_TIMEOUT", sample: "90s"},
		{env: "STALL_TIMEOUT", sample: "-1s"},
		{env: "MAX_ATTEMPTS", sample: "5"},
		{env: "RETRY_DELAY", sample: "1s"},
		{env: "LEASE_TTL", sample: "9s"},
		{env: "PREFETCH", sample: "2"},
		{env: "WARMUP_WORKFLOW", sample: warm},
		{env: "COMFYUI_PROBE_INTERVAL", sample: "1s"},
		{env: "MAX_INPUT_MB", sample: "20"},
		{env: "INPUT_URL_TIMEOUT", sample: "15s"},
		{env: "INPUT_URL_ALLOW", sample: "10.0.0.0/8:9000, assets.internal"},
		{env: "INPUT_URL_ALLOW_HTTP", sample: "true"},
		{env: "S3_CONFIG_ALLOW", sample: "minio.internal:9000, [fd00::/8]:*"},
		{env: "S3_CONFIG_ALLOW_HTTP", sample: "true"},
		{env: "TRANSFER_CONCURRENCY", sample: "2"},
		{env: "ISOLATE_JOB_FILES", sample: "false"},
		{env: "COMFYUI_INPUT_DIR", sample: "/comfyui/input"},
		{env: "COMFYUI_OUTPUT_DIR", sample: "/comfyui/output"},
		{env: "KEEP_COMFYUI_FILES", sample: "true"},
		{env: "BUCKET_ENDPOINT_URL", sample: "https://minio.internal:9000", with: s3},
		{env: "BUCKET_ACCESS_KEY_ID", sample: "AKIAEXAMPLE", with: s3},
		{env: "BUCKET_SECRET_ACCESS_KEY", sample: "wJalrXUtnFEMI", with: s3},
		{env: "BUCKET_NAME", sample: "renders", with: s3},
		{env: "BUCKET_REGION", sample: "eu-central-1", with: s3},
		{env: "BUCKET_PREFIX", sample: "runs", with: s3},
		{env: "BUCKET_ADDRESSING_STYLE", sample: "virtual", with: s3},
		{env: "BUCKET_PUBLIC_URL", sample: "https://cdn.example.com/out", with: s3},
		{env: "BUCKET_URL_EXPIRY", sample: "24h", with: s3},
		{env: "WARM_DEFER", sample: "-1ms"},
		{env: "COMFYUI_MODELS_DIR", sample: "/comfyui/models"},
		{env: "MODEL_CACHE_DIR", sample: "/comfyui/models/.cache"},
		{env: "MODEL_CACHE_GB", sample: "12.5"},
		{env: "MODEL_MAX_GB", sample: "8"},
		{env: "MODEL_DOWNLOAD_TIMEOUT", sample: "5m"},
		{env: "MODEL_URL_ALLOW", sample: "models.internal:8443, 10.0.0.0/8:*"},
		{env: "MODEL_URL_ALLOW_HTTP", sample: "true"},
		{env: "HF_TOKEN", sample: "hf_example"},
		{env: "CIVITAI_TOKEN", sample: "civitai-example"},

		// runpod-adapter
		{env: "API_KEYS", sample: "acme:k1,k2"},
		{env: "API_KEYS_FILE", sample: keys},
		{env: "RUN_RETENTION", sample: "10m"},
		{env: "SYNC_RETENTION", sample: "2m"},
		{env: "MAX_QUEUED", sample: "50"},
		{env: "MAX_QUEUED_PER_LANE", sample: "20"},
		{env: "ENDPOINTS", sample: "sdxl=pool-sdxl,flux=pool-flux"},
		{env: "METRICS_ADDR", sample: "127.0.0.1:9101"},
		{env: "RUNSYNC_WAIT", sample: "30s"},
		{env: "STREAM_WAIT", sample: "1s"},
		{env: "JOB_TAKE", sample: "true", with: map[string]string{"WORKER_KEYS": "wk1"}},
		{env: "WORKER_KEYS", sample: "wk1,wk2"},
		{env: "WORKER_KEYS_FILE", sample: workerKeys},
		{env: "SERVERLESS_TENANT", sample: "acme"},
		{env: "JOB_TAKE_HOLD", sample: "5s"},
		{env: "JOB_STOP_HOLD", sample: "6s"},
		{env: "JOB_TAKE_LEASE", sample: "12s"},
		{env: "JOB_TAKE_EXECUTION_TIMEOUT", sample: "7m"},
		{env: "JOB_TAKE_LIVENESS", sample: "40s"},
		{env: "JOB_TAKE_REFUSAL_DELAY", sample: "3s"},
		{env: "RUNPOD_WEBHOOK_GET_JOB", sample: "https://api.runpod.ai/v2/other/job-take/$RUNPOD_POD_ID", with: serverless},
		{env: "RUNPOD_WEBHOOK_POST_OUTPUT", sample: "https://api.runpod.ai/v2/other/job-done/$RUNPOD_POD_ID/$ID", with: serverless},
		{env: "RUNPOD_WEBHOOK_POST_STREAM", sample: "https://api.runpod.ai/v2/ep/job-stream/$RUNPOD_POD_ID/$ID"},
		{env: "RUNPOD_WEBHOOK_PING", sample: "https://api.runpod.ai/v2/ep/ping/$RUNPOD_POD_ID"},
		{env: "RUNPOD_AI_API_KEY", sample: "rp-key"},
		{env: "RUNPOD_POD_ID", sample: "pod-1"},
		{env: "RUNPOD_ENDPOINT_ID", sample: "ep-1"},
		{env: "RUNPOD_PING_INTERVAL", sample: "2500"},
		{env: "SERVERLESS_CONCURRENCY", sample: "3"},
	}
}

// devOwnSettings are the settings of `comfyfleet dev` that no binary has.
var devOwnSettings = []string{"COMFYFLEET_WORKERS", "COMFYFLEET_DIR", "COMFYFLEET_NATS_PORT", "COMFYSIM_STEP_DELAY",
	"COMFYSIM_MODEL_LOAD_DELAY", "COMFYSIM_CHECKPOINTS", "COMFYFLEET_REDIS_SERVER"}

// parseDev parses dev's settings as `comfyfleet dev` does.
func parseDev(t *testing.T, getenv func(string) string) (*flagenv.Set, devstack.Config) {
	t.Helper()
	var cfg devstack.Config
	fs := flagenv.New("comfyfleet dev", "")
	cfg.Bind(fs)
	require.NoError(t, fs.Parse(nil, getenv))
	setting, err := cfg.Finish()
	require.NoError(t, err, setting)
	return fs, cfg
}

func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// TestDevAcceptsEverySetting walks every setting of the dispatcher, the
// gpuworker and the runpod-adapter and proves that `comfyfleet dev` takes
// it: dev has the same flag and variable, and a value given to dev lands
// in dev's settings of that role exactly where the binary puts it (after
// both finished their settings). The few settings dev applies its own way
// say how and why in the table, and are checked there.
func TestDevAcceptsEverySetting(t *testing.T) {
	t.Parallel()
	rows := table(t, t.TempDir())
	byEnv := map[string]setting{}
	for _, r := range rows {
		require.NotContains(t, byEnv, r.env, "listed twice")
		byEnv[r.env] = r
	}
	devFS, _ := parseDev(t, envOf(nil))
	devFlags := map[string]flagenv.Setting{}
	for _, s := range devFS.Settings() {
		devFlags[s.Flag] = s
	}

	covered := map[string]bool{}
	for _, b := range binaries {
		fs, _, _ := b.parse(t, envOf(nil))
		// Without any setting, dev runs each role as its binary would.
		t.Run(b.name+"/defaults", func(t *testing.T) {
			t.Parallel()
			_, common, want := b.parse(t, envOf(nil))
			_, dev := parseDev(t, envOf(nil))
			require.Equal(t, common, dev.Common)
			require.Equal(t, want, b.inDev(dev, want))
		})
		for _, s := range fs.Settings() {
			covered[s.Env] = true
			d, ok := devFlags[s.Flag]
			require.True(t, ok, "%s: dev has no --%s", b.name, s.Flag)
			require.Equal(t, s.Env, d.Env, "%s: --%s", b.name, s.Flag)
			r, ok := byEnv[s.Env]
			require.True(t, ok, "%s: %s (--%s) is not in the table: add a row with a valid sample value", b.name, s.Env, s.Flag)
			t.Run(b.name+"/"+s.Env, func(t *testing.T) {
				t.Parallel()
				vars := maps.Clone(r.with)
				if vars == nil {
					vars = map[string]string{}
				}
				_, baseCommon, base := b.parse(t, envOf(vars))
				vars[r.env] = r.sample
				_, common, want := b.parse(t, envOf(vars))
				require.False(t, equal(baseCommon, common) && equal(base, want),
					"the sample %q of %s changes nothing in the %s's settings: pick another", r.sample, r.env, b.name)

				_, dev := parseDev(t, envOf(vars))
				require.Equal(t, common, dev.Common, "the common settings")
				require.Equal(t, want, b.inDev(dev, want), "the %s's settings", b.name)
				if r.dev != nil {
					r.dev(t, r.sample, dev)
				} else {
					require.Empty(t, r.why, "a row that says dev differs checks how")
				}
			})
		}
	}
	for _, r := range rows {
		require.True(t, covered[r.env], "%s is in the table but no binary has it", r.env)
	}
	// What else dev has is its own.
	var own []string
	for _, s := range devFS.Settings() {
		if !covered[s.Env] {
			own = append(own, s.Env)
		}
	}
	require.ElementsMatch(t, devOwnSettings, own)
}

func equal(a, b any) bool { return reflect.DeepEqual(a, b) }

// TestDevPools: POOL is every role's in dev; the workers take all its
// pools and the first is also the API's and the dispatcher's default,
// where each binary alone takes one pool.
func TestDevPools(t *testing.T) {
	t.Parallel()
	_, dev := parseDev(t, envOf(map[string]string{"POOL": "gpu-a100,gpu-l4"}))
	require.Equal(t, []string{"gpu-a100", "gpu-l4"}, dev.Worker.Pools)
	require.Equal(t, "gpu-a100", dev.Worker.Worker.Pool)
	require.Equal(t, []string{"gpu-l4"}, dev.Worker.Worker.MorePools)
	require.Equal(t, "gpu-a100", dev.Adapter.API.Pool)
	require.Equal(t, "gpu-a100", dev.Adapter.Take.Pool)
	require.Equal(t, "gpu-a100", dev.Dispatcher.Dispatch.DefaultPool)
}

// TestDevSettingErrors: a bad value stops dev as it stops the binary,
// naming the setting.
func TestDevSettingErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env     map[string]string
		setting string
		wantErr string
	}{
		{env: map[string]string{"COMFYFLEET_WORKERS": "-1"}, setting: "COMFYFLEET_WORKERS", wantErr: "negative"},
		{env: map[string]string{"COMFYSIM_MODEL_LOAD_DELAY": "-1s"}, setting: "COMFYSIM_MODEL_LOAD_DELAY", wantErr: "negative"},
		{env: map[string]string{"COMFYFLEET_NATS_PORT": "70000"}, setting: "COMFYFLEET_NATS_PORT", wantErr: "out of range"},
		{env: map[string]string{"MAX_INPUT_MB": "-1"}, setting: "MAX_INPUT_MB", wantErr: "negative"},
		{env: map[string]string{"EVENTS_MAX_BYTES": "-1"}, setting: "EVENTS_*/DLQ_*", wantErr: "negative"},
		{env: map[string]string{"BUCKET_ACCESS_KEY_ID": "a", "BUCKET_SECRET_ACCESS_KEY": "s3cr3t-value"}, setting: "BUCKET_ENDPOINT_URL", wantErr: "empty while S3 credentials are set"},
	}
	for _, tt := range tests {
		var cfg devstack.Config
		fs := flagenv.New("comfyfleet dev", "")
		cfg.Bind(fs)
		require.NoError(t, fs.Parse(nil, envOf(tt.env)))
		setting, err := cfg.Finish()
		require.ErrorContains(t, err, tt.wantErr, tt.env)
		require.Equal(t, tt.setting, setting)
		require.NotContains(t, err.Error(), "s3cr3t-value")
	}
	var cfg devstack.Config
	fs := flagenv.New("comfyfleet dev", "")
	cfg.Bind(fs)
	err := fs.Parse(nil, envOf(map[string]string{"LEASE_GRACE": "soon"}))
	require.ErrorContains(t, err, "LEASE_GRACE")
}
