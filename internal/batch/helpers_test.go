package batch_test

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// fleet is a dev stack (dispatcher, adapter, two workers on emulators,
// its own NATS, records under a test prefix in the test Redis) and a
// Runner and connections to it, as the CLI would have.
type fleet struct {
	stack  *devstack.Stack
	b      *backend.Backend
	runner *batch.Runner
	nc     *nats.Conn
	js     jetstream.JetStream
}

// devSettings are the settings `comfyfleet dev` would get from these
// variables, every other one at its default.
func devSettings(t *testing.T, env map[string]string) devstack.Config {
	t.Helper()
	var cfg devstack.Config
	fs := flagenv.New("comfyfleet dev", "")
	cfg.Bind(fs)
	require.NoError(t, fs.Parse(nil, func(name string) string { return env[name] }))
	return cfg
}

func setupFleet(t *testing.T, stepDelay time.Duration, more ...string) *fleet {
	t.Helper()
	_, prefix := testenv.Redis(t)
	ctx := testenv.Context(t, time.Minute)
	env := map[string]string{
		"COMFYFLEET_DIR": t.TempDir(), "LISTEN_ADDR": "127.0.0.1:0", "COMFYFLEET_NATS_PORT": "-1",
		"COMFYFLEET_WORKERS": "2", "COMFYSIM_STEP_DELAY": stepDelay.String(), "REDIS_URL": testenv.RedisURL(),
		"SHUTDOWN_GRACE": "5s",
	}
	for i := 0; i+1 < len(more); i += 2 { // more settings, name and value
		env[more[i]] = more[i+1]
	}
	cfg := devSettings(t, env)
	cfg.Common.KeyPrefix = prefix
	setting, err := cfg.Finish()
	require.NoError(t, err, setting)
	cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	stack, err := devstack.Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(stack.Stop)
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	// The CLI attaches to the stack's streams; it never reconfigures them.
	b, err := backend.Open(ctx, backend.Config{Name: "batch-test", NATSURL: stack.Info.NATSURL,
		RedisURL: testenv.RedisURL(), DB: rdb.Options{Prefix: prefix}, Attach: true, Logger: log})
	require.NoError(t, err)
	t.Cleanup(b.Close)
	runner := batch.New(batch.Deps{Queue: b.Queue, Core: b.Core, DB: b.DB, Blobs: b.Blobs, Logger: log})
	nc, js := (&testenv.NATS{URL: stack.Info.NATSURL}).Connect(t)
	return &fleet{stack: stack, b: b, runner: runner, nc: nc, js: js}
}

// exampleWorkflow is examples/txt2img.json's workflow.
func exampleWorkflow(t *testing.T) json.RawMessage {
	t.Helper()
	data, err := os.ReadFile("../../examples/txt2img.json")
	require.NoError(t, err)
	var req struct {
		Input struct {
			Workflow json.RawMessage `json:"workflow"`
		} `json:"input"`
	}
	require.NoError(t, json.Unmarshal(data, &req))
	return req.Input.Workflow
}

// sweep makes n items of the example workflow, seeds 1..n.
func sweep(t *testing.T, n int) []batch.Item {
	t.Helper()
	s, err := batch.ParseSet("3.inputs.seed=1.."+itoa(n), nil)
	require.NoError(t, err)
	items, err := batch.Expand([]batch.Item{{Input: json.RawMessage(`{"workflow":` + string(exampleWorkflow(t)) + `}`), Origin: "test"}}, []batch.Set{s}, true)
	require.NoError(t, err)
	return items
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }
