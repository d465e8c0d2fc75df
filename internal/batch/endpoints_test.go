package batch_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/batch"
)

func writeStack(t *testing.T, dir string, pid int) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	data := fmt.Sprintf(`{"api_url":"http://a","nats_url":"nats://n:1","redis_url":"redis://r:2/0","pid":%d}`, pid)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "stack.json"), []byte(data), 0o644))
}

func TestResolveEndpoints(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), ".comfyfleet")
	writeStack(t, dir, os.Getpid())

	ep, err := batch.ResolveEndpoints("nats://x:4222", "", dir, true, "stack.json")
	require.NoError(t, err)
	require.Equal(t, batch.Endpoints{NATSURL: "nats://x:4222", From: "settings"}, ep, "a URL given wins, the other takes its default")

	ep, err = batch.ResolveEndpoints("", "", dir, true, "stack.json")
	require.NoError(t, err)
	require.Equal(t, "nats://n:1", ep.NATSURL)
	require.Equal(t, "redis://r:2/0", ep.RedisURL)

	// No stack and no URLs: the CLI never guesses a fleet at the default
	// addresses; it says where it looked and what to do.
	none := filepath.Join(t.TempDir(), "none")
	_, err = batch.ResolveEndpoints("", "", none, true, "stack.json")
	requireNoFleet(t, err, filepath.Join(none, "stack.json"))

	stale := filepath.Join(t.TempDir(), "stale")
	writeStack(t, stale, 1<<30)
	_, err = batch.ResolveEndpoints("", "", stale, true, "stack.json")
	require.ErrorIs(t, err, batch.ErrStaleStack)
}

// requireNoFleet checks the error of a CLI that found no fleet: ErrNoFleet,
// naming the stack file it looked for and both ways out.
func requireNoFleet(t *testing.T, err error, looked string) {
	t.Helper()
	require.ErrorIs(t, err, batch.ErrNoFleet)
	for _, want := range []string{looked, "start `comfyfleet dev`", "NATS_URL", "REDIS_URL"} {
		require.Contains(t, err.Error(), want)
	}
}

// TestResolveEndpointsSearchesParents changes the working directory, so it
// cannot run in parallel with the others.
func TestResolveEndpointsSearchesParents(t *testing.T) {
	root := t.TempDir()
	writeStack(t, filepath.Join(root, ".comfyfleet"), os.Getpid())
	deep := filepath.Join(root, "a", "b")
	require.NoError(t, os.MkdirAll(deep, 0o755))
	t.Chdir(deep)
	ep, err := batch.ResolveEndpoints("", "", ".comfyfleet", false, "stack.json")
	require.NoError(t, err)
	require.Equal(t, "nats://n:1", ep.NATSURL)
	require.Equal(t, filepath.Join(root, ".comfyfleet", "stack.json"), ep.From)

	// A folder name found in no parent: no fleet.
	_, err = batch.ResolveEndpoints("", "", ".comfyfleet-nowhere", false, "stack.json")
	requireNoFleet(t, err, filepath.Join(".comfyfleet-nowhere", "stack.json"))
	require.Contains(t, err.Error(), "in the working directory or a parent")
}
