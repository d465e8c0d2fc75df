package runpod_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
)

// A full interactive lane answers 429 while the batch lane of the same
// pool still takes jobs.
func TestBackpressurePerLane(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{MaxQueuedPerLane: 2}, 1, 0)
	in := string(runpodtest.Input(runpodtest.Mock{}))
	var last map[string]any
	require.Eventually(t, func() bool {
		var code int
		code, last = s.call(t, 0, "POST", "/run", `{"input":`+in+`}`)
		return code == http.StatusTooManyRequests
	}, 20*time.Second, 50*time.Millisecond, "no worker drains the interactive lane, so it fills")
	require.Contains(t, last["error"], "the interactive lane of pool default is full")
	require.Contains(t, last["error"], "the limit is 2 per lane")

	code, out := s.call(t, 0, "POST", "/run", `{"input":`+in+`,"policy":{"lowPriority":true}}`)
	require.Equal(t, http.StatusOK, code, "the batch lane is not full: %v", out)
}
