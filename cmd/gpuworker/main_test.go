package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/deploy/configdoc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func parse(t *testing.T, env map[string]string, args ...string) (config, string, error) {
	t.Helper()
	var cfg config
	fs := settings(&cfg)
	require.NoError(t, fs.Parse(args, func(k string) string { return env[k] }))
	setting, err := cfg.finish()
	return cfg, setting, err
}

func TestSettings(t *testing.T) {
	t.Parallel()
	cfg, _, err := parse(t, map[string]string{
		"WORKER_ID": "gpu-1", "BUCKET_ENDPOINT_URL": "https://s3.example.com", "BUCKET_ACCESS_KEY_ID": "id",
		"BUCKET_SECRET_ACCESS_KEY": "secret", "BUCKET_NAME": "out", "BUCKET_PREFIX": "runs", "REFRESH_WORKER": "true",
		"EXECUTION_TIMEOUT": "90s", "STALL_TIMEOUT": "-1s", "MAX_ATTEMPTS": "5", "PREFETCH": "2", "MAX_INPUT_MB": "20",
		"INPUT_URL_ALLOW": "10.0.0.0/8:9000, assets.internal", "WEBSOCKET_RECONNECT_DELAY_S": "0.5", "BUCKET_URL_EXPIRY": "24h",
		"S3_CONFIG_ALLOW": "minio.internal:9000", "S3_CONFIG_ALLOW_HTTP": "true",
	})
	require.NoError(t, err)
	w := cfg.role.Worker
	require.Equal(t, "gpu-1", w.ID)
	require.Equal(t, "out", cfg.role.S3.Bucket)
	require.Equal(t, "runs", cfg.role.S3.Prefix)
	require.True(t, w.RefreshWorker)
	require.Equal(t, "1m30s", w.ExecutionTimeout.String())
	require.Negative(t, w.StallTimeout)
	require.Equal(t, 5, w.MaxAttempts)
	require.Equal(t, 2, w.Prefetch)
	require.EqualValues(t, 20<<20, w.MaxInputBytes)
	require.Equal(t, []string{"10.0.0.0/8:9000", "assets.internal"}, w.InputURLAllow)
	require.Equal(t, []string{"minio.internal:9000"}, w.S3ConfigAllow)
	require.True(t, w.S3ConfigAllowHTTP)
	require.Equal(t, "500ms", cfg.role.Comfy.ReconnectDelay.String())
	require.Equal(t, "24h0m0s", cfg.role.S3.URLExpiry.String())

	warm := filepath.Join(t.TempDir(), "warm.json")
	require.NoError(t, os.WriteFile(warm, []byte(`{"1":{"class_type":"PreviewAny","inputs":{"source":"x"}}}`), 0o644))
	cfg, _, err = parse(t, map[string]string{"WARMUP_WORKFLOW": warm})
	require.NoError(t, err)
	require.Contains(t, string(cfg.role.Worker.WarmupWorkflow), "PreviewAny")
	require.Equal(t, 1, cfg.role.Worker.Prefetch, "PREFETCH defaults to one job queued behind the running one")

	cfg, _, err = parse(t, map[string]string{"PREFETCH": "0"})
	require.NoError(t, err)
	require.Zero(t, cfg.role.Worker.Prefetch, "PREFETCH=0 turns prefetching off")
}

func TestBucketNameAloneLeavesS3Off(t *testing.T) {
	t.Parallel()
	cfg, setting, err := parse(t, map[string]string{"BUCKET_NAME": "comfyfleet"})
	require.NoError(t, err, setting)
	require.Empty(t, cfg.role.S3.Endpoint, "outputs stay inline without BUCKET_ENDPOINT_URL")
}

func TestSettingErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env     map[string]string
		setting string
		wantErr string
	}{
		{env: map[string]string{"BUCKET_ENDPOINT_URL": "https://s3.example.com", "BUCKET_NAME": "b"}, setting: "BUCKET_*", wantErr: "credentials missing"},
		{env: map[string]string{"BUCKET_ENDPOINT_URL": "https://s3.example.com", "BUCKET_ACCESS_KEY_ID": "a", "BUCKET_SECRET_ACCESS_KEY": "s3cr3t-value"}, setting: "BUCKET_*", wantErr: "bucket name is empty"},
		{env: map[string]string{"BUCKET_ACCESS_KEY_ID": "a", "BUCKET_SECRET_ACCESS_KEY": "s3cr3t-value"}, setting: "BUCKET_ENDPOINT_URL", wantErr: "empty while S3 credentials are set"},
		{env: map[string]string{"MAX_INPUT_MB": "-1"}, setting: "MAX_INPUT_MB", wantErr: "negative"},
		{env: map[string]string{"WARMUP_WORKFLOW": "/nonexistent/warm.json"}, setting: "WARMUP_WORKFLOW", wantErr: "no such file"},
		{env: map[string]string{"INPUT_URL_ALLOW": "10.0.0.0/99"}, setting: "worker settings", wantErr: "input URL allow list"},
		{env: map[string]string{"S3_CONFIG_ALLOW": "minio.internal:0"}, setting: "worker settings", wantErr: `s3Config allow list: allow-list entry "minio.internal:0"`},
		{env: map[string]string{"PREFETCH": "-1"}, setting: "worker settings", wantErr: "prefetch -1 is negative"},
	}
	for _, tt := range tests {
		_, setting, err := parse(t, tt.env)
		require.ErrorContains(t, err, tt.wantErr, tt.env)
		require.Equal(t, tt.setting, setting)
		require.NotContains(t, err.Error(), "s3cr3t-value")
	}
}

func TestEverySettingHasAVariable(t *testing.T) {
	t.Parallel()
	var cfg config
	for _, s := range settings(&cfg).Settings() {
		require.NotEmpty(t, s.Env, s.Flag)
		require.Equal(t, strings.ToUpper(s.Env), s.Env)
	}
}

// TestConfigurationDoc: docs/configuration.md lists every setting of this
// binary with its flag, variable and default; a setting added, renamed or
// given another default without its documentation fails here.
func TestConfigurationDoc(t *testing.T) {
	t.Parallel()
	var cfg config
	configdoc.Require(t, "../../docs/configuration.md", "gpuworker", settings(&cfg).Settings())
}
