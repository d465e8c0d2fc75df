package deploy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// modelServer serves model files the way Hugging Face and CivitAI do:
// public ones, gated ones that want a bearer token, and a redirect to a
// file host on another address.
type modelServer struct {
	*httptest.Server
	cdn *httptest.Server

	mu          sync.Mutex
	cdnSawAuth  []string
	gatedTokens []string
}

const modelBytes = "safetensors bytes"

func newModelServer(t *testing.T) *modelServer {
	s := &modelServer{}
	s.cdn = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.cdnSawAuth = append(s.cdnSawAuth, r.Header.Get("Authorization"))
		s.mu.Unlock()
		w.Write([]byte(modelBytes))
	}))
	t.Cleanup(s.cdn.Close)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/public.safetensors":
			w.Write([]byte(modelBytes))
		case "/gated.safetensors":
			auth := r.Header.Get("Authorization")
			s.mu.Lock()
			s.gatedTokens = append(s.gatedTokens, auth)
			s.mu.Unlock()
			if auth != "Bearer hf_secret" {
				http.Error(w, "gated", http.StatusUnauthorized)
				return
			}
			w.Write([]byte(modelBytes))
		case "/api/download/models/42":
			http.Redirect(w, r, s.cdn.URL+"/signed?x=1", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Server.Close)
	return s
}

// fetchModel runs deploy/worker/fetch-model.sh into dir with the secrets
// given (name -> value), and returns its exit code and output. The test
// servers are on 127.0.0.1, so it is the tokens' host here, unless env
// says otherwise; retries do not wait.
func fetchModel(t *testing.T, dir string, secrets map[string]string, args ...string) (int, string) {
	t.Helper()
	return fetchModelEnv(t, dir, secrets, nil, args...)
}

// fetchModelEnv is fetchModel with more environment variables (an empty
// value unsets a default of the test).
func fetchModelEnv(t *testing.T, dir string, secrets, env map[string]string, args ...string) (int, string) {
	t.Helper()
	secretsDir := filepath.Join(dir, "run-secrets")
	require.NoError(t, os.MkdirAll(secretsDir, 0o700))
	for k, v := range secrets {
		writeFile(t, filepath.Join(secretsDir, k), v+"\n")
	}
	vars := map[string]string{
		"PATH": os.Getenv("PATH"), "COMFYUI_DIR": filepath.Join(dir, "comfyui"), "SECRETS_DIR": secretsDir,
		"FETCH_HF_HOSTS": "127.0.0.1", "FETCH_CIVITAI_HOSTS": "127.0.0.1", "FETCH_RETRY_DELAY": "0",
	}
	for k, v := range env {
		vars[k] = v
	}
	cmd := exec.Command("sh", append([]string{repoPath("deploy", "worker", "fetch-model.sh")}, args...)...)
	for k, v := range vars {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	out, err := cmd.CombinedOutput()
	if exit, ok := err.(*exec.ExitError); ok {
		return exit.ExitCode(), string(out)
	}
	require.NoError(t, err)
	return 0, string(out)
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestFetchModel(t *testing.T) {
	t.Parallel()
	srv := newModelServer(t)
	tests := []struct {
		name     string
		secrets  map[string]string
		args     []string
		wantCode int
		wantFile string // under comfyui/
		wantOut  string
	}{
		{name: "public file", args: []string{"--hf", "models/vae/ae.safetensors", srv.URL + "/public.safetensors"},
			wantFile: "models/vae/ae.safetensors"},
		{name: "gated file with the token secret", secrets: map[string]string{"hf_token": "hf_secret"},
			args: []string{"--hf", "models/unet/flux1-dev.safetensors", srv.URL + "/gated.safetensors"}, wantFile: "models/unet/flux1-dev.safetensors"},
		{name: "gated file without a token", args: []string{"--hf", "models/unet/flux1-dev.safetensors", srv.URL + "/gated.safetensors"},
			wantCode: 1, wantOut: "this file needs a token: build with --secret id=hf_token,env="},
		{name: "refused token", secrets: map[string]string{"hf_token": "wrong"}, args: []string{"--hf", "models/unet/x.safetensors", srv.URL + "/gated.safetensors"},
			wantCode: 1, wantOut: "the hf_token secret was refused"},
		{name: "checksum matches", args: []string{"models/loras/a.safetensors", srv.URL + "/public.safetensors", sha(modelBytes)},
			wantFile: "models/loras/a.safetensors"},
		{name: "checksum differs", args: []string{"models/loras/a.safetensors", srv.URL + "/public.safetensors", sha("other")},
			wantCode: 1, wantOut: "has SHA-256 " + sha(modelBytes) + ", want " + sha("other")},
		{name: "missing file", args: []string{"models/vae/x.safetensors", srv.URL + "/nope"}, wantCode: 1, wantOut: "HTTP 404"},
		{name: "bare CivitAI name goes to checkpoints", secrets: map[string]string{"civitai_token": "civ"},
			args: []string{"--civitai", "dreamy.safetensors", srv.URL + "/api/download/models/42"}, wantFile: "models/checkpoints/dreamy.safetensors"},
		{name: "CivitAI name with a folder", args: []string{"--civitai", "loras/style.safetensors", srv.URL + "/api/download/models/42"},
			wantFile: "models/loras/style.safetensors"},
		{name: "escaping the models folder", args: []string{"../etc/passwd", srv.URL + "/public.safetensors"}, wantCode: 2, wantOut: "without '..'"},
		{name: "absolute destination", args: []string{"/etc/passwd", srv.URL + "/public.safetensors"}, wantCode: 2},
		{name: "not a URL", args: []string{"models/vae/x.safetensors", "file:///etc/passwd"}, wantCode: 2, wantOut: "is not an http(s) URL"},
		{name: "usage", args: []string{"only-one"}, wantCode: 2, wantOut: "usage: fetch-model"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			code, out := fetchModel(t, dir, tt.secrets, tt.args...)
			require.Equal(t, tt.wantCode, code, out)
			require.Contains(t, out, tt.wantOut)
			for _, v := range tt.secrets {
				require.NotContains(t, out, v, "the token is never printed")
			}
			comfy := filepath.Join(dir, "comfyui")
			if tt.wantFile == "" {
				// Nothing half-written is left behind.
				filepath.Walk(comfy, func(p string, info os.FileInfo, err error) error {
					if err == nil && !info.IsDir() {
						t.Errorf("left %s behind", p)
					}
					return nil
				})
				return
			}
			got, err := os.ReadFile(filepath.Join(comfy, tt.wantFile))
			require.NoError(t, err)
			require.Equal(t, modelBytes, string(got))
			sums, err := os.ReadFile(filepath.Join(comfy, "models", "SHA256SUMS"))
			require.NoError(t, err)
			require.Equal(t, sha(modelBytes)+"  "+tt.wantFile+"\n", string(sums))
		})
	}
}

// TestFetchModelKeepsTheTokenOnItsHost: a CivitAI download redirects to a
// file host, which must not receive the token.
func TestFetchModelKeepsTheTokenOnItsHost(t *testing.T) {
	t.Parallel()
	srv := newModelServer(t)
	code, out := fetchModel(t, t.TempDir(), map[string]string{"civitai_token": "civ_secret"},
		"--civitai", "x.safetensors", srv.URL+"/api/download/models/42")
	require.Zero(t, code, out)
	srv.mu.Lock()
	defer srv.mu.Unlock()
	require.Equal(t, []string{""}, srv.cdnSawAuth)

	require.False(t, strings.Contains(readFile(t, "deploy", "worker", "fetch-model.sh"), `-H "Authorization`),
		"the token reaches curl on stdin, not as an argument")
}

// request is what a test server saw of one request.
type request struct{ rangeHeader, auth string }

// recorder keeps the requests a test server saw.
type recorder struct {
	mu   sync.Mutex
	reqs []request
}

func (r *recorder) add(req *http.Request) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, request{req.Header.Get("Range"), req.Header.Get("Authorization")})
	return len(r.reqs)
}

func (r *recorder) all() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

// cutAfterHalf answers the whole file's length, sends its first half and
// drops the connection, as a reset in the middle of a large download does.
func cutAfterHalf(t *testing.T, w http.ResponseWriter, body string) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Accept-Ranges", "bytes")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(body[:len(body)/2]))
	w.(http.Flusher).Flush()
	conn, _, err := http.NewResponseController(w).Hijack()
	if !assert.NoError(t, err) {
		return
	}
	conn.Close()
}

// TestFetchModelResumesAfterACut: a connection cut mid-body is tried again
// and resumes with a Range request where the first attempt stopped (or
// starts over when the server cannot resume); the file arrives whole.
func TestFetchModelResumesAfterACut(t *testing.T) {
	t.Parallel()
	body := strings.Repeat("0123456789abcdef", 4096) // 64 KiB
	for _, ranges := range []bool{true, false} {
		t.Run(fmt.Sprintf("ranges=%v", ranges), func(t *testing.T) {
			t.Parallel()
			var rec recorder
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if rec.add(r) == 1 {
					cutAfterHalf(t, w, body)
					return
				}
				if !ranges {
					w.Write([]byte(body))
					return
				}
				start, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
				n, err := strconv.Atoi(strings.TrimSuffix(start, "-"))
				if !ok || err != nil || n > len(body) {
					http.Error(w, "want a Range request", http.StatusBadRequest)
					return
				}
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", n, len(body)-1, len(body)))
				w.WriteHeader(http.StatusPartialContent)
				w.Write([]byte(body[n:]))
			}))
			t.Cleanup(srv.Close)
			dir := t.TempDir()
			code, out := fetchModel(t, dir, nil, "models/unet/big.safetensors", srv.URL+"/big.safetensors", sha(body))
			require.Zero(t, code, out)
			got, err := os.ReadFile(filepath.Join(dir, "comfyui", "models", "unet", "big.safetensors"))
			require.NoError(t, err)
			require.Equal(t, sha(body), sha(string(got)))
			reqs := rec.all()
			if ranges {
				require.Equal(t, []request{{}, {rangeHeader: fmt.Sprintf("bytes=%d-", len(body)/2)}}, reqs, out)
				require.Contains(t, out, "attempt 1 of 8: HTTP 200, curl exit 18")
				require.Contains(t, out, fmt.Sprintf("resuming at byte %d", len(body)/2))
			} else {
				require.Len(t, reqs, 3, "cut, a resume the server ignores, a fresh start: %s", out)
				require.Empty(t, reqs[2].rangeHeader, out)
			}
		})
	}
}

// TestFetchModelSendsTokensToTheirHostsOnly: a token goes to its own hosts
// (FETCH_HF_HOSTS, FETCH_CIVITAI_HOSTS, and their subdomains) and to no
// other, which gets the request without it.
func TestFetchModelSendsTokensToTheirHostsOnly(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		flag     string
		env      map[string]string
		wantAuth string
		wantOut  string
	}{
		{name: "HF token to a listed host", flag: "--hf", env: map[string]string{"FETCH_HF_HOSTS": "huggingface.co 127.0.0.1"}, wantAuth: "Bearer tok_secret"},
		{name: "HF token not to another host", flag: "--hf", env: map[string]string{"FETCH_HF_HOSTS": ""},
			wantOut: "127.0.0.1 is not one of the hf_token hosts (huggingface.co hf.co): fetching without the token"},
		{name: "a suffix is not a subdomain", flag: "--hf", env: map[string]string{"FETCH_HF_HOSTS": "27.0.0.1"}, wantOut: "fetching without the token"},
		{name: "CivitAI token not to a Hugging Face host", flag: "--civitai", env: map[string]string{"FETCH_CIVITAI_HOSTS": "", "FETCH_HF_HOSTS": "127.0.0.1"},
			wantOut: "127.0.0.1 is not one of the civitai_token hosts (civitai.com)"},
		{name: "CivitAI token to its host", flag: "--civitai", env: map[string]string{"FETCH_CIVITAI_HOSTS": "CivitAI.com 127.0.0.1"}, wantAuth: "Bearer tok_secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var rec recorder
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rec.add(r)
				w.Write([]byte(modelBytes))
			}))
			t.Cleanup(srv.Close)
			secret := map[string]string{"--hf": "hf_token", "--civitai": "civitai_token"}[tt.flag]
			code, out := fetchModelEnv(t, t.TempDir(), map[string]string{secret: "tok_secret"}, tt.env,
				tt.flag, "models/loras/x.safetensors", srv.URL+"/x.safetensors")
			require.Zero(t, code, out)
			require.Equal(t, []request{{auth: tt.wantAuth}}, rec.all())
			require.Contains(t, out, tt.wantOut)
			require.NotContains(t, out, "tok_secret")
		})
	}
}

// TestFetchModelAbortsAStall: a server that sends the headers and a few
// bytes, then nothing, fails the download after FETCH_STALL_SECONDS per
// attempt instead of hanging the build.
func TestFetchModelAbortsAStall(t *testing.T) {
	t.Parallel()
	var rec recorder
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		if rg := r.Header.Get("Range"); rg != "" {
			w.Header().Set("Content-Range", "bytes 3-999999/1000000")
			w.Header().Set("Content-Length", "999997")
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", "1000000")
			w.WriteHeader(http.StatusOK)
		}
		w.Write([]byte("abc"))
		w.(http.Flusher).Flush()
		select { // hold the connection open, sending nothing
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	dir := t.TempDir()
	start := time.Now()
	code, out := fetchModelEnv(t, dir, nil, map[string]string{"FETCH_STALL_SECONDS": "1", "FETCH_ATTEMPTS": "2"},
		"models/unet/x.safetensors", srv.URL+"/x.safetensors")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "download of "+srv.URL+"/x.safetensors failed after 2 attempt(s): stalled: less than 1024 bytes/s for 1s (FETCH_STALL_SECONDS)")
	require.Less(t, time.Since(start), 30*time.Second, "two attempts of a 1 s stall limit")
	require.Equal(t, []request{{}, {rangeHeader: "bytes=3-"}}, rec.all(), "the second attempt resumes")
	require.NoDirExists(t, filepath.Join(dir, "comfyui", "models", "unet", "x.safetensors"))
	left, err := os.ReadDir(filepath.Join(dir, "comfyui", "models", "unet"))
	require.NoError(t, err)
	require.Empty(t, left, "no .part file is left behind")
}

// TestFetchModelFailsAtOnceOnA4xx: a 404 names its code and is not tried
// again; a 503 is.
func TestFetchModelFailsAtOnceOnA4xx(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusNotFound, http.StatusServiceUnavailable} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			t.Parallel()
			var rec recorder
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rec.add(r)
				http.Error(w, "no", status)
			}))
			t.Cleanup(srv.Close)
			code, out := fetchModelEnv(t, t.TempDir(), nil, map[string]string{"FETCH_ATTEMPTS": "3"}, "models/vae/x.safetensors", srv.URL+"/x")
			require.Equal(t, 1, code, out)
			if status == http.StatusNotFound {
				require.Contains(t, out, "fetch-model: download of "+srv.URL+"/x failed (HTTP 404)")
				require.Len(t, rec.all(), 1, out)
				return
			}
			require.Contains(t, out, "failed after 3 attempt(s): HTTP 503")
			require.Len(t, rec.all(), 3, out)
		})
	}
}
