package devstack_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// TestNormalOperationIsQuiet: jobs that run as they should leave no
// warning in the stack's log (a warning there means something to look
// at), and no record names a field twice.
func TestNormalOperationIsQuiet(t *testing.T) {
	t.Parallel()
	_, prefix := testenv.Redis(t)
	cfg := config(t, map[string]string{
		"COMFYFLEET_DIR": t.TempDir(), "LISTEN_ADDR": "127.0.0.1:0", "COMFYFLEET_NATS_PORT": "-1", "COMFYFLEET_WORKERS": "2",
		"REDIS_URL": testenv.RedisURL(), "SHUTDOWN_GRACE": "5s",
	})
	cfg.Common.KeyPrefix = prefix
	core, logs := observer.New(zapcore.InfoLevel)
	cfg.Logger = zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))
	stack, err := devstack.Start(testenv.Context(t, time.Minute), cfg)
	require.NoError(t, err)
	b := &bundle{stack: stack}
	var ids []string
	for range 4 {
		code, out := b.post(t, "/run", example(t))
		require.Equal(t, http.StatusOK, code, "%v", out)
		ids = append(ids, out["id"].(string))
	}
	code, out := b.post(t, "/runsync", example(t))
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "COMPLETED", out["status"], "%v", out)
	for _, id := range ids {
		require.Eventually(t, func() bool {
			_, out := b.post(t, "/status/"+id, "")
			return out["status"] == "COMPLETED"
		}, 30*time.Second, 20*time.Millisecond, id)
	}
	stack.Stop()
	for _, e := range logs.All() {
		require.Less(t, e.Level, zapcore.WarnLevel, "%s %s: %v", e.LoggerName, e.Message, e.ContextMap())
		seen := map[string]bool{}
		for _, f := range e.Context {
			require.False(t, seen[f.Key], "%q twice in %q", f.Key, e.Message)
			seen[f.Key] = true
		}
	}
}
