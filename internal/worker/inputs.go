package worker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Input files: base64 or a data URI in the message (worker-comfyui's
// form), an https URL the worker downloads through the SSRF guard, or a
// blob-store key for files too large for a NATS message. Each is streamed
// to ComfyUI with its sniffed content type, several at once, into the
// job's own subfolder.

// errUploadsFailed is worker-comfyui's message when any input failed.
const errUploadsFailed = "Failed to upload one or more input images"

// inputError is a per-input failure; its text is the detail line.
type inputError struct{ msg string }

func (e *inputError) Error() string { return e.msg }

func inputErrorf(format string, args ...any) error {
	return &inputError{msg: fmt.Sprintf(format, args...)}
}

// isURL reports whether an image value is a URL rather than base64 (':'
// is not in the base64 alphabet, and a data URI starts with "data:").
func isURL(s string) bool {
	l := strings.ToLower(strings.TrimSpace(s[:min(len(s), 8)]))
	return strings.HasPrefix(l, "https://") || strings.HasPrefix(l, "http://")
}

// uploadInputs uploads every input (all are attempted, as in
// worker-comfyui) and returns the workflow pointed at them. Any failure
// fails the job with one detail line per failed input, except ComfyUI
// being unreachable, which gives the job back.
func (ex *execution) uploadInputs(ctx context.Context, images []proto.InputImage, workflow []byte) ([]byte, error) {
	ex.inputs = &inputFiles{jobID: ex.job.ID, attempt: ex.attempt}
	sub := ex.inputs.subfolder()
	stored := make([]string, len(images))
	errs := make([]error, len(images))
	sem := make(chan struct{}, ex.w.cfg.Concurrency)
	var wg sync.WaitGroup
	for i, img := range images {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			stored[i], errs[i] = ex.uploadOne(ctx, img, sub)
			ex.touch()
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var details []string
	for i, err := range errs {
		var ie *inputError
		switch {
		case err == nil:
		case errors.As(err, &ie):
			details = append(details, ie.msg)
		case errors.Is(err, comfy.ErrUnavailable):
			return nil, err
		default:
			details = append(details, fmt.Sprintf("Unexpected error uploading %s: %v", images[i].Name, err))
		}
	}
	if len(details) > 0 {
		return nil, &failure{msg: errUploadsFailed, details: details}
	}
	repl := make(map[string]string, len(images))
	for i, img := range images {
		repl[img.Name] = sub + "/" + stored[i]
	}
	out, _, err := rewriteInputRefs(workflow, repl)
	if err != nil {
		return nil, &failure{msg: fmt.Sprintf("Invalid workflow: %v", err)}
	}
	return out, nil
}

// uploadOne streams one input to ComfyUI and returns the name it stored.
func (ex *execution) uploadOne(ctx context.Context, img proto.InputImage, subfolder string) (string, error) {
	src, err := ex.openInput(ctx, img)
	if err != nil {
		return "", err
	}
	defer src.Close()
	limit := ex.w.cfg.MaxInputBytes
	lr := &capReader{r: src, left: limit}
	br := bufio.NewReaderSize(lr, 4096)
	head, _ := br.Peek(512)
	if lr.err != nil && !errors.Is(lr.err, io.EOF) {
		return "", ex.readError(img, lr.err)
	}
	ex.inputs.sent(img.Name)
	up, err := ex.w.comfy.UploadImage(ctx, img.Name, subfolder, br, contentType(head, img.Name), true)
	if err != nil {
		if lr.err != nil && !errors.Is(lr.err, io.EOF) {
			return "", ex.readError(img, lr.err)
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if errors.Is(err, comfy.ErrUnavailable) {
			return "", err
		}
		var se *comfy.StatusError
		if errors.As(err, &se) {
			return "", inputErrorf("Error uploading %s: %v", img.Name, se)
		}
		return "", inputErrorf("Error uploading %s: %v", img.Name, err)
	}
	ex.inputs.confirmed()
	return up.Name, nil
}

func (ex *execution) readError(img proto.InputImage, err error) error {
	if errors.Is(err, errTooLarge) {
		return inputErrorf("Input %s is larger than the %d-byte limit", img.Name, ex.w.cfg.MaxInputBytes)
	}
	if img.Blob != "" {
		return inputErrorf("Error reading %s from the blob store: %v", img.Name, err)
	}
	return inputErrorf("Error downloading %s: %v", img.Name, err)
}

// openInput opens an input's bytes. Its errors are *inputError.
func (ex *execution) openInput(ctx context.Context, img proto.InputImage) (io.ReadCloser, error) {
	switch {
	case img.Blob != "":
		r, info, err := ex.w.blobs.Get(ctx, img.Blob)
		if err != nil {
			return nil, inputErrorf("Error fetching %s from the blob store: %v", img.Name, err)
		}
		if info.Size > ex.w.cfg.MaxInputBytes {
			r.Close()
			return nil, inputErrorf("Input %s is larger than the %d-byte limit", img.Name, ex.w.cfg.MaxInputBytes)
		}
		return r, nil
	case isURL(img.Image):
		return ex.download(ctx, img)
	}
	data, err := proto.DecodeImageData(img.Image)
	if err != nil {
		return nil, inputErrorf("Error decoding base64 for %s: %v", img.Name, err)
	}
	if int64(len(data)) > ex.w.cfg.MaxInputBytes {
		return nil, inputErrorf("Input %s is larger than the %d-byte limit", img.Name, ex.w.cfg.MaxInputBytes)
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// download opens an input URL through the SSRF guard, bounded by
// InputURLTimeout. Messages never carry the URL's query or user info, nor
// anything the remote side sent: a failure is named by its class, an
// answer by its status.
func (ex *execution) download(ctx context.Context, img proto.InputImage) (io.ReadCloser, error) {
	u, redacted, err := parseInputURL(ex.w.inputs, img.Image)
	where := ""
	if redacted != "" {
		where = " from " + redacted
	}
	if err != nil {
		return nil, inputErrorf("Error downloading %s%s: %v", img.Name, where, err)
	}
	dctx, cancel := context.WithTimeout(ctx, ex.w.cfg.InputURLTimeout)
	req, err := http.NewRequestWithContext(dctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, inputErrorf("Error downloading %s%s: invalid URL", img.Name, where)
	}
	req.Header.Set("User-Agent", "comfyfleet-gpuworker")
	resp, err := ex.w.inputs.Client().Do(req)
	if err != nil {
		cancel()
		why := ssrf.Describe(err)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			why = fmt.Sprintf("timed out after %v", ex.w.cfg.InputURLTimeout)
		}
		return nil, inputErrorf("Error downloading %s%s: %s", img.Name, where, why)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return nil, inputErrorf("Error downloading %s%s: %s", img.Name, where, ssrf.Status(resp.StatusCode))
	}
	if resp.ContentLength > ex.w.cfg.MaxInputBytes {
		resp.Body.Close()
		cancel()
		return nil, inputErrorf("Input %s is larger than the %d-byte limit", img.Name, ex.w.cfg.MaxInputBytes)
	}
	return &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}, nil
}

// parseInputURL parses an input URL and checks it with the guard.
// redacted is the URL as it may appear in messages (ssrf.Redact), "" when
// it does not parse.
func parseInputURL(g *ssrf.Guard, raw string) (u *url.URL, redacted string, err error) {
	u, err = url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, "", errors.New("invalid URL")
	}
	redacted = ssrf.Redact(u)
	if err := g.Check(u); err != nil {
		return nil, redacted, err
	}
	return u, redacted, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

var errTooLarge = errors.New("input too large")

// capReader fails with errTooLarge past left bytes and remembers the first
// error of its source, so an upload that fails can tell whose fault it was.
type capReader struct {
	r    io.Reader
	left int64
	err  error
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left < 0 {
		c.err = errTooLarge
		return 0, c.err
	}
	if err != nil {
		c.err = err
	}
	return n, err
}

// contentType is the input's real type: sniffed from its first bytes, or
// from its name's extension when sniffing finds nothing specific.
func contentType(head []byte, name string) string {
	ct := http.DetectContentType(head)
	if ct != "application/octet-stream" && !strings.HasPrefix(ct, "text/plain") {
		if t, _, err := mime.ParseMediaType(ct); err == nil {
			return t
		}
		return ct
	}
	if t := mimeOf(path.Base(name)); t != "application/octet-stream" {
		return t
	}
	return ct
}
