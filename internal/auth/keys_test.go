package auth_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestParseKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, entry, wantName, wantErr string
	}{
		{name: "named", entry: "acme:s3cret-1", wantName: "acme"},
		{name: "bare", entry: "s3cret-1", wantName: "key-"},
		{name: "bare with a colon after a non-name", entry: "a.b:c", wantName: "key-"},
		{name: "spaces trimmed", entry: "  acme:k  ", wantName: "acme"},
		{name: "empty", entry: "  ", wantErr: "key is empty"},
		{name: "name without key", entry: "acme:", wantErr: "key is empty"},
		{name: "space inside", entry: "acme:a b", wantErr: "contains a space"},
		{name: "control character", entry: "acme:a\x01b", wantErr: "control character"},
		{name: "too long", entry: strings.Repeat("k", 5000), wantErr: "the limit is 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := auth.ParseKey(auth.Tenant, tt.entry)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(k.Name, tt.wantName), k.Name)
			require.NoError(t, proto.ValidID(k.Name), "a tenant name is a subject token")
		})
	}
}

func TestBareKeyNameIsStableAndNotTheKey(t *testing.T) {
	t.Parallel()
	a, err := auth.ParseKey(auth.Tenant, "rpa_ABCDEF123")
	require.NoError(t, err)
	b, err := auth.ParseKey(auth.Tenant, "rpa_ABCDEF123")
	require.NoError(t, err)
	c, err := auth.ParseKey(auth.Tenant, "rpa_ABCDEF124")
	require.NoError(t, err)
	require.Equal(t, a.Name, b.Name)
	require.NotEqual(t, a.Name, c.Name)
	require.NotContains(t, a.Name, "ABCDEF")
	require.Len(t, a.Name, len("key-")+8)
}

func TestReadKeysNamesTheLine(t *testing.T) {
	t.Parallel()
	keys, err := auth.ReadKeys(auth.Admin, strings.NewReader("# operators\n\nops:k1\n  k2  \n"))
	require.NoError(t, err)
	require.Len(t, keys, 2)
	require.Equal(t, "ops", keys[0].Name)
	require.Equal(t, auth.Admin, keys[1].Role)

	_, err = auth.ReadKeys(auth.Admin, strings.NewReader("ops:k1\nops:bad key\n"))
	require.ErrorContains(t, err, "line 2: key contains a space")
	require.NotContains(t, err.Error(), "bad key", "an error never repeats a key")

	_, err = auth.ParseKeys(auth.Tenant, []string{"a:1", "b:x y"})
	require.ErrorContains(t, err, "entry 2")
	require.NotContains(t, err.Error(), "x y")
}

func TestKeyringIdentifies(t *testing.T) {
	t.Parallel()
	api, err := auth.ParseKeys(auth.Tenant, []string{"acme:a-key", "acme:a-key-2", "beta:b-key"})
	require.NoError(t, err)
	admin, err := auth.ParseKeys(auth.Admin, []string{"ops:admin-key"})
	require.NoError(t, err)
	ring, err := auth.NewKeyring(append(api, admin...)...)
	require.NoError(t, err)
	require.Equal(t, auth.Tenant|auth.Admin, ring.Roles())
	require.Equal(t, 3, ring.Count(auth.Tenant))

	for header, want := range map[string]string{
		"Bearer a-key": "acme", "a-key-2": "acme", "bearer b-key": "beta", "BEARER   admin-key ": "ops",
	} {
		k, ok := ring.Identify(header)
		require.True(t, ok, header)
		require.Equal(t, want, k.Name, header)
	}
	for _, header := range []string{"", "Bearer ", "Bearer a-ke", "a-key ", "Basic YTpi", "Bearer a-key-3"} {
		_, ok := ring.Identify(header)
		if header == "a-key " {
			require.True(t, ok, "surrounding space is trimmed")
			continue
		}
		require.False(t, ok, header)
	}
	var none *auth.Keyring
	require.True(t, none.Empty())
	_, ok := none.Identify("Bearer a-key")
	require.False(t, ok)
}

func TestKeyringRefusesAKeyInTwoRoles(t *testing.T) {
	t.Parallel()
	api, err := auth.ParseKey(auth.Tenant, "acme:shared")
	require.NoError(t, err)
	worker, err := auth.ParseKey(auth.Worker, "rp:shared")
	require.NoError(t, err)
	_, err = auth.NewKeyring(api, worker)
	require.ErrorContains(t, err, "the key of rp (worker) is also the key of acme (API)")
	require.NotContains(t, err.Error(), "shared")
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"acme:k", "k", ":k", "a:b:c", "a b", "x\x00", "名前:k"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, entry string) {
		k, err := auth.ParseKey(auth.Tenant, entry)
		if err != nil {
			if strings.Contains(err.Error(), strings.TrimSpace(entry)) && len(strings.TrimSpace(entry)) > 3 {
				t.Fatalf("error %q repeats the entry", err)
			}
			return
		}
		if proto.ValidID(k.Name) != nil {
			t.Fatalf("%q: name %q is not a valid tenant", entry, k.Name)
		}
		ring, err := auth.NewKeyring(k)
		if err != nil {
			t.Fatal(err)
		}
		secret := strings.TrimSpace(entry)
		if name, rest, ok := strings.Cut(secret, ":"); ok && proto.ValidID(name) == nil {
			secret = rest
		}
		got, ok := ring.Identify("Bearer " + secret)
		if !ok || got.Name != k.Name {
			t.Fatalf("%q: its own key %q is not identified", entry, secret)
		}
	})
}

func FuzzReadKeys(f *testing.F) {
	f.Add("# c\nacme:k\n\nk2\n")
	f.Add("a:\n")
	f.Fuzz(func(t *testing.T, file string) {
		keys, err := auth.ReadKeys(auth.Admin, strings.NewReader(file))
		if err != nil {
			return
		}
		for _, k := range keys {
			if k.Role != auth.Admin || proto.ValidID(k.Name) != nil {
				t.Fatalf("bad key %+v", k)
			}
		}
	})
}
