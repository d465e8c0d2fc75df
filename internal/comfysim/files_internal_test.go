package comfysim

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/node"
)

func TestSaveImagePathCounter(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sp, err := saveImagePath(nil, "ComfyUI", dir, 8, 8, "test")
	require.NoError(t, err)
	require.Equal(t, int64(1), sp.Counter)
	require.Equal(t, "", sp.Subfolder)
	sp, err = saveImagePath(nil, "a/b/../c/x", dir, 8, 8, "test")
	require.NoError(t, err)
	require.Equal(t, "a/c", sp.Subfolder)
	require.Equal(t, "x", sp.Filename)
	_, err = saveImagePath(nil, "/abs/x", dir, 8, 8, "test")
	require.Error(t, err)
	var ne *node.Error
	require.ErrorAs(t, err, &ne)
	require.Equal(t, "Exception", ne.Type)
}

func TestPySplitext(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][2]string{
		"cat.png": {"cat", ".png"}, "a.tar.gz": {"a.tar", ".gz"}, ".bashrc": {".bashrc", ""}, "dir.d/file": {"dir.d/file", ""},
		"x": {"x", ""}, "..png": {"..png", ""},
	} {
		b, e := pySplitext(in)
		require.Equal(t, want, [2]string{b, e}, in)
	}
}
