package worker

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
)

// The SSRF guard for input URLs lives in internal/ssrf (webhooks use it
// too); these names keep the worker's code and tests short.

// ErrAddressForbidden is returned when an input URL leads to an address
// the guard forbids.
var ErrAddressForbidden = fmt.Errorf("%w for input URLs", ssrf.ErrForbidden)

type allowList struct{ ssrf.AllowList }

func (a allowList) ip(ip netip.Addr) bool { return a.IP(ip) }

func forbidden(ip netip.Addr) bool { return ssrf.Forbidden(ip) }

func parseAllowList(entries []string) (allowList, error) {
	a, err := ssrf.ParseAllowList(entries)
	return allowList{a}, err
}

func guardedClient(allow allowList, allowHTTP bool, tlsConfig *tls.Config) *http.Client {
	return ssrf.Client(allow.AllowList, allowHTTP, tlsConfig, ErrAddressForbidden)
}

func checkURLScheme(u *url.URL, allowHTTP bool) error { return ssrf.CheckScheme(u, allowHTTP) }

func redactURL(u *url.URL) string { return ssrf.Redact(u) }
