package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/proto"
)

// downloader fetches a finished job's files into <out>/<item>/.
type downloader struct {
	blobs blob.Store
	http  *http.Client
	out   string
}

// fetch downloads every file of r and sets its Path. A file that is
// already there with the right size is not fetched again. The first
// failure is kept in r.DownloadError; the other files are still fetched.
func (d *downloader) fetch(ctx context.Context, r *Result) {
	r.DownloadError = ""
	used := map[string]bool{}
	for i := range r.Files {
		f := &r.Files[i]
		name := fileName(f, used)
		rel := r.Item + "/" + name
		dst := filepath.Join(d.out, r.Item, name)
		if fi, err := os.Stat(dst); err == nil && (f.Size == 0 || fi.Size() == f.Size) && f.Kind != "text" {
			f.Path = rel
			continue
		}
		if err := d.fetchOne(ctx, f, dst); err != nil {
			if r.DownloadError == "" {
				r.DownloadError = err.Error()
			}
			continue
		}
		f.Path = rel
	}
}

// fileName picks the file's name inside the item's folder: ComfyUI's file
// name, made safe; a text output becomes text-<node>.txt; a name used
// twice gets its node id in front.
func fileName(f *File, used map[string]bool) string {
	name := SafeName(filepath.Base(strings.ReplaceAll(f.Filename, "\\", "/")))
	if f.Kind == "text" && f.Filename == "" {
		name = "text-" + SafeName(f.NodeID) + ".txt"
	}
	if used[name] {
		name = SafeName(f.NodeID) + "_" + name
	}
	for n := 2; used[name]; n++ {
		ext := filepath.Ext(name)
		name = strings.TrimSuffix(name, ext) + "-" + strconv.Itoa(n) + ext
	}
	used[name] = true
	return name
}

func (d *downloader) fetchOne(ctx context.Context, f *File, dst string) (err error) {
	var src io.Reader
	switch {
	case f.Blob != "":
		if d.blobs == nil {
			return fmt.Errorf("download %s: no blob store", f.Blob)
		}
		rc, _, err := d.blobs.Get(ctx, f.Blob)
		if err != nil {
			if errors.Is(err, blob.ErrNotFound) {
				return fmt.Errorf("download %s: the blob is gone (outputs in the blob store expire, by default after %s)", f.Filename, blob.DefaultTTL)
			}
			return fmt.Errorf("download %s: %w", f.Filename, err)
		}
		defer rc.Close()
		src = rc
	case f.URL != "":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
		if err != nil {
			return fmt.Errorf("download %s: %w", f.Filename, err)
		}
		client := d.http
		if client == nil {
			client = http.DefaultClient
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("download %s: %w", f.Filename, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("download %s: GET answered %s", f.Filename, resp.Status)
		}
		src = resp.Body
	case f.Kind == "text":
		src = strings.NewReader(f.data)
	case f.data != "":
		data, err := proto.DecodeImageData(f.data)
		if err != nil {
			return fmt.Errorf("download %s: %w", f.Filename, err)
		}
		src = strings.NewReader(string(data))
	default:
		return fmt.Errorf("download %s: the output names no blob, URL or data", f.Filename)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("download %s: %w", f.Filename, err)
	}
	// Write beside the target and rename, so a file at its final name is
	// always whole, whenever the run is killed.
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*.part")
	if err != nil {
		return fmt.Errorf("download %s: %w", f.Filename, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	n, err := io.Copy(tmp, src)
	if err != nil {
		return fmt.Errorf("download %s: %w", f.Filename, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("download %s: %w", f.Filename, err)
	}
	if f.Size > 0 && n != f.Size && f.Kind != "text" {
		return fmt.Errorf("download %s: got %d bytes, the output says %d", f.Filename, n, f.Size)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("download %s: %w", f.Filename, err)
	}
	if f.Size == 0 {
		f.Size = n
	}
	return nil
}
