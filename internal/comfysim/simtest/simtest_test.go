package simtest_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStart(t *testing.T) {
	t.Parallel()
	sim := simtest.Start(t, comfysim.Config{Checkpoints: []string{"a.safetensors"}})
	resp, err := http.Get(sim.URL + "/models/checkpoints")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, `["a.safetensors"]`, string(b))
	resp, err = http.Get(sim.ControlURL + "/control/stats")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.DirExists(t, sim.Dir())
}
