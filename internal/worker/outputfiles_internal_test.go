package worker

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
)

func TestOutputPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, subfolder, filename, want string
		wantErr                         bool
	}{
		{name: "top level", filename: "ComfyUI_00001_.png", want: "ComfyUI_00001_.png"},
		{name: "subfolder", subfolder: "a/b", filename: "x.png", want: "a/b/x.png"},
		{name: "dot-dot subfolder", subfolder: "../etc", filename: "passwd", wantErr: true},
		{name: "dot-dot inside", subfolder: "a/../../b", filename: "x", wantErr: true},
		{name: "absolute", subfolder: "/etc", filename: "passwd", wantErr: true},
		{name: "backslash", subfolder: `a\..\..`, filename: "x", wantErr: true},
		{name: "folder in the name", filename: "../x.png", wantErr: true},
		{name: "no name", subfolder: "a", wantErr: true},
		{name: "dot-dot name", filename: "..", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := outputPath(tt.subfolder, tt.filename)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// TestRemoveOutputFilesStaysInside: only the stored "output" entries go,
// and nothing outside the output folder, even through a link.
func TestRemoveOutputFilesStaysInside(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	out := filepath.Join(base, "output")
	outside := filepath.Join(base, "outside")
	require.NoError(t, os.MkdirAll(filepath.Join(out, "sub"), 0o755))
	require.NoError(t, os.MkdirAll(outside, 0o755))
	for _, p := range []string{filepath.Join(out, "a.png"), filepath.Join(out, "sub", "b.png"), filepath.Join(out, "failed.png"),
		filepath.Join(out, "other-job.png"), filepath.Join(outside, "x.png")} {
		require.NoError(t, os.WriteFile(p, []byte("png"), 0o644))
	}
	require.NoError(t, os.Symlink(outside, filepath.Join(out, "link")))
	file := func(sub, name, typ string) comfy.File {
		return comfy.File{FileRef: comfy.FileRef{Filename: name, Subfolder: sub, Type: typ}}
	}
	files := []comfy.File{file("", "a.png", "output"), file("sub", "b.png", "output"), file("", "failed.png", "output"),
		file("link", "x.png", "output"), file("", "temp.png", "temp"), file("", "gone.png", "output")}
	results := []collected{{}, {}, {err: "Failed to fetch"}, {}, {}, {}}
	err := removeOutputFiles(out, files, results)
	require.Error(t, err, "the link's file is refused")
	require.NoFileExists(t, filepath.Join(out, "a.png"))
	require.NoFileExists(t, filepath.Join(out, "sub", "b.png"))
	require.FileExists(t, filepath.Join(out, "failed.png"), "not stored: kept")
	require.FileExists(t, filepath.Join(out, "other-job.png"), "not the job's")
	require.FileExists(t, filepath.Join(outside, "x.png"), "outside the folder")
}
