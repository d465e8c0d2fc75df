package modelcache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/dirlock"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Defaults of Config.
const (
	DefaultTimeout = 30 * time.Minute
	// DefaultMaxFileSize caps one file: 64 GB, past the largest single
	// checkpoints in use.
	DefaultMaxFileSize = 64 << 30
)

// Config configures a cache. The zero value of each optional field is its
// default.
type Config struct {
	// ModelsDir is ComfyUI's models folder (COMFYUI_MODELS_DIR): a file of
	// folder "loras" goes to ModelsDir/loras/. Required.
	ModelsDir string
	// Dir holds the index and the partial downloads (MODEL_CACHE_DIR); ""
	// means ModelsDir/.comfyfleet-cache, which no ComfyUI folder lists. It
	// should be on ModelsDir's file system, so a finished file is renamed
	// into place; elsewhere it is copied beside its folder, under a hidden
	// name, then renamed.
	Dir string
	// Budget is the disk the cached files may take, in bytes; 0 means no
	// limit. Files in use are never evicted: the cache may exceed it
	// while they are, and shrinks when they are released.
	Budget int64
	// MaxFileSize caps one file; 0 means DefaultMaxFileSize.
	MaxFileSize int64
	// Timeout bounds one download; 0 means DefaultTimeout. A download cut
	// by it resumes at the next attempt.
	Timeout time.Duration
	// Guard is the SSRF guard every download goes through. Required.
	Guard *ssrf.Guard
	// HFToken is sent (Authorization: Bearer) to huggingface.co and hf.co
	// and their subdomains only. Secret.
	HFToken string
	// CivitAIToken is sent (Authorization: Bearer) to civitai.com and its
	// subdomains only. Secret.
	CivitAIToken string
	// ProgressEvery throttles progress callbacks; 0 means 250 ms.
	ProgressEvery time.Duration
	Logger        *zap.Logger
}

// Request is one model to fetch.
type Request struct {
	// URL is where it comes from, as the job gave it (it may hold secrets
	// in its query).
	URL string
	// Folder is the ComfyUI model folder ("loras", "checkpoints", …).
	Folder string
	// Name, when set, is the readable part of the file's name; otherwise
	// the URL's last path element (or the server's Content-Disposition).
	Name string
	// SHA256, when set, is verified.
	SHA256 string
	// Headers are sent to the URL's own host only, never on a redirect to
	// another host, and never stored. Secret.
	Headers map[string]string
}

// Handle is a fetched file, held (never evicted) until Release.
type Handle struct {
	// File is its name in its folder: what the workflow's input becomes.
	File string
	// Downloaded: this fetch downloaded it (or waited on the download
	// another fetch started); false for a cache hit.
	Downloaded bool

	c    *Cache
	path string
	once sync.Once
}

// Release lets the file be evicted again. Safe to call more than once.
func (h *Handle) Release() {
	if h == nil {
		return
	}
	h.once.Do(func() { h.c.unpin(h.path) })
}

// Cache is a model cache. It is safe for concurrent use.
type Cache struct {
	cfg Config
	log *zap.Logger

	mu      sync.Mutex
	entries map[string]*entry // by entry key (entryKey)
	pins    map[string]int    // by path relative to ModelsDir ("loras/x.safetensors")
	flights map[string]*flight
	closed  bool
	wg      sync.WaitGroup
	lock    *dirlock.Lock
}

// entry is one URL's cached file, as the index keeps it.
type entry struct {
	Key      string    `json:"key"`
	URL      string    `json:"url"` // proto.ModelURLKey
	Folder   string    `json:"folder"`
	File     string    `json:"file"`
	SHA256   string    `json:"sha256"`
	Size     int64     `json:"size"`
	LastUsed time.Time `json:"last_used"`
	// Private: fetched with credentials of the request's own, so found by
	// its own key only, never by its digest.
	Private bool `json:"private,omitempty"`
}

func (e *entry) rel() string { return e.Folder + "/" + e.File }

// Open opens the cache in cfg.Dir, reading its index: entries whose file
// is gone or changed size are dropped.
func Open(cfg Config) (*Cache, error) {
	if cfg.ModelsDir == "" {
		return nil, errors.New("model cache: no models folder (COMFYUI_MODELS_DIR)")
	}
	if cfg.Guard == nil {
		return nil, errors.New("model cache: no SSRF guard")
	}
	if cfg.Budget < 0 || cfg.MaxFileSize < 0 || cfg.Timeout < 0 {
		return nil, errors.New("model cache: negative budget, size cap or timeout")
	}
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(cfg.ModelsDir, ".comfyfleet-cache")
	}
	if cfg.MaxFileSize == 0 {
		cfg.MaxFileSize = DefaultMaxFileSize
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.ProgressEvery == 0 {
		cfg.ProgressEvery = 250 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	for _, d := range []string{cfg.ModelsDir, cfg.Dir, filepath.Join(cfg.Dir, "partial")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("model cache: %w", err)
		}
	}
	// One process per cache: another's eviction would delete files this
	// one's jobs read.
	lock, err := dirlock.Acquire(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("model cache %s: %w", cfg.Dir, err)
	}
	c := &Cache{cfg: cfg, log: log.Named("modelcache"), entries: map[string]*entry{}, pins: map[string]int{},
		flights: map[string]*flight{}, lock: lock}
	if err := c.load(); err != nil {
		_ = lock.Release()
		return nil, err
	}
	return c, nil
}

// indexFile is the index's path.
func (c *Cache) indexFile() string { return filepath.Join(c.cfg.Dir, "index.json") }

type index struct {
	Version int      `json:"version"`
	Entries []*entry `json:"entries"`
}

func (c *Cache) load() error {
	data, err := os.ReadFile(c.indexFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("model cache: read index: %w", err)
	}
	var idx index
	if err := json.Unmarshal(data, &idx); err != nil {
		// A broken index loses the cache's memory, not its files: they
		// are downloaded again (under the same names) when asked for.
		c.log.Warn("model cache index unreadable; starting empty", zap.Error(err))
		return nil
	}
	dropped := 0
	for _, e := range idx.Entries {
		if e == nil || !validFolder(e.Folder) || !validFile(e.File) {
			dropped++
			continue
		}
		st, err := os.Stat(filepath.Join(c.cfg.ModelsDir, e.Folder, e.File))
		if err != nil || st.Size() != e.Size {
			dropped++
			continue
		}
		c.entries[e.Key] = e
	}
	if dropped > 0 {
		c.log.Info("model cache: dropped index entries whose file is gone", zap.Int("entries", dropped))
		c.mu.Lock()
		err := c.saveLocked()
		c.mu.Unlock()
		return err
	}
	return nil
}

// saveLocked writes the index atomically (a temporary file renamed over
// it). c.mu is held.
func (c *Cache) saveLocked() error {
	idx := index{Version: 1}
	for _, e := range c.entries {
		idx.Entries = append(idx.Entries, e)
	}
	sort.Slice(idx.Entries, func(i, j int) bool { return idx.Entries[i].Key < idx.Entries[j].Key })
	data, err := json.MarshalIndent(idx, "", " ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(c.cfg.Dir, "index-*.tmp")
	if err != nil {
		return fmt.Errorf("model cache: write index: %w", err)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), c.indexFile())
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("model cache: write index: %w", err)
	}
	return nil
}

// persistLocked writes the index, logging a failure: the files are in
// place, and a lost index entry costs one download after a restart.
func (c *Cache) persistLocked() {
	if err := c.saveLocked(); err != nil {
		c.log.Warn("model cache index not saved", zap.Error(err))
	}
}

// List lists the cached files, sorted by URL: the heartbeat's Cached. It
// reads memory only.
func (c *Cache) List() []proto.CachedModel {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]bool{}
	var out []proto.CachedModel
	for _, e := range c.entries {
		k := e.URL + "\x00" + e.rel()
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, proto.CachedModel{URL: e.URL, SHA256: e.SHA256, Folder: e.Folder, File: e.File})
	}
	slices.SortFunc(out, func(a, b proto.CachedModel) int {
		if c := strings.Compare(a.URL, b.URL); c != 0 {
			return c
		}
		return strings.Compare(a.Folder+a.File, b.Folder+b.File)
	})
	return out
}

// Size is the disk the cached files take, in bytes.
func (c *Cache) Size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sizeLocked()
}

func (c *Cache) sizeLocked() int64 {
	var n int64
	for _, size := range c.filesLocked() {
		n += size
	}
	return n
}

// filesLocked is every cached file (by path relative to ModelsDir) with
// its size; entries of several URLs may share one file.
func (c *Cache) filesLocked() map[string]int64 {
	files := map[string]int64{}
	for _, e := range c.entries {
		files[e.rel()] = e.Size
	}
	return files
}

// Close waits for the downloads under way to stop; the caller has
// cancelled the fetches that started them.
func (c *Cache) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
	_ = c.lock.Release()
}

var (
	folderRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)
	sha256Re = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
)

func validFolder(f string) bool { return folderRe.MatchString(f) && f != "." && f != ".." }

func validFile(f string) bool {
	return f != "" && f[0] != '.' && !strings.ContainsAny(f, "/\\\x00") && len(f) <= 255
}

// entryKey is the key of a request in the index and of its flight: the
// folder, the URL's secret-free key, and, when the request carries
// credentials of its own (secret query parameters, headers), a digest of
// them, so a file fetched with one job's credentials is never handed to a
// job without them. The worker's own tokens are not part of it: every job
// on the worker uses them.
func entryKey(r Request) string {
	key := proto.ModelURLKey(r.URL)
	k := r.Folder + "|" + key
	if private(r) {
		h := sha256.New()
		h.Write([]byte(r.URL))
		names := make([]string, 0, len(r.Headers))
		for n := range r.Headers {
			names = append(names, strings.ToLower(n))
		}
		slices.Sort(names)
		for _, n := range names {
			for hn, v := range r.Headers {
				if strings.EqualFold(hn, n) {
					h.Write([]byte("\x00" + n + "\x00" + v))
				}
			}
		}
		k += "|" + hex.EncodeToString(h.Sum(nil))[:16]
	}
	return k
}

// private reports whether r carries credentials of its own.
func private(r Request) bool { return stripped(r.URL, proto.ModelURLKey(r.URL)) || len(r.Headers) > 0 }

// stripped reports whether ModelURLKey dropped something that may be a
// secret from raw: user info or a query parameter.
func stripped(raw, key string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return true
	}
	if u.User != nil {
		return true
	}
	k, err := url.Parse(key)
	if err != nil {
		return true
	}
	kept := k.Query()
	for name := range u.Query() {
		if !kept.Has(name) {
			return true
		}
	}
	return false
}

// pinLocked holds a file; c.mu is held.
func (c *Cache) pinLocked(rel string) { c.pins[rel]++ }

func (c *Cache) unpin(rel string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pins[rel]--; c.pins[rel] <= 0 {
		delete(c.pins, rel)
	}
	if c.evictLocked(0) {
		c.persistLocked()
	}
}

// evictLocked removes least recently used files nobody holds until the
// cache plus room bytes fits the budget, and reports whether it removed
// any. c.mu is held.
func (c *Cache) evictLocked(room int64) bool {
	if c.cfg.Budget <= 0 {
		return false
	}
	files := c.filesLocked()
	var total int64
	for _, s := range files {
		total += s
	}
	if total+room <= c.cfg.Budget {
		return false
	}
	// A file's last use is the latest of its entries'.
	last := map[string]time.Time{}
	for _, e := range c.entries {
		if t, ok := last[e.rel()]; !ok || e.LastUsed.After(t) {
			last[e.rel()] = e.LastUsed
		}
	}
	var order []string
	for rel := range files {
		if c.pins[rel] == 0 {
			order = append(order, rel)
		}
	}
	sort.Slice(order, func(i, j int) bool { return last[order[i]].Before(last[order[j]]) })
	removed := false
	for _, rel := range order {
		if total+room <= c.cfg.Budget {
			break
		}
		if err := os.Remove(filepath.Join(c.cfg.ModelsDir, filepath.FromSlash(rel))); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("evict model file", zap.String("file", rel), zap.Error(err))
			continue
		}
		for k, e := range c.entries {
			if e.rel() == rel {
				delete(c.entries, k)
			}
		}
		total -= files[rel]
		removed = true
		c.log.Info("evicted model file", zap.String("file", rel), zap.Int64("bytes", files[rel]))
	}
	return removed
}

// hitLocked finds the cached file for r: its own entry, or, when r gives
// a digest, any file of that digest in the same folder. c.mu is held.
func (c *Cache) hitLocked(key string, r Request) *entry {
	if e := c.entries[key]; e != nil && (r.SHA256 == "" || strings.EqualFold(e.SHA256, r.SHA256)) {
		return e
	}
	if r.SHA256 == "" {
		return nil
	}
	for _, e := range c.entries {
		if e.Folder == r.Folder && !e.Private && strings.EqualFold(e.SHA256, r.SHA256) {
			return e
		}
	}
	return nil
}

// FolderOf names the model folder that holds any of files (a loader
// input's options, as /object_info lists them), "" when none does: how
// the folder of a loader input the worker does not know is found.
func (c *Cache) FolderOf(files []string) string {
	dirs, err := os.ReadDir(c.cfg.ModelsDir)
	if err != nil {
		return ""
	}
	for _, d := range dirs {
		if !d.IsDir() || !validFolder(d.Name()) {
			continue
		}
		for _, f := range files {
			if f == "" || strings.Contains(f, "..") {
				continue
			}
			if st, err := os.Stat(filepath.Join(c.cfg.ModelsDir, d.Name(), filepath.FromSlash(f))); err == nil && !st.IsDir() {
				return d.Name()
			}
		}
	}
	return ""
}

// Downloading lists the downloads under way, by URL (proto.ModelURLKey),
// with how many fetches wait on each.
func (c *Cache) Downloading() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for _, f := range c.flights {
		out[f.url] += f.waiters
	}
	return out
}
