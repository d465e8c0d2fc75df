package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

func acquire(t *testing.T, dir string) *Lock {
	t.Helper()
	l, err := Acquire(dir)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Release() })
	return l
}

func requireHeldBy(t *testing.T, err error, dir string, pid int) *HeldError {
	t.Helper()
	var held *HeldError
	require.ErrorAs(t, err, &held)
	assert.Equal(t, dir, held.Dir)
	assert.Equal(t, pid, held.PID)
	assert.Contains(t, err.Error(), fmt.Sprintf("folder %s is in use by process %d (", dir, pid))
	assert.Contains(t, err.Error(), "); stop it or use another --dir")
	return held
}

func TestSecondAcquireFailsWhileHeld(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "a", ".comfyfleet")
	l := acquire(t, dir)
	assert.Equal(t, dir, l.Dir())

	_, err := Acquire(dir)
	held := requireHeldBy(t, err, dir, os.Getpid())
	assert.Equal(t, command(), held.Command)
	assert.True(t, strings.HasPrefix(held.Command, "dirlock.test"), held.Command)

	require.NoError(t, l.Release())
	acquire(t, dir)
}

func TestLockFileNamesTheHolder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	l := acquire(t, dir)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("%d\n%s\n", os.Getpid(), command()), string(data))

	require.NoError(t, l.Release())
	data, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Empty(t, data, "a released lock names nobody")
}

func TestReleaseIsIdempotent(t *testing.T) {
	t.Parallel()
	l := acquire(t, t.TempDir())
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { assert.NoError(t, l.Release()) })
	}
	wg.Wait()
	assert.NoError(t, l.Release())
	var nilLock *Lock
	assert.NoError(t, nilLock.Release())
}

func TestOneOfManyAcquires(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		locks []*Lock
		held  int
	)
	for range 8 {
		wg.Go(func() {
			l, err := Acquire(dir)
			mu.Lock()
			defer mu.Unlock()
			var h *HeldError
			switch {
			case err == nil:
				locks = append(locks, l)
			case errors.As(err, &h):
				held++
			default:
				t.Errorf("acquire: %v", err)
			}
		})
	}
	wg.Wait()
	assert.Len(t, locks, 1)
	assert.Equal(t, 7, held)
	for _, l := range locks {
		require.NoError(t, l.Release())
	}
}

func TestAcquireErrorNamesThePath(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	_, err := Acquire(file)
	assert.ErrorContains(t, err, file)
	var held *HeldError
	assert.False(t, errors.As(err, &held))
}

// holder runs this test binary as helperMain on dir and waits until it
// holds the lock.
func holder(t *testing.T, dir string) *testenv.HelperProcess {
	t.Helper()
	h := testenv.StartHelperProcess(t, helperEnv+"="+dir)
	require.Equal(t, "held", h.ReadLine(t))
	_, err := Acquire(dir)
	requireHeldBy(t, err, dir, h.Cmd.Process.Pid)
	return h
}

func TestHeldByAnotherProcess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	h := holder(t, dir)
	_, err := Acquire(dir)
	var held *HeldError
	require.ErrorAs(t, err, &held)
	assert.True(t, strings.HasPrefix(held.Command, "dirlock.test -test.run=^$"), held.Command)

	// The helper releases when its stdin closes, and exits.
	require.NoError(t, h.Stdin.Close())
	require.NoError(t, h.Cmd.Wait())
	acquire(t, dir)
}

func TestAnotherProcessSeesOurLock(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	acquire(t, dir)
	h := testenv.StartHelperProcess(t, helperEnv+"="+dir)
	assert.Equal(t, fmt.Sprintf("held-by %d", os.Getpid()), h.ReadLine(t))
}

func TestKilledHolderLeavesTheFolderFree(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	h := holder(t, dir)
	require.NoError(t, h.Cmd.Process.Kill())
	_ = h.Cmd.Wait() // the kernel drops a process's locks before Wait returns

	acquire(t, dir)
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(data), fmt.Sprintf("%d\n", os.Getpid())), "the dead holder's pid is replaced")
}
