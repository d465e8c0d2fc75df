package ssrf

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseIPv4 reads a host written as an IPv4 address in any of the forms
// inet_aton(3) and browsers accept: one to four parts separated by dots,
// each decimal, octal (a leading 0) or hexadecimal (0x), the last part
// filling the bytes that are left ("127.1", "2130706433", "0x7f.1",
// "0177.0.0.1", "0x7f000001"), with at most one trailing dot. numeric
// reports whether host ends in a number, as WHATWG's URL standard says:
// such a host is an address or invalid, never a name to look up, so err is
// set when numeric is true and the address does not parse.
func ParseIPv4(host string) (addr netip.Addr, numeric bool, err error) {
	s := strings.TrimSuffix(host, ".")
	if s == "" || strings.HasSuffix(s, ".") {
		return netip.Addr{}, false, nil
	}
	parts := strings.Split(s, ".")
	if !looksNumeric(parts[len(parts)-1]) {
		return netip.Addr{}, false, nil
	}
	if len(parts) > 4 {
		return netip.Addr{}, true, notIPv4(host, "it has more than 4 parts")
	}
	var v uint64
	for i, p := range parts {
		n, ok := parseNumber(p)
		if !ok {
			return netip.Addr{}, true, notIPv4(host, fmt.Sprintf("%q is not a decimal, octal or hex number", p))
		}
		if i < len(parts)-1 {
			if n > 0xff {
				return netip.Addr{}, true, notIPv4(host, fmt.Sprintf("part %q is above 255", p))
			}
			v |= n << (8 * (3 - i))
			continue
		}
		rest := 8 * (4 - len(parts) + 1) // bits the last part fills
		if n >= 1<<rest {
			return netip.Addr{}, true, notIPv4(host, fmt.Sprintf("last part %q does not fit in %d bits", p, rest))
		}
		v |= n
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true, nil
}

func notIPv4(host, why string) error {
	return fmt.Errorf("host %q ends in a number but is not an IPv4 address: %s", host, why)
}

// parseNumber reads one part: 0x… hexadecimal (0x alone is 0, as
// browsers read it), 0… octal, else decimal. Values above 2^32 fail.
func parseNumber(p string) (uint64, bool) {
	base := uint64(10)
	switch {
	case len(p) >= 2 && (p[:2] == "0x" || p[:2] == "0X"):
		base, p = 16, p[2:]
		if p == "" {
			return 0, true
		}
	case len(p) >= 2 && p[0] == '0':
		base, p = 8, p[1:]
	case p == "":
		return 0, false
	}
	var n uint64
	for i := 0; i < len(p); i++ {
		d, ok := digit(p[i])
		if !ok || d >= base {
			return 0, false
		}
		n = n*base + d
		if n > 1<<32 {
			return 0, false
		}
	}
	return n, true
}

// looksNumeric reports whether p is made of a number's characters (digits,
// or 0x and hex digits), whether or not its value fits: "4294967296" and
// "09" are no names either.
func looksNumeric(p string) bool {
	if len(p) >= 2 && (p[:2] == "0x" || p[:2] == "0X") {
		p = p[2:]
		for i := 0; i < len(p); i++ {
			if _, ok := digit(p[i]); !ok {
				return false
			}
		}
		return true
	}
	if p == "" {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
	}
	return true
}

func digit(c byte) (uint64, bool) {
	switch {
	case c >= '0' && c <= '9':
		return uint64(c - '0'), true
	case c >= 'a' && c <= 'f':
		return uint64(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return uint64(c-'A') + 10, true
	}
	return 0, false
}
