package worker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
)

// Outputs left in ComfyUI: ComfyUI keeps every file a prompt saves in its
// output folder, which grows without bound in a container. A worker beside
// its ComfyUI (Config.OutputDir) removes a job's files from it once they
// are stored: only the files the prompt's history names as "output"
// entries, only those that reached the sink, and only inside the folder
// (an os.Root, so neither ".." nor a symbolic link reaches outside it).

// removeOutputs removes the stored output files of a prompt from
// ComfyUI's output folder; results are collect's, one per file. A file
// that cannot be removed is logged and left: the job's outputs are safe in
// the sink either way.
func (ex *execution) removeOutputs(files []comfy.File, results []collected) {
	cfg := ex.w.cfg
	if cfg.OutputDir == "" || cfg.SharedFiles || cfg.KeepFiles {
		return
	}
	if err := removeOutputFiles(cfg.OutputDir, files, results); err != nil {
		ex.log.Warn("remove the job's outputs from comfyui's output folder (COMFYUI_OUTPUT_DIR)",
			zap.String("output_dir", cfg.OutputDir), zap.Error(err))
	}
}

// removeOutputFiles does removeOutputs' work; an error joins every file's.
func removeOutputFiles(dir string, files []comfy.File, results []collected) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open output folder: %w", err)
	}
	defer root.Close()
	var errs []error
	for i, f := range files {
		if results[i].err != "" || f.Type != "output" {
			continue
		}
		rel, err := outputPath(f.Subfolder, f.Filename)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fi, err := root.Lstat(rel)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // gone already, or written elsewhere
		case err != nil:
			errs = append(errs, fmt.Errorf("stat %s: %w", rel, err))
			continue
		case !fi.Mode().IsRegular():
			errs = append(errs, fmt.Errorf("%s is not a regular file", rel))
			continue
		}
		if err := root.Remove(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", rel, err))
		}
	}
	return errors.Join(errs...)
}

// outputPath is the path of an output inside the output folder, from its
// history entry; it refuses what ComfyUI would never write there: an
// absolute or backslashed path, "..", a file name with a folder in it.
func outputPath(subfolder, filename string) (string, error) {
	bad := func() (string, error) {
		return "", fmt.Errorf("output %q in subfolder %q is not a file inside the output folder", filename, subfolder)
	}
	if filename == "" || filename == "." || filename == ".." || strings.ContainsAny(filename, `/\`) ||
		strings.Contains(subfolder, `\`) || path.IsAbs(subfolder) {
		return bad()
	}
	for _, part := range strings.Split(subfolder, "/") {
		if part == ".." {
			return bad()
		}
	}
	return path.Join(subfolder, filename), nil
}
