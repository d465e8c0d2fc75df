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
	"strconv"
	"syscall"
	"time"
)

// ErrForbidden is wrapped by every refusal of an address (a *Refusal).
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
func Forbidden(ip netip.Addr) bool { return kind(ip) != "" }

// kind says why ip is forbidden, "" when it is not.
func kind(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			return kind(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(ip):
			return kind(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	switch {
	case !ip.IsValid():
		return "not an address"
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsPrivate():
		return "a private address"
	case ip.IsLinkLocalUnicast():
		return "a link-local address (cloud metadata lives there)"
	case ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast(), ip.IsMulticast():
		return "a multicast address"
	case ip.IsUnspecified():
		return "the unspecified address"
	}
	for _, p := range forbiddenPrefixes {
		if p.Contains(ip) {
			return "a reserved address"
		}
	}
	return ""
}

// Config says what one use of outside URLs may reach. Build one Guard per
// use and process from it.
type Config struct {
	// Use names the URLs in every refusal: "input URL", "webhook",
	// "s3Config.endpointUrl", "download".
	Use string
	// Allow lists the forbidden addresses and names that may be reached
	// anyway, in ParseAllowList's forms.
	Allow []string
	// AllowHTTP also accepts http:// URLs; only https:// otherwise, on the
	// first request and on every redirect.
	AllowHTTP bool
	// AllowSetting and HTTPSetting name the settings behind Allow and
	// AllowHTTP ("INPUT_URL_ALLOW"); refusals say which one would let the
	// request through.
	AllowSetting, HTTPSetting string
	// TLS configures TLS; nil is Go's default.
	TLS *tls.Config
	// MaxRedirects is how many redirects are followed, each hop checked
	// again; 0 means 5. Negative follows none: a 3xx is returned as the
	// answer.
	MaxRedirects int
}

// Guard enforces a Config on the connections of its one HTTP client:
// every request's scheme is checked, and every connection's address at
// connect time, after DNS, on every redirect hop and never through a
// proxy. Hosts that are numbers ("2130706433", "0x7f.1") are read as the
// IPv4 address they denote, judged as such and dialled without DNS. It is
// safe for concurrent use.
type Guard struct {
	cfg    Config
	allow  AllowList
	tr     *http.Transport
	client *http.Client
}

// New checks cfg and builds its guard. The error names the bad allow-list
// entry.
func New(cfg Config) (*Guard, error) {
	allow, err := ParseAllowList(cfg.Allow)
	if err != nil {
		return nil, err
	}
	if cfg.MaxRedirects == 0 {
		cfg.MaxRedirects = 5
	}
	g := &Guard{cfg: cfg, allow: allow}
	g.tr = &http.Transport{
		Proxy:                 nil, // a proxy would make the guard check the proxy, not the target
		DialContext:           g.dial,
		TLSClientConfig:       cfg.TLS,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
	}
	g.client = &http.Client{
		Transport: &transport{g: g},
		CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if g.cfg.MaxRedirects < 0 {
				return http.ErrUseLastResponse
			}
			if len(via) > g.cfg.MaxRedirects { // via holds the first request too
				return g.refusal(fmt.Sprintf("stopped after %d redirects", g.cfg.MaxRedirects))
			}
			return nil
		},
	}
	return g, nil
}

// Client is the guard's HTTP client, the only way its use reaches out.
// Set its Timeout, if any, before the first request.
func (g *Guard) Client() *http.Client { return g.client }

// Close drops the client's idle connections.
func (g *Guard) Close() { g.tr.CloseIdleConnections() }

// Check refuses early what the guard would refuse anyway: a scheme other
// than https (or http when allowed), a URL without a host, a bad port, a
// host that ends in a number but is no address, and a host written as an
// address that the guard forbids. Host names are judged when they are
// resolved, at connect time. Every error is a *Refusal.
func (g *Guard) Check(u *url.URL) error {
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && g.cfg.AllowHTTP:
	case u.Scheme == "http" && g.cfg.HTTPSetting != "":
		return g.refusal(fmt.Sprintf("only https URLs are accepted, not http (%s allows http)", g.cfg.HTTPSetting))
	default:
		return g.refusal("only https URLs are accepted, not " + u.Scheme)
	}
	host := u.Hostname()
	if host == "" {
		return g.refusal("URL has no host")
	}
	port := defaultPort(u.Scheme)
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return g.refusal(fmt.Sprintf("port %q is out of range", p))
		}
		port = n
	}
	ip, literal, err := literalAddr(host)
	switch {
	case err != nil:
		return g.refusal(err.Error())
	case literal:
		return g.judge(ip, port, defaultPort(u.Scheme))
	}
	return nil
}

// Refusal is the guard's error: a URL or an address the rules refuse. Its
// text names the use and, for an address, the setting that could allow
// it; it never carries what a remote service said.
type Refusal struct {
	Use    string
	Reason string
	// Address is set when an address was refused; the error then wraps
	// ErrForbidden.
	Address netip.AddrPort
}

func (r *Refusal) Error() string {
	s := r.Reason
	if r.Address.IsValid() {
		s = ErrForbidden.Error() + ": " + r.Reason
	}
	if r.Use != "" {
		s = r.Use + ": " + s
	}
	return s
}

// Is makes an address refusal match ErrForbidden.
func (r *Refusal) Is(target error) bool { return target == ErrForbidden && r.Address.IsValid() }

func (g *Guard) refusal(reason string) error { return &Refusal{Use: g.cfg.Use, Reason: reason} }

// judge refuses ip:port unless it is public or allowed.
func (g *Guard) judge(ip netip.Addr, port, defPort int) error {
	k := kind(ip)
	if k == "" || g.allow.IP(ip, port, defPort) {
		return nil
	}
	ap := netip.AddrPortFrom(ip.WithZone(""), uint16(port))
	reason := fmt.Sprintf("%s is %s", ap, k)
	switch {
	case g.cfg.AllowSetting == "":
	case g.allow.ipOnOtherPorts(ip):
		reason += fmt.Sprintf("; %s allows it on other ports only (an entry without a port means port %d)", g.cfg.AllowSetting, defPort)
	default:
		reason += fmt.Sprintf(" (%s lists exceptions)", g.cfg.AllowSetting)
	}
	return &Refusal{Use: g.cfg.Use, Reason: reason, Address: ap}
}

// literalAddr reads a URL's host as an address: IPv6 or IPv4 in any
// numeric form. literal is false for a host name; err is set for a host
// that ends in a number but is no address.
func literalAddr(host string) (ip netip.Addr, literal bool, err error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip, true, nil
	}
	ip, numeric, err := ParseIPv4(host)
	return ip, numeric, err
}

func defaultPort(scheme string) int {
	if scheme == "http" {
		return 80
	}
	return 443
}

type schemeKey struct{}

// transport checks each request, first and redirected, and tells the dial
// the request's scheme, whose default port entries without a port allow.
type transport struct{ g *Guard }

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.g.Check(req.URL); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	ctx := context.WithValue(req.Context(), schemeKey{}, req.URL.Scheme)
	return t.g.tr.RoundTrip(req.WithContext(ctx))
}

// dial connects to addr if the guard allows it: an address host is judged
// and dialled as it is; an allowed host name is dialled freely; any other
// name is resolved and each address is judged as the dialer is about to
// connect to it.
func (g *Guard) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, g.refusal(fmt.Sprintf("port %q is not a number", p))
	}
	scheme, _ := ctx.Value(schemeKey{}).(string)
	defPort := defaultPort(scheme)
	d := net.Dialer{Timeout: 10 * time.Second}
	ip, literal, err := literalAddr(host)
	switch {
	case err != nil:
		return nil, g.refusal(err.Error())
	case literal:
		if err := g.judge(ip, port, defPort); err != nil {
			return nil, err
		}
		return d.DialContext(ctx, network, netip.AddrPortFrom(ip, uint16(port)).String())
	case g.allow.Host(host, port, defPort):
		return d.DialContext(ctx, network, addr)
	}
	d.Control = func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return g.refusal(fmt.Sprintf("cannot judge address %q", address))
		}
		return g.judge(ap.Addr(), int(ap.Port()), defPort)
	}
	return d.DialContext(ctx, network, addr)
}

// Redact drops what may be secret in a URL (user info, query with
// signatures, fragment) so it can appear in an error or a log.
func Redact(u *url.URL) string {
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	s := r.String()
	if u.RawQuery != "" || u.ForceQuery {
		s += "?…"
	}
	return s
}

// RedactString is Redact of a URL given as text; text that does not parse
// as a URL is not repeated.
func RedactString(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a URL that does not parse)"
	}
	return Redact(u)
}
