package batch_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// `comfyfleet status <job>` says how the job's webhook delivery ended: a
// receiver that never took it is seen without reading the logs.
func TestStatusShowsWebhookOutcome(t *testing.T) {
	t.Parallel()
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(hook.Close)
	f := setupFleet(t, time.Millisecond, "WEBHOOK_ALLOW", "127.0.0.1:*", "WEBHOOK_RETRIES", "1", "WEBHOOK_RETRY_DELAY", "10ms")
	ctx := testenv.Context(t, time.Minute)
	job := &proto.Job{ID: "hooked", Input: json.RawMessage(`{"workflow":` + string(exampleWorkflow(t)) + `}`), Webhook: hook.URL + "/done"}
	require.NoError(t, f.b.Core.Submit(ctx, proto.SourceBatch, job, false))
	require.Eventually(t, func() bool {
		rec, err := f.b.DB.Get(ctx, "hooked")
		return err == nil && rec.Webhook != nil
	}, 30*time.Second, 20*time.Millisecond, "the delivery ends")
	var st bytes.Buffer
	require.NoError(t, f.runner.Status(ctx, "hooked", &st, false))
	require.Contains(t, st.String(), "status     COMPLETED\n")
	require.Contains(t, st.String(), "webhook    failed after 2 attempts: answered 503 Service Unavailable\n")
}
