package modelcache_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/modelcache"
	"github.com/comfyfleet/comfyfleet/internal/modelcache/modeltest"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

type bundle struct {
	t      *testing.T
	srv    *modeltest.Server
	models string
	cfg    modelcache.Config
	cache  *modelcache.Cache
}

// setup opens a cache over a temporary models folder whose guard allows
// the loopback file server (http).
func setup(t *testing.T, edit ...func(*modelcache.Config)) *bundle {
	t.Helper()
	srv := modeltest.New(t)
	g, err := ssrf.New(ssrf.Config{Use: "model URL", Allow: []string{srv.Hostport()}, AllowHTTP: true,
		AllowSetting: "MODEL_URL_ALLOW", HTTPSetting: "MODEL_URL_ALLOW_HTTP"})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	b := &bundle{t: t, srv: srv, models: t.TempDir()}
	b.cfg = modelcache.Config{ModelsDir: b.models, Guard: g, Logger: zaptest.NewLogger(t), ProgressEvery: time.Millisecond}
	for _, e := range edit {
		e(&b.cfg)
	}
	b.reopen()
	return b
}

// reopen opens the cache again over the same folders: a worker restart.
func (b *bundle) reopen() {
	b.t.Helper()
	if b.cache != nil {
		b.cache.Close()
	}
	c, err := modelcache.Open(b.cfg)
	require.NoError(b.t, err)
	b.cache = c
	b.t.Cleanup(c.Close)
}

func (b *bundle) fetch(r modelcache.Request) (*modelcache.Handle, error) {
	return b.cache.Fetch(context.Background(), r, nil)
}

// visible lists the files ComfyUI would see in a folder.
func (b *bundle) visible(folder string) []string {
	ents, err := os.ReadDir(filepath.Join(b.models, folder))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(b.t, err)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestFetchNamesByContentAndCaches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := modeltest.File("lora", 3<<20)
	u := b.srv.Put("/detail tweaker.safetensors", data)
	h, err := b.fetch(modelcache.Request{URL: u + "?token=s3cret", Folder: "loras"})
	require.NoError(t, err)
	require.True(t, h.Downloaded)
	want := "detail_tweaker-" + modeltest.SHA256(data)[:12] + ".safetensors"
	require.Equal(t, want, h.File)
	got, err := os.ReadFile(filepath.Join(b.models, "loras", want))
	require.NoError(t, err)
	require.Equal(t, data, got)
	h.Release()

	// Another URL of the same bytes gets the same name; the same URL is
	// not downloaded again.
	u2 := b.srv.Put("/mirror/detail tweaker.safetensors", data)
	h2, err := b.fetch(modelcache.Request{URL: u2, Folder: "loras"})
	require.NoError(t, err)
	require.Equal(t, want, h2.File)
	h3, err := b.fetch(modelcache.Request{URL: u + "?token=s3cret", Folder: "loras"})
	require.NoError(t, err)
	require.False(t, h3.Downloaded)
	require.Equal(t, 1, b.srv.Gets("/detail tweaker.safetensors"))
	require.Equal(t, []string{want}, b.visible("loras"))

	list := b.cache.List()
	require.Len(t, list, 2)
	for _, m := range list {
		require.NotContains(t, m.URL, "s3cret")
		require.Equal(t, modeltest.SHA256(data), m.SHA256)
		require.Equal(t, want, m.File)
	}
	// A digest given by the job finds the file whatever the URL.
	h4, err := b.fetch(modelcache.Request{URL: b.srv.URL + "/nowhere.safetensors", Folder: "loras", SHA256: strings.ToUpper(modeltest.SHA256(data))})
	require.NoError(t, err)
	require.Equal(t, want, h4.File)
	require.Zero(t, b.srv.Gets("/nowhere.safetensors"))
}

// Ten fetches of one URL at once make one download; each hears its
// progress.
func TestConcurrentFetchesShareOneDownload(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := modeltest.File("ckpt", 4<<20)
	u := b.srv.Put("/ckpt.safetensors", data)
	release := b.srv.Hold()
	var wg sync.WaitGroup
	files := make([]string, 10)
	errs := make([]error, 10)
	var mu sync.Mutex
	heard := map[int]int64{}
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := b.cache.Fetch(context.Background(), modelcache.Request{URL: u, Folder: "checkpoints"}, func(done, total int64) {
				mu.Lock()
				heard[i] = done
				mu.Unlock()
			})
			errs[i] = err
			if err == nil {
				files[i] = h.File
				h.Release()
			}
		}()
	}
	// All ten wait on the held request before it is answered.
	require.Eventually(t, func() bool { return b.srv.Gets("/ckpt.safetensors") == 1 }, 10*time.Second, time.Millisecond)
	release()
	wg.Wait()
	for i := range 10 {
		require.NoError(t, errs[i])
		require.Equal(t, files[0], files[i])
	}
	require.Equal(t, 1, b.srv.Gets("/ckpt.safetensors"), "one download")
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, heard, 10)
	for _, done := range heard {
		require.EqualValues(t, len(data), done)
	}
}

// Under a small budget the least recently used file goes, never one in
// use.
func TestEvictionSparesFilesInUse(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *modelcache.Config) { c.Budget = 2500 << 10 })
	get := func(name string) *modelcache.Handle {
		h, err := b.fetch(modelcache.Request{URL: b.srv.Put("/"+name, modeltest.File(name, 1<<20)), Folder: "loras"})
		require.NoError(t, err)
		return h
	}
	a := get("a.safetensors") // held
	bb := get("b.safetensors")
	bb.Release()
	c := get("c.safetensors") // over budget: b goes, a is held
	require.ElementsMatch(t, []string{a.File, c.File}, b.visible("loras"))
	c.Release()
	d := get("d.safetensors") // c goes (a still held, though older)
	require.ElementsMatch(t, []string{a.File, d.File}, b.visible("loras"))
	require.LessOrEqual(t, b.cache.Size(), int64(2500<<10))

	// Everything held: the cache goes over budget, and shrinks once
	// released.
	e := get("e.safetensors")
	require.Len(t, b.visible("loras"), 3)
	a.Release()
	require.ElementsMatch(t, []string{d.File, e.File}, b.visible("loras"))
	d.Release()
	e.Release()
	require.Len(t, b.cache.List(), 2)
}

func TestFailures(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *modelcache.Config) { c.MaxFileSize = 1 << 20 })
	data := modeltest.File("x", 1000)
	u := b.srv.Put("/x.safetensors", data)
	big := b.srv.Put("/big.safetensors", modeltest.File("big", 2<<20))
	for _, tc := range []struct {
		name string
		req  modelcache.Request
		want string
	}{
		{"404", modelcache.Request{URL: b.srv.URL + "/missing.safetensors?sig=abc", Folder: "loras"}, "model " + b.srv.URL + "/missing.safetensors?…: not found (HTTP 404 Not Found)"},
		{"hash mismatch", modelcache.Request{URL: u, Folder: "loras", SHA256: strings.Repeat("ab", 32)}, "sha256 mismatch: the file's is " + modeltest.SHA256(data)},
		{"refused host", modelcache.Request{URL: "http://10.1.2.3:9/x.safetensors", Folder: "loras"}, "MODEL_URL_ALLOW"},
		{"refused scheme", modelcache.Request{URL: "ftp://example.com/x.safetensors", Folder: "loras"}, "only https URLs are accepted"},
		{"size cap", modelcache.Request{URL: big, Folder: "loras"}, "over the size cap of 1048576 bytes (MODEL_MAX_GB)"},
		{"bad folder", modelcache.Request{URL: u, Folder: "../etc"}, "is not a model folder's name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := b.fetch(tc.req)
			var me *modelcache.Error
			require.ErrorAs(t, err, &me)
			require.True(t, me.Permanent, err.Error())
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "abc")
		})
	}
	require.Empty(t, b.visible("loras"), "nothing half-done is visible")
	parts, err := os.ReadDir(filepath.Join(b.models, ".comfyfleet-cache", "partial"))
	require.NoError(t, err)
	require.Empty(t, parts, "a file that failed for good leaves no partial file")
}

// The cache survives a restart: its index is on disk.
func TestRestartKeepsTheCache(t *testing.T) {
	t.Parallel()
	b := setup(t)
	u := b.srv.Put("/keep.safetensors", modeltest.File("keep", 1<<20))
	h, err := b.fetch(modelcache.Request{URL: u, Folder: "vae"})
	require.NoError(t, err)
	h.Release()
	before := b.cache.List()
	b.reopen()
	require.Equal(t, before, b.cache.List())
	h2, err := b.fetch(modelcache.Request{URL: u, Folder: "vae"})
	require.NoError(t, err)
	require.False(t, h2.Downloaded)
	require.Equal(t, h.File, h2.File)
	require.Equal(t, 1, b.srv.Gets("/keep.safetensors"))

	// A file removed behind the cache's back is forgotten at restart.
	require.NoError(t, os.Remove(filepath.Join(b.models, "vae", h.File)))
	b.reopen()
	require.Empty(t, b.cache.List())
}

// A download cut midway leaves nothing in the models folder; the next
// fetch (after a restart, too) resumes it with a Range request.
func TestKilledDownloadResumes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := modeltest.File("big", 5<<20)
	u := b.srv.Put("/resume.safetensors", data)
	b.srv.CutAfter("/resume.safetensors", 2<<20)
	_, err := b.fetch(modelcache.Request{URL: u, Folder: "checkpoints"})
	var me *modelcache.Error
	require.ErrorAs(t, err, &me)
	require.False(t, me.Permanent, "a cut download is worth another attempt: %v", err)
	require.Empty(t, b.visible("checkpoints"))
	b.reopen() // the worker restarted meanwhile

	h, err := b.fetch(modelcache.Request{URL: u, Folder: "checkpoints", SHA256: modeltest.SHA256(data)})
	require.NoError(t, err)
	require.Equal(t, 1, b.srv.Ranges("/resume.safetensors"), "resumed")
	got, err := os.ReadFile(filepath.Join(b.models, "checkpoints", h.File))
	require.NoError(t, err)
	require.Equal(t, data, got)
}

// A fetch whose context ends (the job was cancelled, the worker killed)
// stops the download it alone waited for; the next one resumes it.
func TestCancelledDownloadResumes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := modeltest.File("slow", 3<<20)
	u := b.srv.Put("/slow.safetensors", data)
	b.srv.StallAfter("/slow.safetensors", 1<<20) // the first answer stops after 1 MB, and waits
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := b.cache.Fetch(ctx, modelcache.Request{URL: u, Folder: "loras"}, nil)
		done <- err
	}()
	// Cancelled once the first MB is on disk, beside the models folder.
	partial := filepath.Join(b.models, ".comfyfleet-cache", "partial")
	require.Eventually(t, func() bool {
		ents, _ := os.ReadDir(partial)
		for _, e := range ents {
			if info, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".part") && info.Size() == 1<<20 {
				return true
			}
		}
		return false
	}, 10*time.Second, time.Millisecond)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.Empty(t, b.visible("loras"))
	h, err := b.fetch(modelcache.Request{URL: u, Folder: "loras"})
	require.NoError(t, err)
	require.Equal(t, 1, b.srv.Ranges("/slow.safetensors"))
	got, err := os.ReadFile(filepath.Join(b.models, "loras", h.File))
	require.NoError(t, err)
	require.Equal(t, data, got)
}

// The worker's tokens go to their own hosts only, a request's headers to
// its URL's host only, and none of them on a redirect to another host.
func TestCredentialsStayWithTheirHost(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *modelcache.Config) { c.HFToken, c.CivitAIToken = "hf_secret", "civ_secret" })
	other := modeltest.New(t)
	data := modeltest.File("r", 100)
	target := other.Put("/r.safetensors", data)
	b.cfg.Guard.Close()
	g, err := ssrf.New(ssrf.Config{Use: "model URL", Allow: []string{b.srv.Hostport(), other.Hostport()}, AllowHTTP: true})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	b.cfg.Guard = g
	b.reopen()
	// 127.0.0.1 and localhost are two hosts to the client.
	u := b.srv.Redirect("/r.safetensors", strings.Replace(target, "127.0.0.1", "localhost", 1))
	_, err = b.cache.Fetch(context.Background(), modelcache.Request{URL: u, Folder: "loras",
		Headers: map[string]string{"X-Api-Key": "per-request", "Authorization": "Bearer mine"}}, nil)
	require.NoError(t, err)
	first := b.srv.Headers()[0]
	require.Equal(t, "per-request", first.Get("X-Api-Key"))
	require.Equal(t, "Bearer mine", first.Get("Authorization"))
	hop := other.Headers()[0]
	require.Empty(t, hop.Get("X-Api-Key"))
	require.Empty(t, hop.Get("Authorization"))
	for _, h := range append(b.srv.Headers(), other.Headers()...) {
		for _, v := range h {
			assert.NotContains(t, strings.Join(v, ","), "_secret", "no worker token to a host not its own")
		}
	}
	// A file fetched with a request's own credentials is not another
	// request's without them.
	h2, err := b.fetch(modelcache.Request{URL: u, Folder: "loras"})
	require.NoError(t, err)
	require.True(t, h2.Downloaded)
	require.Len(t, b.cache.List(), 1, "one URL, one file")
	require.Equal(t, proto.ModelURLKey(u), b.cache.List()[0].URL)
}

// A file fetched with a request's own credentials is found by that
// request's key only: not by its digest, nor by its URL without them.
func TestPrivateFilesStayPrivate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := modeltest.File("private", 1000)
	u := b.srv.Put("/private.safetensors", data)
	h, err := b.fetch(modelcache.Request{URL: u + "?token=mine", Folder: "loras"})
	require.NoError(t, err)
	require.True(t, h.Downloaded)
	h, err = b.fetch(modelcache.Request{URL: b.srv.URL + "/elsewhere.safetensors", Folder: "loras", SHA256: modeltest.SHA256(data)})
	require.Error(t, err, "the digest alone does not reach a private file")
	require.Nil(t, h)
	h, err = b.fetch(modelcache.Request{URL: u, Folder: "loras"})
	require.NoError(t, err)
	require.True(t, h.Downloaded, "without the token it is fetched anew")
	require.Equal(t, 2, b.srv.Gets("/private.safetensors"))
}

// One process per cache folder: another's eviction would delete files in
// use.
func TestOneProcessPerCache(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := modelcache.Open(b.cfg)
	require.ErrorContains(t, err, "is in use by")
}
