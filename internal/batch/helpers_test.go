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
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// fleet is a dev stack (dispatcher, adapter, two workers on emulators,
// its own NATS, records under a test prefix in the test Redis) and a
// Runner and connections to it, as the CLI would have.
type fleet struct {
	stack  *devstack.Stack
	b      *backend.Backend
	runner *batch.Runner
	index  *batch.Index
	nc     *nats.Conn
	js     jetstream.JetStream
}

func setupFleet(t *testing.T, stepDelay time.Duration) *fleet {
	t.Helper()
	_, prefix := testenv.Redis(t)
	ctx := testenv.Context(t, time.Minute)
	stack, err := devstack.Start(ctx, devstack.Config{
		Dir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1, Workers: 2, StepDelay: stepDelay,
		RedisURL: testenv.RedisURL(), KeyPrefix: prefix, Grace: 5 * time.Second,
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
	})
	require.NoError(t, err)
	t.Cleanup(stack.Stop)
	b, err := backend.Open(ctx, backend.Config{Name: "batch-test", NATSURL: stack.Info.NATSURL,
		RedisURL: testenv.RedisURL(), KeyPrefix: prefix})
	require.NoError(t, err)
	t.Cleanup(b.Close)
	index := batch.NewIndex(b.Redis, prefix)
	runner := batch.New(batch.Deps{Queue: b.Queue, Records: b.Status, Index: index, Blobs: b.Blobs,
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	nc, js := (&testenv.NATS{URL: stack.Info.NATSURL}).Connect(t)
	return &fleet{stack: stack, b: b, runner: runner, index: index, nc: nc, js: js}
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
