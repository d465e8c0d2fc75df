package redisserver

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// A `comfyfleet dev` killed by SIGKILL must not leave its redis-server
// running, and what was written survives: the kernel sends the child
// SIGTERM (Pdeathsig), on which it writes out its append-only file.
func TestKilledParentLeavesNoOrphan(t *testing.T) {
	t.Parallel()
	ctx := ctx(t)
	dir := t.TempDir()
	parent := testenv.StartHelperProcess(t, parentEnv+"="+dir)
	line := parent.ReadLine(t)
	var pid int
	var url string
	_, err := fmt.Sscanf(line, "%d %s", &pid, &url)
	require.NoError(t, err, "report %q", line)
	c := client(t, &Server{url: url}, 0)
	require.NoError(t, c.Set(ctx, "written-before-the-kill", "v", 0).Err())
	require.False(t, exited(pid), "redis-server %d runs", pid)

	require.NoError(t, parent.Cmd.Process.Kill())
	_ = parent.Cmd.Wait()
	require.Eventually(t, func() bool { return exited(pid) }, 10*time.Second, 10*time.Millisecond,
		"redis-server %d still runs after its parent was killed", pid)

	c = client(t, start(t, dir, BackendRedisServer), 0)
	assert.Equal(t, "v", c.Get(ctx, "written-before-the-kill").Val())
}

// exited says whether pid is gone or a zombie: an orphan's new parent
// (init, or the container's first process) may be slow to reap it.
func exited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) == 0 || fields[0] == "Z" || fields[0] == "X"
}
