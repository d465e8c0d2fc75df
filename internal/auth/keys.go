package auth

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Role is what a key may do; roles combine as a set.
type Role uint8

// The roles.
const (
	// Tenant: an API key. It submits and sees its own tenant's jobs.
	Tenant Role = 1 << iota
	// Admin: every tenant's jobs and the operator routes.
	Admin
	// Worker: a RunPod worker on the job-take routes.
	Worker
)

func (r Role) String() string {
	var names []string
	for _, x := range []struct {
		r    Role
		name string
	}{{Tenant, "API"}, {Admin, "admin"}, {Worker, "worker"}} {
		if r&x.r != 0 {
			names = append(names, x.name)
		}
	}
	if len(names) == 0 {
		return "no"
	}
	return strings.Join(names, " or ")
}

// article is the role set with its indefinite article: "an admin",
// "a worker".
func (r Role) article() string {
	if s := r.String(); !strings.HasPrefix(s, "worker") {
		return "an " + s
	}
	return "a " + r.String()
}

// maxKeyLen bounds a key, so that a header cannot make the comparison
// expensive.
const maxKeyLen = 4096

// Key is one accepted key.
type Key struct {
	// Name names the key in logs; for an API key it is the tenant.
	Name string
	Role Role
	sum  [sha256.Size]byte
}

// ParseKey reads one key entry of role: "name:key", or the bare key, whose
// name is then derived from it ("key-" and 8 hex digits of its SHA-256).
// An entry whose part before the first ':' is not a valid name is a bare
// key that contains ':'.
func ParseKey(role Role, entry string) (Key, error) {
	entry = strings.TrimSpace(entry)
	name, secret, named := strings.Cut(entry, ":")
	if !named || proto.ValidID(name) != nil {
		name, secret = "", entry
	}
	switch {
	case secret == "":
		return Key{}, fmt.Errorf("key is empty")
	case len(secret) > maxKeyLen:
		return Key{}, fmt.Errorf("key is %d bytes long, the limit is %d", len(secret), maxKeyLen)
	case strings.ContainsFunc(secret, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == ',' }):
		return Key{}, fmt.Errorf("key contains a space, a comma or a control character")
	}
	k := Key{Name: name, Role: role, sum: sha256.Sum256([]byte(secret))}
	if k.Name == "" {
		k.Name = "key-" + hex.EncodeToString(k.sum[:4])
	}
	return k, nil
}

// ParseKeys reads a list of key entries of role (a comma-separated
// setting); blank entries are skipped. An error names the entry by its
// position, never by its text.
func ParseKeys(role Role, entries []string) ([]Key, error) {
	var keys []Key
	for i, e := range entries {
		if strings.TrimSpace(e) == "" {
			continue
		}
		k, err := ParseKey(role, e)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// ReadKeys reads a key file of role: one entry per line ("name:key" or
// the bare key); blank lines and lines starting with '#' are skipped. An
// error names the line.
func ReadKeys(role Role, r io.Reader) ([]Key, error) {
	var keys []Key
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 64<<10)
	for line := 1; sc.Scan(); line++ {
		e := strings.TrimSpace(sc.Text())
		if e == "" || strings.HasPrefix(e, "#") {
			continue
		}
		k, err := ParseKey(role, e)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	return keys, nil
}

// ReadKeyFile is ReadKeys of the file at path; "" reads nothing.
func ReadKeyFile(role Role, path string) ([]Key, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	keys, err := ReadKeys(role, f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// Keyring holds the keys a server accepts. The zero value (and nil) holds
// none: authentication is off.
type Keyring struct {
	keys  []Key
	roles Role
}

// NewKeyring holds keys. The same key given twice, even for two roles, is
// an error: a worker key that is also an API key would let a tenant take
// jobs.
func NewKeyring(keys ...Key) (*Keyring, error) {
	k := &Keyring{}
	seen := map[[sha256.Size]byte]string{}
	for _, key := range keys {
		if other, dup := seen[key.sum]; dup {
			return nil, fmt.Errorf("the key of %s (%s) is also the key of %s: give each key once, for one role", key.Name, key.Role, other)
		}
		seen[key.sum] = fmt.Sprintf("%s (%s)", key.Name, key.Role)
		k.keys = append(k.keys, key)
		k.roles |= key.Role
	}
	return k, nil
}

// Empty reports whether the keyring holds no key.
func (k *Keyring) Empty() bool { return k == nil || len(k.keys) == 0 }

// Roles is the set of roles some key has.
func (k *Keyring) Roles() Role {
	if k == nil {
		return 0
	}
	return k.roles
}

// Count is how many keys have one of roles.
func (k *Keyring) Count(roles Role) int {
	if k == nil {
		return 0
	}
	n := 0
	for _, key := range k.keys {
		if key.Role&roles != 0 {
			n++
		}
	}
	return n
}

// Identify finds the key an Authorization header carries, as "Bearer
// <key>" or the bare key (RunPod's docs use both). Every key is compared,
// in constant time, so the time taken says nothing about which matched.
func (k *Keyring) Identify(header string) (Key, bool) {
	got := strings.TrimSpace(header)
	if len(got) > 7 && strings.EqualFold(got[:7], "bearer ") {
		got = strings.TrimSpace(got[7:])
	}
	if k == nil || got == "" || len(got) > maxKeyLen {
		return Key{}, false
	}
	sum := sha256.Sum256([]byte(got))
	found := -1
	for i := range k.keys {
		if subtle.ConstantTimeCompare(sum[:], k.keys[i].sum[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Key{}, false
	}
	return k.keys[found], true
}

// ParseKeyring parses the key entries of each role into one keyring.
func ParseKeyring(byRole map[Role][]string) (*Keyring, error) {
	var all []Key
	for _, role := range []Role{Tenant, Admin, Worker} {
		keys, err := ParseKeys(role, byRole[role])
		if err != nil {
			return nil, fmt.Errorf("%s keys: %w", role, err)
		}
		all = append(all, keys...)
	}
	return NewKeyring(all...)
}
