package auth_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/proto"
)

// whoami answers the principal the guard let through.
var whoami = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	p, ok := auth.FromContext(r.Context())
	if !ok {
		http.Error(w, "no principal", http.StatusInternalServerError)
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"name": p.Name, "role": p.Role.String(), "tenant": p.Tenant})
})

type answer struct {
	code int
	body map[string]any
	hdr  http.Header
}

func do(t *testing.T, srv *httptest.Server, method, path string, hdr map[string]string, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, srv.URL+path, rd)
	require.NoError(t, err)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	a := answer{code: resp.StatusCode, hdr: resp.Header}
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if len(data) > 0 {
		require.NoError(t, json.Unmarshal(data, &a.body), string(data))
	}
	return a
}

func guarded(t *testing.T, g *auth.Guard, roles auth.Role) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(g.Require(roles, whoami))
	t.Cleanup(srv.Close)
	return srv
}

func ring(t *testing.T, entries map[auth.Role][]string) *auth.Keyring {
	t.Helper()
	var keys []auth.Key
	for role, es := range entries {
		ks, err := auth.ParseKeys(role, es)
		require.NoError(t, err)
		keys = append(keys, ks...)
	}
	k, err := auth.NewKeyring(keys...)
	require.NoError(t, err)
	return k
}

func TestRolesReachTheirRoutesOnly(t *testing.T) {
	t.Parallel()
	g, err := auth.NewGuard(ring(t, map[auth.Role][]string{
		auth.Tenant: {"acme:api-a"}, auth.Admin: {"ops:admin"}, auth.Worker: {"rp:worker"},
	}), nil)
	require.NoError(t, err)
	api := guarded(t, g, auth.Tenant|auth.Admin)
	admin := guarded(t, g, auth.Admin)
	worker := guarded(t, g, auth.Worker)
	bearer := func(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }

	a := do(t, api, "GET", "/", bearer("api-a"), "")
	require.Equal(t, 200, a.code)
	require.Equal(t, map[string]any{"name": "acme", "role": "API", "tenant": "acme"}, a.body)
	a = do(t, api, "GET", "/", bearer("admin"), "")
	require.Equal(t, 200, a.code)
	require.Equal(t, map[string]any{"name": "ops", "role": "admin", "tenant": proto.DefaultTenant}, a.body)

	tests := []struct {
		name string
		srv  *httptest.Server
		key  string
		code int
		want string
	}{
		{"worker key on the API", api, "worker", 403, "this route needs an API or admin key"},
		{"API key on an operator route", admin, "api-a", 403, "needs an admin key, and acme is a key of another role"},
		{"API key on the job-take routes", worker, "api-a", 403, "needs a worker key"},
		{"admin key on the job-take routes", worker, "admin", 403, "needs a worker key"},
		{"no key", admin, "", 401, "give a valid admin key"},
		{"unknown key", api, "nope", 401, "give a valid API or admin key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := do(t, tt.srv, "GET", "/", bearer(tt.key), "")
			require.Equal(t, tt.code, a.code)
			require.Contains(t, a.body["error"], tt.want)
		})
	}
}

func TestNoAdminKeyConfiguredSaysSo(t *testing.T) {
	t.Parallel()
	g, err := auth.NewGuard(ring(t, map[auth.Role][]string{auth.Tenant: {"acme:api-a"}}), nil)
	require.NoError(t, err)
	a := do(t, guarded(t, g, auth.Admin), "GET", "/", map[string]string{"Authorization": "api-a"}, "")
	require.Equal(t, 403, a.code)
	require.Contains(t, a.body["error"], "(no admin key is configured)")
}

func TestCrossSiteRequestsAreRefused(t *testing.T) {
	t.Parallel()
	g, err := auth.NewGuard(nil, []string{"https://console.example.com"})
	require.NoError(t, err)
	srv := guarded(t, g, auth.Tenant|auth.Admin)
	own := srv.URL // http://127.0.0.1:port
	tests := []struct {
		name   string
		method string
		hdr    map[string]string
		body   string
		code   int
		want   string
	}{
		{name: "curl: no Origin", method: "POST", hdr: map[string]string{"Content-Type": "application/json"}, body: `{}`, code: 200},
		{name: "the server's own page", method: "POST", hdr: map[string]string{"Origin": own, "Content-Type": "application/json", "Sec-Fetch-Site": "same-origin"}, body: `{}`, code: 200},
		{name: "a page elsewhere posting text/plain", method: "POST", hdr: map[string]string{"Origin": "https://evil.example", "Content-Type": "text/plain"}, body: `{"input":{}}`, code: 403, want: "cross-origin request from https://evil.example refused"},
		{name: "another port of the same host", method: "POST", hdr: map[string]string{"Origin": "http://127.0.0.1:1", "Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, body: `{}`, code: 403, want: "http://127.0.0.1:1 refused"},
		{name: "a cross-site GET without Origin", method: "GET", hdr: map[string]string{"Sec-Fetch-Site": "cross-site"}, code: 403, want: "Sec-Fetch-Site: cross-site"},
		{name: "a sandboxed page (Origin null)", method: "POST", hdr: map[string]string{"Origin": "null"}, body: `{}`, code: 403, want: "not an http or https origin"},
		{name: "an allowed origin", method: "GET", hdr: map[string]string{"Origin": "https://console.example.com", "Sec-Fetch-Site": "cross-site"}, code: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := do(t, srv, tt.method, "/run", tt.hdr, tt.body)
			require.Equal(t, tt.code, a.code, a.body)
			if tt.want != "" {
				require.Contains(t, a.body["error"], tt.want)
			}
		})
	}

	// The allowed origin gets CORS, its preflight included.
	a := do(t, srv, "OPTIONS", "/run", map[string]string{"Origin": "https://console.example.com", "Access-Control-Request-Method": "POST"}, "")
	require.Equal(t, http.StatusNoContent, a.code)
	require.Equal(t, "https://console.example.com", a.hdr.Get("Access-Control-Allow-Origin"))
	require.Contains(t, a.hdr.Get("Access-Control-Allow-Headers"), "Authorization")
	a = do(t, srv, "OPTIONS", "/run", map[string]string{"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, "")
	require.Equal(t, 403, a.code)
	require.Empty(t, a.hdr.Get("Access-Control-Allow-Origin"))
}

func TestWithoutKeysBodiesMustBeJSON(t *testing.T) {
	t.Parallel()
	g, err := auth.NewGuard(nil, nil)
	require.NoError(t, err)
	srv := guarded(t, g, auth.Tenant|auth.Admin)
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""} {
		a := do(t, srv, "POST", "/run", map[string]string{"Content-Type": ct}, `{"input":{}}`)
		require.Equal(t, http.StatusUnsupportedMediaType, a.code, ct)
		require.Contains(t, a.body["error"], "Content-Type must be application/json")
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "application/merge-patch+json"} {
		a := do(t, srv, "POST", "/run", map[string]string{"Content-Type": ct}, `{}`)
		require.Equal(t, 200, a.code, ct)
		require.Equal(t, map[string]any{"name": "", "role": "admin", "tenant": proto.DefaultTenant}, a.body)
	}
	require.Equal(t, 200, do(t, srv, "POST", "/cancel/x", nil, "").code, "a POST without a body needs no type")
	require.Equal(t, 200, do(t, srv, "GET", "/status/x", nil, "").code)

	// With keys, a RunPod worker's form-encoded post is its business.
	g, err = auth.NewGuard(ring(t, map[auth.Role][]string{auth.Worker: {"rp:w"}}), nil)
	require.NoError(t, err)
	a := do(t, guarded(t, g, auth.Worker), "POST", "/job-done/x", map[string]string{
		"Authorization": "w", "Content-Type": "application/x-www-form-urlencoded"}, `{"output":1}`)
	require.Equal(t, 200, a.code)
}

func TestParseOrigin(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"https://App.Example.com":     "https://app.example.com",
		"https://app.example.com:443": "https://app.example.com",
		"http://localhost:3000/":      "http://localhost:3000",
		"http://[::1]:8000":           "http://[::1]:8000",
	} {
		got, err := auth.ParseOrigin(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"null", "file:///x", "https://a.example/path", "https://u:p@a.example", "https://", "ftp://a"} {
		_, err := auth.ParseOrigin(bad)
		require.Error(t, err, bad)
	}
	_, err := auth.NewGuard(nil, []string{"https://a.example/x"})
	require.ErrorContains(t, err, `allowed origin "https://a.example/x"`)
}

func TestLoopback(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1:8000": true, "[::1]:80": true, "localhost:1": true, "127.1.2.3:9": true,
		":8000": false, "0.0.0.0:8000": false, "10.0.0.1:80": false, "[::]:80": false, "nonsense": false,
	} {
		require.Equal(t, want, auth.Loopback(addr), addr)
	}
}

func FuzzParseOrigin(f *testing.F) {
	for _, s := range []string{"https://a.example", "http://[::1]:8000", "null", "http://a:99999", "https://a.example:443/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := auth.ParseOrigin(s)
		if err != nil {
			return
		}
		again, err := auth.ParseOrigin(n)
		if err != nil || again != n {
			t.Fatalf("%q normalised to %q, which gives %q, %v", s, n, again, err)
		}
	})
}
