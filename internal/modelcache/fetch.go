package modelcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// flight is one download under way, shared by every fetch of its key.
type flight struct {
	done   chan struct{}
	cancel context.CancelFunc
	url    string // proto.ModelURLKey
	// Under Cache.mu: the fetches waiting on it; and, once finished, the
	// result. Each waiter at the end holds one pin on rel.
	waiters  int
	stopped  bool // cancelled: no fetch waits on it any more
	finished bool
	rel      string
	file     string
	err      error

	mu        sync.Mutex
	listeners map[int]func(done, total int64)
	next      int
	last      time.Time
	every     time.Duration
	got, size int64
}

func (f *flight) listen(fn func(done, total int64)) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	if fn != nil {
		f.listeners[f.next] = fn
		if f.got > 0 {
			fn(f.got, f.size) // where it stands
		}
	}
	return f.next
}

func (f *flight) unlisten(id int) {
	f.mu.Lock()
	delete(f.listeners, id)
	f.mu.Unlock()
}

// progress tells every waiter, at most every f.every and always at the
// end (total < 0: unknown).
func (f *flight) progress(done, total int64, final bool) {
	f.mu.Lock()
	f.got, f.size = done, total
	now := time.Now()
	if !final && now.Sub(f.last) < f.every {
		f.mu.Unlock()
		return
	}
	f.last = now
	fns := make([]func(int64, int64), 0, len(f.listeners))
	for _, fn := range f.listeners {
		fns = append(fns, fn)
	}
	f.mu.Unlock()
	for _, fn := range fns {
		fn(done, total)
	}
}

// Fetch returns the cached file of r, downloading it first when the
// cache does not hold it; the file stays until the handle is released.
// Fetches of one URL (and folder, and credentials) share one download;
// progress, when set, hears its bytes (total -1 when unknown). A fetch
// whose ctx ends stops waiting, and the download stops once no fetch
// waits on it (its partial file stays, for a later fetch to resume).
// Errors are *Error, or ctx's.
func (c *Cache) Fetch(ctx context.Context, r Request, progress func(done, total int64)) (*Handle, error) {
	redacted := ssrf.RedactString(r.URL)
	if err := checkRequest(r, redacted); err != nil {
		return nil, err
	}
	key := entryKey(r)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, transient(redacted, "the model cache is closed")
	}
	if e := c.hitLocked(key, r); e != nil {
		if e.Key != key {
			// The same bytes under another URL: this URL knows them now.
			cp := *e
			cp.Key, cp.URL, cp.Private = key, proto.ModelURLKey(r.URL), private(r)
			e = &cp
			c.entries[key] = e
		}
		e.LastUsed = time.Now()
		c.pinLocked(e.rel())
		c.persistLocked()
		c.mu.Unlock()
		return &Handle{File: e.File, c: c, path: e.rel()}, nil
	}
	f := c.flights[key]
	for f != nil && f.stopped {
		// A download nobody waited for any more is stopping: let it
		// leave its partial file, then resume it.
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		c.mu.Lock()
		f = c.flights[key]
	}
	if f == nil {
		dctx, cancel := context.WithCancel(context.Background())
		f = &flight{done: make(chan struct{}), cancel: cancel, url: proto.ModelURLKey(r.URL), listeners: map[int]func(int64, int64){}, every: c.cfg.ProgressEvery}
		c.flights[key] = f
		c.wg.Add(1)
		go c.download(dctx, f, r, key, redacted)
	}
	f.waiters++
	c.mu.Unlock()
	id := f.listen(progress)
	defer f.unlisten(id)
	select {
	case <-f.done:
	case <-ctx.Done():
		c.mu.Lock()
		if !f.finished {
			if f.waiters--; f.waiters == 0 {
				f.stopped = true
				f.cancel()
			}
			c.mu.Unlock()
			return nil, ctx.Err()
		}
		c.mu.Unlock()
		if f.err == nil {
			c.unpin(f.rel) // the pin taken for this fetch
		}
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	return &Handle{File: f.file, Downloaded: true, c: c, path: f.rel}, nil
}

func checkRequest(r Request, redacted string) error {
	switch {
	case !validFolder(r.Folder):
		return permanent(redacted, "folder %q is not a model folder's name (a plain name such as loras or checkpoints)", r.Folder)
	case r.SHA256 != "" && !sha256Re.MatchString(r.SHA256):
		return permanent(redacted, "sha256 must be 64 hex digits")
	case r.Name != "" && !validFile(r.Name):
		return permanent(redacted, "name %q is not a plain file name", r.Name)
	}
	return nil
}

// download runs one flight to its end and hands the result to its
// waiters.
func (c *Cache) download(dctx context.Context, f *flight, r Request, key, redacted string) {
	defer c.wg.Done()
	defer f.cancel()
	ctx, cancel := context.WithTimeout(dctx, c.cfg.Timeout)
	defer cancel()
	start := time.Now()
	e, err := c.get(ctx, f, r, key, redacted)
	if err != nil && ctx.Err() != nil && dctx.Err() == nil {
		err = transient(redacted, "timed out after %v (MODEL_DOWNLOAD_TIMEOUT); the download resumes at the next attempt", c.cfg.Timeout)
	}
	c.mu.Lock()
	delete(c.flights, key)
	f.finished, f.err = true, err
	if err == nil {
		e.LastUsed = time.Now()
		c.entries[key] = e
		f.rel, f.file = e.rel(), e.File
		c.pins[f.rel] += f.waiters
		c.evictLocked(0)
		c.persistLocked()
	}
	c.mu.Unlock()
	close(f.done)
	if err != nil {
		c.log.Info("model download failed", zap.String("url", redacted), zap.Error(err))
		return
	}
	c.log.Info("model downloaded", zap.String("url", redacted), zap.String("file", e.rel()), zap.Int64("bytes", e.Size),
		zap.Duration("took", time.Since(start)))
}

// partial is the state of a partial download beside its bytes.
type partial struct {
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
}

// get downloads r into the folder and returns its entry.
func (c *Cache) get(ctx context.Context, f *flight, r Request, key, redacted string) (*entry, error) {
	u, err := url.Parse(strings.TrimSpace(r.URL))
	if err != nil {
		return nil, permanent(redacted, "the URL does not parse")
	}
	if err := c.cfg.Guard.Check(u); err != nil {
		return nil, permanent(redacted, "%s", ssrf.Describe(err))
	}
	sum := sha256.Sum256([]byte(key))
	part := filepath.Join(c.cfg.Dir, "partial", hex.EncodeToString(sum[:16])+".part")
	meta := part + ".json"
	for try := 0; ; try++ {
		e, restart, err := c.getOnce(ctx, f, r, u, redacted, part, meta)
		if restart && try == 0 {
			_ = os.Remove(part)
			_ = os.Remove(meta)
			continue
		}
		return e, err
	}
}

// getOnce makes one request. restart: the partial file cannot be resumed;
// start again from nothing.
func (c *Cache) getOnce(ctx context.Context, f *flight, r Request, u *url.URL, redacted, part, meta string) (_ *entry, restart bool, _ error) {
	var offset int64
	var prev partial
	if st, err := os.Stat(part); err == nil && st.Size() > 0 {
		if data, err := os.ReadFile(meta); err == nil && json.Unmarshal(data, &prev) == nil && prev.validator() != "" {
			offset = st.Size()
		}
	}
	h := sha256.New()
	if offset > 0 {
		if err := hashFile(part, h); err != nil {
			return nil, true, nil
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, false, permanent(redacted, "the URL does not parse")
	}
	req.Header.Set("User-Agent", "comfyfleet-gpuworker")
	for n, v := range r.Headers {
		req.Header.Set(n, v)
	}
	if tok := c.tokenFor(u.Hostname()); tok != "" && req.Header.Get("Authorization") == "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
		req.Header.Set("If-Range", prev.validator())
	}
	resp, err := c.client(u, r).Do(req)
	if err != nil {
		var ref *ssrf.Refusal
		if errors.As(err, &ref) {
			return nil, false, permanent(redacted, "%s", ref.Error())
		}
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		return nil, false, transient(redacted, "%s", ssrf.Describe(err))
	}
	defer resp.Body.Close()
	total := resp.ContentLength
	switch {
	case resp.StatusCode == http.StatusOK:
		offset = 0
		h.Reset()
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		start, size, ok := contentRange(resp.Header.Get("Content-Range"))
		if !ok || start != offset {
			return nil, true, transient(redacted, "the server answered the resumed download with another range")
		}
		total = size
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0:
		return nil, true, transient(redacted, "the server refused to resume the download")
	default:
		return nil, false, c.statusError(redacted, u, resp.StatusCode)
	}
	if total > c.cfg.MaxFileSize {
		return nil, false, permanent(redacted, "the file is %d bytes, over the size cap of %d bytes (MODEL_MAX_GB)", total, c.cfg.MaxFileSize)
	}
	if c.cfg.Budget > 0 && total > c.cfg.Budget {
		return nil, false, permanent(redacted, "the file is %d bytes, over the cache's budget of %d bytes (MODEL_CACHE_GB)", total, c.cfg.Budget)
	}
	if total > 0 {
		c.mu.Lock()
		if c.evictLocked(total - offset) {
			c.persistLocked()
		}
		c.mu.Unlock()
	}
	flag := os.O_CREATE | os.O_WRONLY | os.O_APPEND
	if offset == 0 {
		flag |= os.O_TRUNC
	}
	out, err := os.OpenFile(part, flag, 0o644)
	if err != nil {
		return nil, false, transient(redacted, "cannot write the partial file: %v", err)
	}
	next := partial{ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
	if data, err := json.Marshal(next); err == nil {
		_ = os.WriteFile(meta, data, 0o644)
	}
	done, err := c.copy(ctx, f, out, h, resp.Body, offset, total, redacted)
	if cerr := out.Sync(); err == nil && cerr != nil {
		err = transient(redacted, "cannot write the partial file: %v", cerr)
	}
	if cerr := out.Close(); err == nil && cerr != nil {
		err = transient(redacted, "cannot write the partial file: %v", cerr)
	}
	var me *Error
	if errors.As(err, &me) && me.Permanent {
		_ = os.Remove(part)
		_ = os.Remove(meta)
	}
	if err != nil {
		return nil, false, err
	}
	f.progress(done, total, true)
	digest := hex.EncodeToString(h.Sum(nil))
	if r.SHA256 != "" && !strings.EqualFold(r.SHA256, digest) {
		_ = os.Remove(part)
		_ = os.Remove(meta)
		return nil, false, permanent(redacted, "sha256 mismatch: the file's is %s, the job gives %s", digest, strings.ToLower(r.SHA256))
	}
	name := fileName(r, u, resp.Header.Get("Content-Disposition"), digest)
	if err := c.place(part, r.Folder, name, done); err != nil {
		return nil, false, transient(redacted, "cannot move the file into %s: %v", r.Folder, err)
	}
	_ = os.Remove(meta)
	return &entry{Key: entryKey(r), URL: proto.ModelURLKey(r.URL), Folder: r.Folder, File: name, SHA256: digest, Size: done,
		Private: private(r)}, false, nil
}

func (p partial) validator() string {
	if p.ETag != "" && !strings.HasPrefix(p.ETag, "W/") {
		return p.ETag
	}
	return p.LastModified
}

// copy streams body into out and h from offset, within the size cap,
// reporting progress; it returns the file's size so far.
func (c *Cache) copy(ctx context.Context, f *flight, out io.Writer, h io.Writer, body io.Reader, offset, total int64, redacted string) (int64, error) {
	buf := make([]byte, 1<<20)
	done := offset
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			done += int64(n)
			if done > c.cfg.MaxFileSize {
				return done, permanent(redacted, "the file is over the size cap of %d bytes (MODEL_MAX_GB)", c.cfg.MaxFileSize)
			}
			if _, err := out.Write(buf[:n]); err != nil {
				return done, transient(redacted, "cannot write the partial file: %v", err)
			}
			h.Write(buf[:n])
			f.progress(done, total, false)
		}
		if errors.Is(rerr, io.EOF) {
			if total >= 0 && done != total {
				return done, transient(redacted, "connection closed by the server after %d of %d bytes; the download resumes at the next attempt", done, total)
			}
			return done, nil
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return done, ctx.Err()
			}
			return done, transient(redacted, "%s after %d bytes; the download resumes at the next attempt", ssrf.Describe(rerr), done)
		}
	}
}

// statusError is the error of an answer other than the file.
func (c *Cache) statusError(redacted string, u *url.URL, code int) error {
	status := ssrf.Status(code)
	switch {
	case code == http.StatusNotFound || code == http.StatusGone:
		return permanent(redacted, "not found (%s)", status)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		hint := ""
		switch host := u.Hostname(); {
		case isHF(host) && c.cfg.HFToken == "":
			hint = "; gated or private Hugging Face files need the worker's HF_TOKEN"
		case isCivitAI(host) && c.cfg.CivitAIToken == "":
			hint = "; CivitAI downloads may need the worker's CIVITAI_TOKEN"
		}
		return permanent(redacted, "access denied (%s)%s", status, hint)
	case code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests:
		return permanent(redacted, "refused by the server (%s)", status)
	}
	return transient(redacted, "the server answered %s", status)
}

// contentRange parses "bytes start-end/size".
func contentRange(v string) (start, size int64, ok bool) {
	v, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, sz, found := strings.Cut(v, "/")
	if !found {
		return 0, 0, false
	}
	a, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	size, err2 := strconv.ParseInt(sz, 10, 64)
	if sz == "*" {
		size, err2 = -1, nil
	}
	return start, size, err1 == nil && err2 == nil
}

func hashFile(p string, h hash.Hash) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(h, f)
	return err
}

// client is the guard's client for one request: on a redirect to another
// host, the request's own headers are dropped, and the Authorization
// header becomes the worker's token for the new host, or none.
func (c *Cache) client(orig *url.URL, r Request) *http.Client {
	base := c.cfg.Guard.Client()
	return &http.Client{
		Transport: base.Transport,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if base.CheckRedirect != nil {
				if err := base.CheckRedirect(req, via); err != nil {
					return err
				}
			}
			if strings.EqualFold(req.URL.Host, orig.Host) {
				return nil // Go's client carries the headers on to the same host
			}
			for n := range r.Headers {
				req.Header.Del(n)
			}
			req.Header.Del("Authorization")
			if tok := c.tokenFor(req.URL.Hostname()); tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			return nil
		},
	}
}

// tokenFor is the worker's token for host: HF_TOKEN for Hugging Face's
// hosts, CIVITAI_TOKEN for CivitAI's, else none.
func (c *Cache) tokenFor(host string) string {
	switch {
	case isHF(host):
		return c.cfg.HFToken
	case isCivitAI(host):
		return c.cfg.CivitAIToken
	}
	return ""
}

func isHF(host string) bool { return under(host, "huggingface.co") || under(host, "hf.co") }

func isCivitAI(host string) bool { return under(host, "civitai.com") }

// under reports whether host is domain or one of its subdomains.
func under(host, domain string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == domain || strings.HasSuffix(host, "."+domain)
}

// fileName is the cached file's name: the readable base (r.Name, the
// URL's last path element, or the server's Content-Disposition name when
// the URL's has no extension), its characters kept to a safe set, then
// "-" and the first 12 hex digits of its SHA-256, then its extension
// (.safetensors when none is known).
func fileName(r Request, u *url.URL, disposition, digest string) string {
	base := r.Name
	if base == "" {
		base = path.Base(u.Path)
		if path.Ext(base) == "" {
			if _, params, err := mime.ParseMediaType(disposition); err == nil && params["filename"] != "" {
				base = path.Base(strings.ReplaceAll(params["filename"], "\\", "/"))
			}
		}
	}
	base = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_', r == '+':
			return r
		}
		return '_'
	}, base)
	base = strings.TrimLeft(base, ".")
	ext := path.Ext(base)
	if len(ext) > 16 || len(ext) < 2 {
		ext = ""
	}
	stem := strings.TrimSuffix(base, ext)
	if stem == "" || stem == "_" {
		stem = "model"
	}
	if len(stem) > 100 {
		stem = stem[:100]
	}
	if ext == "" {
		ext = ".safetensors"
	}
	return stem + "-" + digest[:12] + strings.ToLower(ext)
}

// place moves a finished partial file into the folder as name, atomically
// (a rename; across file systems, a copy to a hidden name beside it
// first). A file of that name and size is the same content (the name
// holds its digest): the partial file is dropped.
func (c *Cache) place(part, folder, name string, size int64) error {
	dir := filepath.Join(c.cfg.ModelsDir, folder)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dst := filepath.Join(dir, name)
	if st, err := os.Stat(dst); err == nil && st.Size() == size {
		return os.Remove(part)
	}
	err := os.Rename(part, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	tmp := filepath.Join(dir, "."+name+".part")
	if err := copyFile(part, tmp); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Remove(part)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
