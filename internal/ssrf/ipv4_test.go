package ssrf_test

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
)

func TestParseIPv4(t *testing.T) {
	t.Parallel()
	tests := []struct {
		host        string
		want        string // "" when not numeric
		wantNumeric bool
		wantErr     string
	}{
		{host: "127.0.0.1", want: "127.0.0.1", wantNumeric: true},
		{host: "2130706433", want: "127.0.0.1", wantNumeric: true},
		{host: "0177.0.0.1", want: "127.0.0.1", wantNumeric: true},
		{host: "0x7f.1", want: "127.0.0.1", wantNumeric: true},
		{host: "127.1", want: "127.0.0.1", wantNumeric: true},
		{host: "0x7f000001", want: "127.0.0.1", wantNumeric: true},
		{host: "0X7F.0.0.1", want: "127.0.0.1", wantNumeric: true},
		{host: "127.0.1", want: "127.0.0.1", wantNumeric: true},
		{host: "10.0x10000", want: "10.1.0.0", wantNumeric: true},
		{host: "127.0.0.1.", want: "127.0.0.1", wantNumeric: true},
		{host: "0251.0376.0251.0376", want: "169.254.169.254", wantNumeric: true},
		{host: "0", want: "0.0.0.0", wantNumeric: true},
		{host: "0x", want: "0.0.0.0", wantNumeric: true},
		{host: "4294967295", want: "255.255.255.255", wantNumeric: true},
		{host: "4294967296", wantNumeric: true, wantErr: "does not fit in 32 bits"},
		{host: "99999999999999999999999", wantNumeric: true, wantErr: "not a decimal, octal or hex number"},
		{host: "256.0.0.1", wantNumeric: true, wantErr: "above 255"},
		{host: "1.2.3.256", wantNumeric: true, wantErr: "does not fit in 8 bits"},
		{host: "1.2.3.4.5", wantNumeric: true, wantErr: "more than 4 parts"},
		{host: "08.0.0.1", wantNumeric: true, wantErr: `"08" is not`},
		{host: "1..2", wantNumeric: true, wantErr: `"" is not`},
		{host: "foo.123", wantNumeric: true, wantErr: `"foo" is not`},
		{host: "example.com"},
		{host: "123.example"},
		{host: "0x7g"},
		{host: ""},
		{host: "."},
		{host: "1.2.3.4.."},
	}
	for _, tt := range tests {
		ip, numeric, err := ssrf.ParseIPv4(tt.host)
		require.Equal(t, tt.wantNumeric, numeric, tt.host)
		if tt.wantErr != "" {
			require.ErrorContains(t, err, tt.wantErr, tt.host)
			continue
		}
		require.NoError(t, err, tt.host)
		if tt.want != "" {
			require.Equal(t, netip.MustParseAddr(tt.want), ip, tt.host)
		}
	}
}

// decimalQuad is the reference for the common case: four decimal parts
// without leading zeros, each at most 255.
func decimalQuad(s string) (netip.Addr, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, p := range parts {
		if p == "" || len(p) > 3 || (len(p) > 1 && p[0] == '0') {
			return netip.Addr{}, false
		}
		n, err := strconv.Atoi(p)
		if err != nil || n > 255 || strings.ContainsAny(p, "+-") {
			return netip.Addr{}, false
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b), true
}

func FuzzParseIPv4(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001", "1.2.3.4.",
		"256.1.1.1", "0x", "08", "foo.1", "example.com", "1..1", "4294967296", "0xffffffff", "::1", "1.2.3.4.5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ip, numeric, err := ssrf.ParseIPv4(s)
		if err != nil && !numeric {
			t.Fatalf("%q: an error for a host that is not numeric: %v", s, err)
		}
		if numeric && err == nil && !ip.Is4() {
			t.Fatalf("%q: numeric without an IPv4 address: %v", s, ip)
		}
		if want, ok := decimalQuad(s); ok {
			if err != nil || !numeric || ip != want {
				t.Fatalf("%q: got %v %v %v, want %v", s, ip, numeric, err, want)
			}
			if std, err := netip.ParseAddr(s); err != nil || std != want {
				t.Fatalf("%q: the reference disagrees with netip: %v %v", s, std, err)
			}
		}
		if n, err2 := strconv.ParseUint(s, 10, 64); err2 == nil && (len(s) == 1 || s[0] != '0') {
			switch {
			case n <= 0xffffffff && (err != nil || ip != netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})):
				t.Fatalf("%q: one decimal number: got %v %v", s, ip, err)
			case n > 0xffffffff && err == nil:
				t.Fatalf("%q: a number above 32 bits parsed as %v", s, ip)
			}
		}
		if numeric && err == nil {
			// What it gives is an address in the usual form, read back the same.
			again, numeric2, err2 := ssrf.ParseIPv4(ip.String())
			if err2 != nil || !numeric2 || again != ip {
				t.Fatalf("%q: %v does not read back: %v %v", s, ip, again, err2)
			}
		}
	})
}
