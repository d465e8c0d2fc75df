package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap/zapcore"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    config
		wantErr string
	}{
		{
			name: "defaults",
			want: config{Listen: "127.0.0.1:8188", Checkpoints: comfysim.StackCheckpoints(), StepDelay: comfysim.DefaultStepDelay, LogLevel: zapcore.InfoLevel},
		},
		{
			name: "env over default",
			env:  map[string]string{"COMFYSIM_LISTEN": ":9000", "COMFYSIM_CHECKPOINTS": "a.safetensors, b.safetensors", "COMFYSIM_STEP_DELAY": "0", "COMFYSIM_CONTROL_ADDR": "127.0.0.1:9001"},
			want: config{Listen: ":9000", ControlAddr: "127.0.0.1:9001", Checkpoints: []string{"a.safetensors", "b.safetensors"}, StepDelay: -1, LogLevel: zapcore.InfoLevel},
		},
		{
			name: "flag over env",
			args: []string{"--listen", "127.0.0.1:7000", "--step-delay", "20ms", "--dir", "/tmp/x", "--log-level", "debug", "--model-load-delay", "2s"},
			env:  map[string]string{"COMFYSIM_LISTEN": ":9000", "COMFYSIM_STEP_DELAY": "1s", "COMFYSIM_MODEL_LOAD_DELAY": "1s"},
			want: config{Listen: "127.0.0.1:7000", Dir: "/tmp/x", Checkpoints: comfysim.StackCheckpoints(), StepDelay: 20 * time.Millisecond,
				LoadDelay: 2 * time.Second, LogLevel: zapcore.DebugLevel},
		},
		{name: "bad load delay", env: map[string]string{"COMFYSIM_MODEL_LOAD_DELAY": "-1s"}, wantErr: `model-load-delay (COMFYSIM_MODEL_LOAD_DELAY): "-1s" is not a duration of 0 or more`},
		{name: "bad step delay", env: map[string]string{"COMFYSIM_STEP_DELAY": "fast"}, wantErr: `step-delay (COMFYSIM_STEP_DELAY): "fast" is not a duration`},
		{name: "empty checkpoints", args: []string{"--checkpoints", " , "}, wantErr: "checkpoints (COMFYSIM_CHECKPOINTS)"},
		{name: "bad level", args: []string{"--log-level", "loud"}, wantErr: "log-level (COMFYSIM_LOG_LEVEL)"},
		{name: "stray argument", args: []string{"serve"}, wantErr: `unexpected argument "serve"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := loadConfig(tt.args, env(tt.env), io.Discard)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestHelpListsEnvNames(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	_, err := loadConfig([]string{"--help"}, env(nil), &out)
	require.True(t, errors.Is(err, flag.ErrHelp))
	for _, s := range settings {
		require.Contains(t, out.String(), "-"+s.flag)
		require.Contains(t, out.String(), s.env)
	}
}

// A bad flag prints nothing of the help (main prints the error, once).
func TestBadFlagPrintsNoHelp(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	_, err := loadConfig([]string{"--no-such"}, env(nil), &out)
	require.ErrorContains(t, err, "flag provided but not defined: -no-such")
	require.Empty(t, out.String())
}

// A listen address in use is one line that says so.
func TestListenInUseIsOneLine(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	cfg, err := loadConfig([]string{"--listen", ln.Addr().String()}, env(nil), io.Discard)
	require.NoError(t, err)
	err = run(context.Background(), cfg, nil)
	require.Error(t, err)
	msg := flagenv.Explain(err)
	require.NotContains(t, msg, "\n")
	require.Contains(t, msg, ln.Addr().String())
	require.Contains(t, msg, "address already in use (another process listens there")
}

func TestRunServesAndStops(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]string, 1)
	done := make(chan error, 1)
	cfg := config{Listen: "127.0.0.1:0", ControlAddr: "127.0.0.1:0", Dir: t.TempDir(), Checkpoints: []string{"m.safetensors"}, StepDelay: -1, LogLevel: zapcore.ErrorLevel}
	go func() {
		done <- run(ctx, cfg, func(api, control string) { addrs <- [2]string{api, control} })
	}()
	var a [2]string
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatalf("run returned early: %v", err)
	}
	resp, err := http.Get("http://" + a[0] + "/api/models/checkpoints")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, `["m.safetensors"]`, string(b))
	resp, err = http.Get("http://" + a[1] + "/control/stats")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
}
