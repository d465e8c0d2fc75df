package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// The SSRF guard for input URLs. A job may name any URL, and the worker
// fetches it from inside the fleet's network, so the addresses it connects
// to are checked after DNS resolution, at connect time (a name that
// resolves to 127.0.0.1, or re-resolves between check and use, is caught
// too), on every redirect hop, and never through a proxy.

// ErrAddressForbidden is returned when an input URL leads to an address
// the guard forbids.
var ErrAddressForbidden = errors.New("address not allowed for input URLs")

// forbiddenPrefixes are special-purpose ranges beyond those netip's
// predicates name (RFC 6890 and successors).
var forbiddenPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT; cloud metadata (Alibaba 100.100.100.200)
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("100::/64"),        // discard
}

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// forbidden reports whether ip is loopback, private, link-local (cloud
// metadata 169.254.169.254 included), multicast, unspecified or otherwise
// special. IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is judged as IPv4.
func forbidden(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			return forbidden(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(ip):
			return forbidden(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() || !ip.IsValid() {
		return true
	}
	for _, p := range forbiddenPrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// allowList is InputURLAllow parsed: exact host names, and IP prefixes.
type allowList struct {
	hosts    map[string]bool
	prefixes []netip.Prefix
}

func parseAllowList(entries []string) (allowList, error) {
	a := allowList{hosts: map[string]bool{}}
	for _, e := range entries {
		e = strings.TrimSpace(e)
		switch {
		case e == "":
		case strings.Contains(e, "/"):
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return a, fmt.Errorf("%q: %w", e, err)
			}
			a.prefixes = append(a.prefixes, p.Masked())
		default:
			if ip, err := netip.ParseAddr(strings.Trim(e, "[]")); err == nil {
				a.prefixes = append(a.prefixes, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
				continue
			}
			a.hosts[strings.ToLower(e)] = true
		}
	}
	return a, nil
}

func (a allowList) ip(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// guardedClient is the HTTP client for input URLs: no proxy, connections
// checked by the guard, at most 5 redirects, each to an allowed scheme.
func guardedClient(allow allowList, allowHTTP bool, tlsConfig *tls.Config) *http.Client {
	tr := &http.Transport{
		Proxy: nil, // a proxy would make the guard check the proxy, not the target
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			d := net.Dialer{Timeout: 10 * time.Second}
			if !allow.hosts[strings.ToLower(host)] {
				d.Control = func(_, address string, _ syscall.RawConn) error {
					ap, err := netip.ParseAddrPort(address)
					if err != nil {
						return fmt.Errorf("%w: %s", ErrAddressForbidden, address)
					}
					if forbidden(ap.Addr()) && !allow.ip(ap.Addr()) {
						return fmt.Errorf("%w: %s is a private, loopback, link-local or reserved address", ErrAddressForbidden, ap.Addr())
					}
					return nil
				}
			}
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:       tlsConfig,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("stopped after 5 redirects")
			}
			return checkURLScheme(req.URL, allowHTTP)
		},
	}
}

func checkURLScheme(u *url.URL, allowHTTP bool) error {
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowHTTP:
	default:
		return fmt.Errorf("only https URLs are accepted, not %s", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("URL has no host")
	}
	return nil
}

// redactURL drops what may be secret in a URL (user info, query with
// signatures, fragment) so it can appear in an error.
func redactURL(u *url.URL) string {
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	s := r.String()
	if u.RawQuery != "" {
		s += "?…"
	}
	return s
}
