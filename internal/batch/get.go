package batch

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Get downloads the files of one finished job into dir (made when
// missing), as `comfyfleet get` does: from the blob store, or from their S3
// URLs through the download guard, named as the job's output names them
// (made safe; a name given twice gets its node id in front; a text output
// becomes text-<node>.txt). The result lists the files with their Path
// relative to dir; a file that could not be fetched is named in
// DownloadError, after the others were fetched. A job that is unknown,
// unfinished or did not complete is an error that says so.
func (r *Runner) Get(ctx context.Context, jobID, dir string) (*Result, error) {
	if err := proto.ValidID(jobID); err != nil {
		return nil, fmt.Errorf("job id: %w", err)
	}
	rec, err := r.d.Core.Get(ctx, jobID)
	if errors.Is(err, rdb.ErrNotFound) {
		return nil, fmt.Errorf("job %s not found: unknown, or its record expired", jobID)
	}
	if err != nil {
		return nil, fmt.Errorf("read job %s: %w", jobID, err)
	}
	switch {
	case !rec.Status.Terminal():
		return nil, fmt.Errorf("job %s is %s: it has no files yet", jobID, rec.Status)
	case rec.Status != proto.StatusCompleted:
		return nil, fmt.Errorf("job %s ended %s: %s", jobID, rec.Status, rec.Error)
	}
	res := ResultOf(rec, "", 0, nil)
	if res.DownloadError != "" {
		return &res, errors.New(res.DownloadError)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make %s: %w", dir, err)
	}
	d := downloader{blobs: r.d.Blobs, guard: r.d.Downloads, out: dir}
	d.fetch(ctx, &res)
	return &res, nil
}
