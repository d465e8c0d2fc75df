package ssrf

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Port values of an allow-list entry besides a port number.
const (
	// DefaultPort: the entry names no port, so it allows only the default
	// port of the URL's scheme (80 for http, 443 for https).
	DefaultPort = 0
	// AnyPort: the entry ends in ":*".
	AnyPort = -1
)

// AllowList names what the guard lets through although it is forbidden:
// host names and IP prefixes, each on a port. Its zero value allows
// nothing.
type AllowList struct {
	entries []allowEntry
}

type allowEntry struct {
	host   string       // a lower-case host name without a trailing dot; "" for a prefix
	prefix netip.Prefix // valid when host is ""
	port   int          // a port, DefaultPort or AnyPort
}

// ParseAllowList parses entries of the forms
//
//	127.0.0.1          an address, on the scheme's default port only
//	127.0.0.1:9000     an address on one port
//	[::1]:9000         an IPv6 address on one port ([::1] or ::1 without)
//	10.0.0.0/8         a prefix, default port; 10.0.0.0/8:9000 on one port
//	[fd00::/8]:9000    an IPv6 prefix on one port (fd00::/8 without)
//	hooks.internal     a host name, default port; hooks.internal:8443
//	host:*             any port
//
// An address may be written in any numeric IPv4 form ParseIPv4 reads.
// Blank entries are skipped. An error names the entry.
func ParseAllowList(entries []string) (AllowList, error) {
	var a AllowList
	for _, raw := range entries {
		e := strings.TrimSpace(raw)
		if e == "" {
			continue
		}
		ent, err := parseEntry(e)
		if err != nil {
			return AllowList{}, fmt.Errorf("allow-list entry %q: %w", e, err)
		}
		a.entries = append(a.entries, ent)
	}
	return a, nil
}

func parseEntry(e string) (allowEntry, error) {
	target, port, err := splitEntry(e)
	if err != nil {
		return allowEntry{}, err
	}
	ent := allowEntry{port: port}
	switch {
	case strings.Contains(target, "/"):
		p, err := netip.ParsePrefix(target)
		if err != nil {
			return allowEntry{}, fmt.Errorf("not a CIDR prefix: %w", err)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		ent.prefix = p.Masked()
		return ent, nil
	}
	if ip, err := netip.ParseAddr(target); err == nil {
		if ip.Zone() != "" {
			return allowEntry{}, fmt.Errorf("an address with a zone (%%%s) cannot be allowed", ip.Zone())
		}
		ip = ip.Unmap()
		ent.prefix = netip.PrefixFrom(ip, ip.BitLen())
		return ent, nil
	}
	ip, numeric, err := ParseIPv4(target)
	switch {
	case err != nil:
		return allowEntry{}, err
	case numeric:
		ent.prefix = netip.PrefixFrom(ip, 32)
		return ent, nil
	}
	host := hostKey(target)
	if !validHostName(host) {
		return allowEntry{}, fmt.Errorf("%q is not an address, a CIDR prefix or a host name", target)
	}
	ent.host = host
	return ent, nil
}

// splitEntry separates an entry's target from its port.
func splitEntry(e string) (target string, port int, err error) {
	rest := ""
	switch {
	case strings.HasPrefix(e, "["):
		end := strings.Index(e, "]")
		if end < 0 {
			return "", 0, fmt.Errorf("missing ]")
		}
		target, rest = e[1:end], e[end+1:]
		if rest != "" && !strings.HasPrefix(rest, ":") {
			return "", 0, fmt.Errorf("want [address]:port")
		}
		rest = strings.TrimPrefix(rest, ":")
		if rest == "" && strings.HasSuffix(e, ":") {
			return "", 0, fmt.Errorf("empty port")
		}
	case strings.Contains(e, "/"):
		// A prefix: a port can only follow its length, which has no colon.
		slash := strings.LastIndex(e, "/")
		bits, p, found := strings.Cut(e[slash+1:], ":")
		target = e[:slash+1] + bits
		if found {
			if p == "" {
				return "", 0, fmt.Errorf("empty port")
			}
			rest = p
		}
	case strings.Count(e, ":") > 1:
		// A bare IPv6 address: no port (write [addr]:port for one).
		return e, DefaultPort, nil
	default:
		var found bool
		target, rest, found = strings.Cut(e, ":")
		if found && rest == "" {
			return "", 0, fmt.Errorf("empty port")
		}
	}
	if rest == "" {
		return target, DefaultPort, nil
	}
	if rest == "*" {
		return target, AnyPort, nil
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("port %q: want 1 to 65535 or *", rest)
	}
	return target, n, nil
}

// hostKey is how host names are compared: lower case, without the
// trailing dot of a fully qualified name.
func hostKey(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }

// validHostName accepts letters, digits, '-', '_' and dots between labels.
func validHostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Empty reports whether the list allows nothing.
func (a AllowList) Empty() bool { return len(a.entries) == 0 }

// portMatches reports whether an entry's port allows port, defPort being
// the default port of the URL's scheme.
func (e allowEntry) portMatches(port, defPort int) bool {
	switch e.port {
	case AnyPort:
		return true
	case DefaultPort:
		return port == defPort
	}
	return port == e.port
}

// Host reports whether the list names host (a host name, as written in a
// URL) on port; defPort is the default port of the URL's scheme.
func (a AllowList) Host(host string, port, defPort int) bool {
	h := hostKey(host)
	for _, e := range a.entries {
		if e.host != "" && e.host == h && e.portMatches(port, defPort) {
			return true
		}
	}
	return false
}

// IP reports whether the list allows ip on port; defPort is the default
// port of the URL's scheme.
func (a AllowList) IP(ip netip.Addr, port, defPort int) bool {
	ip = ip.Unmap().WithZone("")
	for _, e := range a.entries {
		if e.host == "" && e.prefix.Contains(ip) && e.portMatches(port, defPort) {
			return true
		}
	}
	return false
}

// ipOnOtherPorts reports whether the list allows ip on some port, only not
// on this one (said in the refusal, as it is likely an entry without its
// port).
func (a AllowList) ipOnOtherPorts(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	for _, e := range a.entries {
		if e.host == "" && e.prefix.Contains(ip) {
			return true
		}
	}
	return false
}
