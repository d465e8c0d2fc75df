package ssrf_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
)

func TestForbidden(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1": true, "10.1.2.3": true, "169.254.169.254": true, "100.100.100.200": true, "::1": true,
		"fd00:ec2::254": true, "::ffff:127.0.0.1": true, "64:ff9b::a00:1": true, "2002:a00:1::": true,
		"8.8.8.8": false, "2606:4700:4700::1111": false,
	} {
		require.Equal(t, want, ssrf.Forbidden(netip.MustParseAddr(addr)), addr)
	}
}

func TestClientRefusesLoopbackUnlessAllowed(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer srv.Close()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.URL, nil)
	_, err := ssrf.Client(ssrf.AllowList{}, true, nil, nil).Do(req)
	require.True(t, errors.Is(err, ssrf.ErrForbidden), "%v", err)
	mine := fmt.Errorf("%w for tests", ssrf.ErrForbidden)
	_, err = ssrf.Client(ssrf.AllowList{}, true, nil, mine).Do(req)
	require.ErrorIs(t, err, mine)
	require.ErrorContains(t, err, "address not allowed for tests: 127.0.0.1 is a private")

	allow, err := ssrf.ParseAllowList([]string{"127.0.0.0/8"})
	require.NoError(t, err)
	resp, err := ssrf.Client(allow, true, nil, nil).Do(req)
	require.NoError(t, err)
	resp.Body.Close()
}

func TestCheckSchemeAndRedact(t *testing.T) {
	t.Parallel()
	u, _ := url.Parse("http://u:p@h/x?sig=1")
	require.Error(t, ssrf.CheckScheme(u, false))
	require.NoError(t, ssrf.CheckScheme(u, true))
	require.Equal(t, "http://h/x?…", ssrf.Redact(u))
}
