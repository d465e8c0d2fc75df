package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// downloader fetches a finished job's files into <out>/<item>/, URLs
// through the guard.
type downloader struct {
	blobs blob.Store
	guard *ssrf.Guard
	out   string
}

// fetch downloads every file of r into <out>/<item>/<item>_<name> (into
// <out>/<name> for a result without an item) and sets its Path. A file that is already there with the right size is not
// fetched again. The first failure is kept in r.DownloadError; the other
// files are still fetched.
func (d *downloader) fetch(ctx context.Context, r *Result) {
	r.DownloadError = ""
	used := map[string]bool{}
	for i := range r.Files {
		f := &r.Files[i]
		// The item's name in front: a file says what made it wherever it
		// is copied (ComfyUI's own names repeat across items).
		// A job fetched alone (comfyfleet get) has no item: its files go
		// straight into out with their own names.
		name, rel := fileName(f, used), ""
		if r.Item != "" {
			name = r.Item + "_" + name
			rel = r.Item + "/"
		}
		rel += name
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

// fileName picks the file's name inside the item's folder, after the
// item's name: ComfyUI's file name, made safe; a text output becomes
// text-<node>.txt; a name used twice gets its node id in front.
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
		// Errors name the URL without its query (a presigned URL's
		// signature) and never repeat what the server said.
		u, err := url.Parse(f.URL)
		if err != nil {
			return fmt.Errorf("download %s: the output's URL does not parse", f.Filename)
		}
		if err := d.guard.Check(u); err != nil {
			return fmt.Errorf("download %s from %s: %w", f.Filename, ssrf.Redact(u), err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
		if err != nil {
			return fmt.Errorf("download %s from %s: invalid URL", f.Filename, ssrf.Redact(u))
		}
		resp, err := d.guard.Client().Do(req)
		if err != nil {
			return fmt.Errorf("download %s from %s: %s", f.Filename, ssrf.Redact(u), ssrf.Describe(err))
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("download %s from %s: GET answered %s", f.Filename, ssrf.Redact(u), ssrf.Status(resp.StatusCode))
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
	in := &sourceReader{r: src}
	n, err := io.Copy(tmp, in)
	if err != nil {
		if f.URL != "" && in.err != nil {
			return fmt.Errorf("download %s: %s", f.Filename, ssrf.Describe(in.err))
		}
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

// sourceReader remembers its source's error, to tell a failed download
// from a failed write.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// DownloadGuard is the SSRF guard of the CLI's downloads of s3_url
// outputs: allow and allowHTTP are DOWNLOAD_URL_ALLOW and
// DOWNLOAD_URL_ALLOW_HTTP, and the S3 origins of a dev stack (ep.S3Origins,
// from its stack file) are allowed too, on their port, with http when
// theirs is.
func DownloadGuard(allow []string, allowHTTP bool, ep Endpoints) (*ssrf.Guard, error) {
	entries := append([]string(nil), allow...)
	for _, o := range ep.S3Origins {
		u, err := url.Parse(o)
		if err != nil || u.Hostname() == "" {
			continue
		}
		port := u.Port()
		if port == "" {
			port = "443"
			if u.Scheme == "http" {
				port = "80"
			}
		}
		entries = append(entries, net.JoinHostPort(u.Hostname(), port))
		if u.Scheme == "http" {
			allowHTTP = true
		}
	}
	g, err := ssrf.New(ssrf.Config{Use: "download", Allow: entries, AllowHTTP: allowHTTP,
		AllowSetting: "DOWNLOAD_URL_ALLOW", HTTPSetting: "DOWNLOAD_URL_ALLOW_HTTP"})
	if err != nil {
		return nil, fmt.Errorf("DOWNLOAD_URL_ALLOW: %w", err)
	}
	return g, nil
}
