package ssrf_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
)

func TestParseAllowList(t *testing.T) {
	t.Parallel()
	type probe struct {
		host string // an address, or a host name
		port int
		def  int // the scheme's default port
		want bool
	}
	tests := []struct {
		entry   string
		probes  []probe
		wantErr string
	}{
		{entry: "127.0.0.1", probes: []probe{
			{"127.0.0.1", 443, 443, true}, {"127.0.0.1", 80, 80, true}, {"127.0.0.1", 9000, 443, false},
			{"127.0.0.1", 443, 80, false}, {"127.0.0.2", 443, 443, false}, {"::ffff:127.0.0.1", 443, 443, true},
		}},
		{entry: "127.0.0.1:9000", probes: []probe{{"127.0.0.1", 9000, 443, true}, {"127.0.0.1", 443, 443, false}, {"127.0.0.1", 9001, 80, false}}},
		{entry: "127.0.0.1:*", probes: []probe{{"127.0.0.1", 9000, 443, true}, {"127.0.0.1", 1, 80, true}}},
		{entry: "[::1]:9000", probes: []probe{{"::1", 9000, 443, true}, {"::1", 443, 443, false}}},
		{entry: "[::1]", probes: []probe{{"::1", 443, 443, true}, {"::1", 9000, 443, false}}},
		{entry: "::1", probes: []probe{{"::1", 80, 80, true}, {"::1", 9000, 80, false}}},
		{entry: "10.0.0.0/8", probes: []probe{{"10.9.9.9", 443, 443, true}, {"10.9.9.9", 9000, 443, false}, {"11.0.0.1", 443, 443, false}}},
		{entry: "10.0.0.0/8:9000", probes: []probe{{"10.9.9.9", 9000, 443, true}, {"10.9.9.9", 443, 443, false}}},
		{entry: "10.1.2.3/8:*", probes: []probe{{"10.200.0.1", 5, 443, true}}},
		{entry: "[fd00::/8]:9000", probes: []probe{{"fd12::1", 9000, 443, true}, {"fd12::1", 443, 443, false}}},
		{entry: "fd00::/8", probes: []probe{{"fd12::1", 443, 443, true}}},
		{entry: "fd00::/8:8443", probes: []probe{{"fd12::1", 8443, 443, true}}},
		{entry: "2130706433:9000", probes: []probe{{"127.0.0.1", 9000, 443, true}}},
		{entry: "0x7f.1", probes: []probe{{"127.0.0.1", 443, 443, true}}},
		{entry: "Hooks.Internal.", probes: []probe{
			{"hooks.internal", 443, 443, true}, {"HOOKS.internal.", 80, 80, true}, {"hooks.internal", 8443, 443, false},
			{"other.internal", 443, 443, false},
		}},
		{entry: "hooks.internal:8443", probes: []probe{{"hooks.internal", 8443, 443, true}, {"hooks.internal", 443, 443, false}}},
		{entry: "assets_1.internal:*", probes: []probe{{"assets_1.internal", 1234, 80, true}}},
		{entry: "10.0.0.0/99", wantErr: "not a CIDR prefix"},
		{entry: "127.0.0.1:0", wantErr: `port "0": want 1 to 65535 or *`},
		{entry: "127.0.0.1:x", wantErr: `port "x"`},
		{entry: "127.0.0.1:", wantErr: "empty port"},
		{entry: "[::1]:", wantErr: "empty port"},
		{entry: "[::1", wantErr: "missing ]"},
		{entry: "[::1]9000", wantErr: "want [address]:port"},
		{entry: "10.0.0.0/8:", wantErr: "empty port"},
		{entry: "fe80::1%eth0", wantErr: "zone"},
		{entry: "a b", wantErr: "not an address, a CIDR prefix or a host name"},
		{entry: "256.0.0.1", wantErr: "above 255"},
		{entry: "host:1:2", wantErr: "not an address"},
	}
	for _, tt := range tests {
		a, err := ssrf.ParseAllowList([]string{" ", tt.entry})
		if tt.wantErr != "" {
			require.ErrorContains(t, err, tt.wantErr, tt.entry)
			require.ErrorContains(t, err, `allow-list entry "`+tt.entry+`"`)
			continue
		}
		require.NoError(t, err, tt.entry)
		for _, p := range tt.probes {
			var got bool
			if ip, err := netip.ParseAddr(p.host); err == nil {
				got = a.IP(ip, p.port, p.def)
			} else {
				got = a.Host(p.host, p.port, p.def)
			}
			require.Equal(t, p.want, got, "%s allows %s port %d (default %d)", tt.entry, p.host, p.port, p.def)
		}
	}
	a, err := ssrf.ParseAllowList(nil)
	require.NoError(t, err)
	require.True(t, a.Empty())
	require.False(t, a.IP(netip.MustParseAddr("127.0.0.1"), 443, 443))
}

func FuzzParseAllowList(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "127.0.0.1:9000", "[::1]:9000", "[::1]", "10.0.0.0/8:*", "[fd00::/8]:1",
		"fd00::/8:8443", "hooks.internal:8443", "host:*", "2130706433", "a b", "[::1", "10.0.0.0/8:", "x:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, entry string) {
		a, err := ssrf.ParseAllowList([]string{entry})
		if err != nil {
			if !strings.Contains(err.Error(), "allow-list entry") {
				t.Fatalf("%q: the error does not name the entry: %v", entry, err)
			}
			return
		}
		// Whatever it accepted can be asked about without panicking.
		for _, ip := range []string{"127.0.0.1", "::1", "10.1.2.3", "fe80::1"} {
			a.IP(netip.MustParseAddr(ip), 9000, 443)
		}
		a.Host(entry, 443, 443)
	})
}
