package ssrf_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

func TestForbidden(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1": true, "10.1.2.3": true, "169.254.169.254": true, "100.100.100.200": true, "::1": true,
		"fd00:ec2::254": true, "::ffff:127.0.0.1": true, "64:ff9b::a00:1": true, "2002:a00:1::": true,
		"fe80::1%eth0": true, "0.0.0.0": true, "224.0.0.1": true, "255.255.255.255": true,
		"8.8.8.8": false, "2606:4700:4700::1111": false, "64:ff9b::808:808": false,
	} {
		require.Equal(t, want, ssrf.Forbidden(netip.MustParseAddr(addr)), addr)
	}
}

func newGuard(t *testing.T, cfg ssrf.Config) *ssrf.Guard {
	t.Helper()
	g, err := ssrf.New(cfg)
	require.NoError(t, err)
	t.Cleanup(g.Close)
	return g
}

func get(t *testing.T, g *ssrf.Guard, rawURL string) (*http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	require.NoError(t, err)
	resp, err := g.Client().Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

// TestGuardRefusesWithoutConnecting: every way of writing a loopback
// address is refused unless an entry names it on the port dialled, and a
// refused request makes no connection at all.
func TestGuardRefusesWithoutConnecting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		url     string   // %d is the server's port
		allow   []string // %d is the server's port
		noHTTP  bool
		wantErr string // "" means the request goes through
	}{
		{name: "loopback", url: "http://127.0.0.1:%d/", wantErr: "test URL: address not allowed: 127.0.0.1:%d is a loopback address (TEST_ALLOW lists exceptions)"},
		{name: "decimal", url: "http://2130706433:%d/", wantErr: "address not allowed: 127.0.0.1:%d is a loopback address"},
		{name: "octal", url: "http://0177.0.0.1:%d/", wantErr: "address not allowed: 127.0.0.1:%d"},
		{name: "hex parts", url: "http://0x7f.1:%d/", wantErr: "address not allowed: 127.0.0.1:%d"},
		{name: "short", url: "http://127.1:%d/", wantErr: "address not allowed: 127.0.0.1:%d"},
		{name: "one hex", url: "http://0x7f000001:%d/", wantErr: "address not allowed: 127.0.0.1:%d"},
		{name: "trailing dot", url: "http://127.0.0.1.:%d/", wantErr: "address not allowed: 127.0.0.1:%d"},
		{name: "mapped", url: "http://[::ffff:127.0.0.1]:%d/", wantErr: "address not allowed: [::ffff:127.0.0.1]:%d"},
		{name: "bad number", url: "http://4294967296:%d/", wantErr: `test URL: host "4294967296" ends in a number`},
		{name: "name resolving to loopback", url: "http://localhost:%d/", wantErr: "is a loopback address"},
		{name: "entry without port", url: "http://127.0.0.1:%d/", allow: []string{"127.0.0.1"},
			wantErr: "127.0.0.1:%d is a loopback address; TEST_ALLOW allows it on other ports only (an entry without a port means port 80)"},
		{name: "name entry without port", url: "http://localhost:%d/", allow: []string{"localhost"}, wantErr: "is a loopback address"},
		{name: "entry on another port", url: "http://127.0.0.1:%d/", allow: []string{"127.0.0.1:1"}, wantErr: "allows it on other ports only"},
		{name: "https only", url: "http://127.0.0.1:%d/", allow: []string{"127.0.0.1:%d"}, noHTTP: true,
			wantErr: "test URL: only https URLs are accepted, not http (TEST_ALLOW_HTTP allows http)"},
		{name: "other scheme", url: "ftp://127.0.0.1:%d/", allow: []string{"127.0.0.1:%d"}, wantErr: `only https URLs are accepted, not ftp`},
		{name: "allowed on its port", url: "http://127.0.0.1:%d/", allow: []string{"127.0.0.1:%d"}},
		{name: "allowed on any port", url: "http://127.0.0.1:%d/", allow: []string{"127.0.0.1:*"}},
		{name: "allowed prefix on its port", url: "http://127.0.0.1:%d/", allow: []string{"127.0.0.0/8:%d"}},
		{name: "allowed name", url: "http://LOCALHOST:%d/", allow: []string{"localhost:%d"}},
		{name: "numeric form of an allowed address", url: "http://0x7f.1:%d/", allow: []string{"127.0.0.1:%d"}},
		{name: "numeric entry", url: "http://127.0.0.1:%d/", allow: []string{"2130706433:*"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := testenv.StartCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
			port := srv.Port()
			fill := func(s string) string {
				if strings.Contains(s, "%d") {
					return fmt.Sprintf(s, port)
				}
				return s
			}
			var allow []string
			for _, a := range tt.allow {
				allow = append(allow, fill(a))
			}
			g := newGuard(t, ssrf.Config{Use: "test URL", Allow: allow, AllowHTTP: !tt.noHTTP, AllowSetting: "TEST_ALLOW", HTTPSetting: "TEST_ALLOW_HTTP"})
			resp, err := get(t, g, fill(tt.url))
			if tt.wantErr == "" {
				require.NoError(t, err)
				require.Equal(t, http.StatusOK, resp.StatusCode)
				require.Equal(t, 1, srv.Connections(t))
				return
			}
			require.Error(t, err)
			require.Contains(t, ssrf.Describe(err), fill(tt.wantErr))
			var r *ssrf.Refusal
			require.ErrorAs(t, err, &r)
			require.Equal(t, 0, srv.Connections(t), "a refused request connects nowhere")
		})
	}
}

// TestGuardCheck is the early check, before any request.
func TestGuardCheck(t *testing.T) {
	t.Parallel()
	g := newGuard(t, ssrf.Config{Use: "s3Config.endpointUrl", Allow: []string{"10.0.0.0/8:9000"}, AllowSetting: "S3_CONFIG_ALLOW", HTTPSetting: "S3_CONFIG_ALLOW_HTTP"})
	for raw, want := range map[string]string{
		"https://s3.example.com":      "",
		"https://10.1.1.1:9000":       "",
		"https://10.1.1.1":            "s3Config.endpointUrl: address not allowed: 10.1.1.1:443 is a private address; S3_CONFIG_ALLOW allows it on other ports only (an entry without a port means port 443)",
		"https://169.254.169.254":     "s3Config.endpointUrl: address not allowed: 169.254.169.254:443 is a link-local address (cloud metadata lives there) (S3_CONFIG_ALLOW lists exceptions)",
		"https://0251.0376.0251.0376": "169.254.169.254:443 is a link-local",
		"http://s3.example.com":       "s3Config.endpointUrl: only https URLs are accepted, not http (S3_CONFIG_ALLOW_HTTP allows http)",
		"https:///x":                  "s3Config.endpointUrl: URL has no host",
		"https://h:99999":             `s3Config.endpointUrl: port "99999" is out of range`,
		"https://s3.example.com:0":    `port "0" is out of range`,
		"https://1.2.3.4.5":           "more than 4 parts",
	} {
		u, err := url.Parse(raw)
		require.NoError(t, err, raw)
		err = g.Check(u)
		if want == "" {
			require.NoError(t, err, raw)
			continue
		}
		require.ErrorContains(t, err, want, raw)
	}
	err := g.Check(&url.URL{Scheme: "https", Host: "127.0.0.1"})
	require.ErrorIs(t, err, ssrf.ErrForbidden)
	err = g.Check(&url.URL{Scheme: "http", Host: "example.com"})
	require.NotErrorIs(t, err, ssrf.ErrForbidden, "a scheme refusal is not an address refusal")
}

// TestGuardRedirects: every hop is checked again, and a guard that
// follows none hands back the 3xx.
func TestGuardRedirects(t *testing.T) {
	t.Parallel()
	target := testenv.StartCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	redirect := func(to string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, to, http.StatusTemporaryRedirect) }
	}
	front := testenv.StartCountingServer(t, redirect(target.URL+"/inside"))

	// The front is allowed, the target's port is not.
	g := newGuard(t, ssrf.Config{Use: "test URL", Allow: []string{front.HostPort()}, AllowHTTP: true})
	_, err := get(t, g, front.URL)
	require.ErrorIs(t, err, ssrf.ErrForbidden)
	require.Contains(t, ssrf.Describe(err), "test URL: address not allowed: "+target.HostPort())
	require.Equal(t, 0, target.Connections(t))

	// Not following: the 307 is the answer.
	g = newGuard(t, ssrf.Config{Allow: []string{front.HostPort(), target.HostPort()}, AllowHTTP: true, MaxRedirects: -1})
	resp, err := get(t, g, front.URL)
	require.NoError(t, err)
	require.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
	require.Equal(t, 0, target.Connections(t))

	// Both allowed: followed.
	g = newGuard(t, ssrf.Config{Allow: []string{front.HostPort(), target.HostPort()}, AllowHTTP: true})
	resp, err = get(t, g, front.URL)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, 1, target.Connections(t))

	// From https to http without AllowHTTP: refused at the hop.
	tlsFront := httptest.NewTLSServer(redirect(target.URL + "/plain"))
	defer tlsFront.Close()
	pool := x509.NewCertPool()
	pool.AddCert(tlsFront.Certificate())
	tlsCfg := tlsFront.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	tlsCfg.RootCAs = pool
	g = newGuard(t, ssrf.Config{Allow: []string{"127.0.0.1:*"}, TLS: tlsCfg})
	_, err = get(t, g, tlsFront.URL)
	require.ErrorContains(t, err, "only https URLs are accepted, not http")
	require.Equal(t, 1, target.Connections(t), "no new connection")

	// A loop stops.
	var loop *testenv.CountingServer
	loop = testenv.StartCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, loop.URL+r.URL.Path+"x", http.StatusFound)
	}))
	g = newGuard(t, ssrf.Config{Allow: []string{loop.HostPort()}, AllowHTTP: true, MaxRedirects: 3})
	_, err = get(t, g, loop.URL+"/")
	require.ErrorContains(t, err, "stopped after 3 redirects")
}

// TestDescribeNeverEchoes: what a server sends never reaches the text of
// a failed request.
func TestDescribeNeverEchoes(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 4096)
			_, _ = c.Read(buf)
			_, _ = c.Write([]byte("EVIL secret-from-the-server\r\n\r\n"))
			c.Close()
		}
	}()
	g := newGuard(t, ssrf.Config{Allow: []string{"127.0.0.1:*"}, AllowHTTP: true})
	_, err = get(t, g, "http://"+ln.Addr().String()+"/?sig=query-secret")
	require.Error(t, err)
	require.Contains(t, err.Error(), "secret-from-the-server", "Go's own error does carry it")
	require.Equal(t, "request failed", ssrf.Describe(err))

	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer tlsSrv.Close()
	_, err = get(t, g, tlsSrv.URL)
	require.Equal(t, "TLS certificate not valid for the host", ssrf.Describe(err))

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := closed.Addr().String()
	closed.Close()
	_, err = get(t, g, "http://"+addr+"/")
	require.Equal(t, "connection refused", ssrf.Describe(err))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://example.com/", nil)
	_, err = g.Client().Do(req)
	require.Equal(t, "canceled", ssrf.Describe(err))
	require.Equal(t, "timed out", ssrf.Describe(fmt.Errorf("x: %w", context.DeadlineExceeded)))
	require.Equal(t, "request failed", ssrf.Describe(errors.New("EVIL")))
	require.Empty(t, ssrf.Describe(nil))
}

func TestStatusAndRedact(t *testing.T) {
	t.Parallel()
	require.Equal(t, "HTTP 307 Temporary Redirect", ssrf.Status(307))
	require.Equal(t, "HTTP 599", ssrf.Status(599))
	u, _ := url.Parse("http://u:p@h/x?sig=1#frag")
	require.Equal(t, "http://h/x?…", ssrf.Redact(u))
	require.Equal(t, "https://h:9000/b?…", ssrf.RedactString("https://key:secret@h:9000/b?X-Amz-Signature=s"))
	require.Equal(t, "(a URL that does not parse)", ssrf.RedactString("http://%zz?secret"))
}

func TestNewRejectsBadEntries(t *testing.T) {
	t.Parallel()
	_, err := ssrf.New(ssrf.Config{Allow: []string{"10.0.0.0/99"}})
	require.ErrorContains(t, err, `allow-list entry "10.0.0.0/99"`)
}
