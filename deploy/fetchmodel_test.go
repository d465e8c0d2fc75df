package deploy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

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
// given (name -> value), and returns its exit code and output.
func fetchModel(t *testing.T, dir string, secrets map[string]string, args ...string) (int, string) {
	t.Helper()
	secretsDir := filepath.Join(dir, "run-secrets")
	require.NoError(t, os.MkdirAll(secretsDir, 0o700))
	for k, v := range secrets {
		writeFile(t, filepath.Join(secretsDir, k), v+"\n")
	}
	cmd := exec.Command("sh", append([]string{repoPath("deploy", "worker", "fetch-model.sh")}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "COMFYUI_DIR=" + filepath.Join(dir, "comfyui"), "SECRETS_DIR=" + secretsDir}
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
