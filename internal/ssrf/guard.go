package ssrf

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

// ErrForbidden is returned when a URL leads to an address the guard
// forbids.
var ErrForbidden = errors.New("address not allowed")

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

// Forbidden reports whether ip is loopback, private, link-local (cloud
// metadata 169.254.169.254 included), multicast, unspecified or otherwise
// special. IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is judged as IPv4.
func Forbidden(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			return Forbidden(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(ip):
			return Forbidden(netip.AddrFrom4([4]byte(b[2:6])))
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

// AllowList names what the guard lets through although it is forbidden:
// exact host names, and IP prefixes.
type AllowList struct {
	Hosts    map[string]bool
	Prefixes []netip.Prefix
}

// ParseAllowList parses entries that are host names, IP addresses or CIDR
// prefixes ("10.0.0.0/8", "127.0.0.1", "assets.internal"); blank entries
// are skipped.
func ParseAllowList(entries []string) (AllowList, error) {
	a := AllowList{Hosts: map[string]bool{}}
	for _, e := range entries {
		e = strings.TrimSpace(e)
		switch {
		case e == "":
		case strings.Contains(e, "/"):
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return a, fmt.Errorf("%q: %w", e, err)
			}
			a.Prefixes = append(a.Prefixes, p.Masked())
		default:
			if ip, err := netip.ParseAddr(strings.Trim(e, "[]")); err == nil {
				a.Prefixes = append(a.Prefixes, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
				continue
			}
			a.Hosts[strings.ToLower(e)] = true
		}
	}
	return a, nil
}

// IP reports whether the list allows ip.
func (a AllowList) IP(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range a.Prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Client returns an HTTP client whose connections are checked by the
// guard: no proxy, at most 5 redirects, each to a scheme CheckScheme
// accepts. tlsConfig may be nil. A refused connection's error wraps
// forbidden, which should wrap ErrForbidden and say what the URL was for
// (e.g. "address not allowed for input URLs"); nil means ErrForbidden.
func Client(allow AllowList, allowHTTP bool, tlsConfig *tls.Config, forbidden error) *http.Client {
	if forbidden == nil {
		forbidden = ErrForbidden
	}
	tr := &http.Transport{
		Proxy: nil, // a proxy would make the guard check the proxy, not the target
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			d := net.Dialer{Timeout: 10 * time.Second}
			if !allow.Hosts[strings.ToLower(host)] {
				d.Control = func(_, address string, _ syscall.RawConn) error {
					ap, err := netip.ParseAddrPort(address)
					if err != nil {
						return fmt.Errorf("%w: %s", forbidden, address)
					}
					if Forbidden(ap.Addr()) && !allow.IP(ap.Addr()) {
						return fmt.Errorf("%w: %s is a private, loopback, link-local or reserved address", forbidden, ap.Addr())
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
			return CheckScheme(req.URL, allowHTTP)
		},
	}
}

// CheckScheme accepts https URLs with a host, and http ones when allowHTTP.
func CheckScheme(u *url.URL, allowHTTP bool) error {
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

// Redact drops what may be secret in a URL (user info, query with
// signatures, fragment) so it can appear in an error or a log.
func Redact(u *url.URL) string {
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	s := r.String()
	if u.RawQuery != "" {
		s += "?…"
	}
	return s
}
