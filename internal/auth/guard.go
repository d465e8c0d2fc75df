package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Principal is who a request comes from, once the guard let it through.
type Principal struct {
	// Name is the key's name; "" when authentication is off.
	Name string
	// Role is the key's role; Admin when authentication is off.
	Role Role
	// Tenant owns the jobs the principal submits: an API key's name, or
	// proto.DefaultTenant for admins and when authentication is off.
	Tenant string
}

// Sees reports whether the principal may see and act on a job of tenant:
// its own tenant's, or any for an admin.
func (p Principal) Sees(tenant string) bool { return p.Role == Admin || p.Tenant == tenant }

// All reports whether the principal acts for every tenant (an admin).
func (p Principal) All() bool { return p.Role == Admin }

type principalKey struct{}

// FromContext returns the principal the guard put in a request's context;
// ok is false for a request that did not pass a guard.
func FromContext(ctx context.Context) (p Principal, ok bool) {
	p, ok = ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// WithPrincipal returns ctx carrying p, for tests and for callers that
// act on behalf of a principal outside a request.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// Guard checks requests before they reach their routes: the browser
// origin rules, then the key. Build it with NewGuard; it is safe for
// concurrent use.
type Guard struct {
	keys    *Keyring
	origins map[string]bool
}

// NewGuard builds a guard over keys (nil: authentication off) that lets
// browsers on the given origins ("https://app.example.com") make
// cross-origin requests.
func NewGuard(keys *Keyring, allowedOrigins []string) (*Guard, error) {
	g := &Guard{keys: keys, origins: map[string]bool{}}
	for _, o := range allowedOrigins {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		n, err := ParseOrigin(o)
		if err != nil {
			return nil, fmt.Errorf("allowed origin %q: %w", o, err)
		}
		g.origins[n] = true
	}
	return g, nil
}

// Keys is the guard's keyring.
func (g *Guard) Keys() *Keyring { return g.keys }

// Open reports whether authentication is off (no key at all).
func (g *Guard) Open() bool { return g.keys.Empty() }

// ParseOrigin checks and normalises a browser origin: scheme http or
// https, a host, an explicit port only when it is not the scheme's
// default, nothing else.
func ParseOrigin(s string) (string, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "", err
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("scheme must be http or https")
	case u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("an origin is scheme://host[:port] and nothing more")
	}
	host, port := u.Hostname(), u.Port()
	if port == defaultPort(u.Scheme) {
		port = ""
	}
	if port != "" {
		host = net.JoinHostPort(host, port)
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return u.Scheme + "://" + strings.ToLower(host), nil
}

func defaultPort(scheme string) string {
	if scheme == "https" {
		return "443"
	}
	return "80"
}

// sameOrigin reports whether a normalised origin is the server's own: its
// host and port are the request's Host.
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	want := strings.ToLower(u.Host)
	if u.Port() == "" {
		want = net.JoinHostPort(u.Hostname(), defaultPort(u.Scheme))
	}
	host := strings.ToLower(r.Host)
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(strings.Trim(host, "[]"), defaultPort(u.Scheme))
	}
	return host == strings.ToLower(want)
}

// checkOrigin applies the browser rules: it reports the allowed foreign
// origin to answer CORS for ("" for none) or why the request is refused.
func (g *Guard) checkOrigin(r *http.Request) (cors string, refuse string) {
	origin := r.Header.Get("Origin")
	site := r.Header.Get("Sec-Fetch-Site")
	if origin != "" {
		n, err := ParseOrigin(origin)
		switch {
		case err != nil:
			return "", fmt.Sprintf("cross-origin request refused: Origin %q is not an http or https origin", origin)
		case sameOrigin(n, r):
			return "", ""
		case g.origins[n]:
			return n, ""
		}
		return "", fmt.Sprintf("cross-origin request from %s refused; list it in ALLOWED_ORIGINS to allow it", n)
	}
	if site == "cross-site" {
		return "", "cross-site request refused (Sec-Fetch-Site: cross-site); list the page's origin in ALLOWED_ORIGINS to allow it"
	}
	return "", ""
}

// Require serves h to requests that pass the origin rules and carry a key
// of one of roles, with the principal in their context (FromContext).
// With no key configured at all every request passes as an admin of the
// default tenant, but one with a body must be JSON. Refusals are answered
// as {"error": "..."}: 403 for a foreign origin or a key of another role,
// 401 without a known key, 415 for a body that is not JSON.
func (g *Guard) Require(roles Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cors, refuse := g.checkOrigin(r)
		if refuse != "" {
			writeError(w, http.StatusForbidden, refuse)
			return
		}
		if cors != "" {
			hd := w.Header()
			hd.Set("Access-Control-Allow-Origin", cors)
			hd.Add("Vary", "Origin")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				hd.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
				hd.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
				hd.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		p, code, why := g.identify(roles, r)
		if code != 0 {
			writeError(w, code, why)
			return
		}
		h.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), p)))
	})
}

func (g *Guard) identify(roles Role, r *http.Request) (Principal, int, string) {
	if g.keys.Empty() {
		if why := notJSON(r); why != "" {
			return Principal{}, http.StatusUnsupportedMediaType, why
		}
		return Principal{Role: Admin, Tenant: proto.DefaultTenant}, 0, ""
	}
	k, ok := g.keys.Identify(r.Header.Get("Authorization"))
	if !ok {
		return Principal{}, http.StatusUnauthorized, "Unauthorized: give a valid " + roles.String() + " key as 'Authorization: Bearer <key>'"
	}
	if k.Role&roles == 0 {
		why := fmt.Sprintf("Forbidden: this route needs %s key, and %s is a key of another role", roles.article(), k.Name)
		if g.keys.Roles()&roles == 0 {
			why += fmt.Sprintf(" (no %s key is configured)", roles)
		}
		return Principal{}, http.StatusForbidden, why
	}
	p := Principal{Name: k.Name, Role: k.Role, Tenant: proto.DefaultTenant}
	if k.Role == Tenant {
		p.Tenant = k.Name
	}
	return p, 0, ""
}

// notJSON says why a request to a server without keys is refused: a body
// that a browser could send cross-site without asking (a form, plain
// text) is not JSON.
func notJSON(r *http.Request) string {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return ""
	}
	ct := r.Header.Get("Content-Type")
	if ct == "" && r.ContentLength == 0 {
		return "" // no body: e.g. POST /cancel/{id}
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json")) {
		return ""
	}
	if ct == "" {
		ct = "none"
	}
	return fmt.Sprintf("Content-Type must be application/json (got %s): without API keys this server takes JSON bodies only, so that a web page cannot post to it", ct)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// Loopback reports whether a listen address takes connections from this
// host alone ("127.0.0.1:8000", "[::1]:80", "localhost:8000"); ":8000"
// and "0.0.0.0:8000" take them from everywhere.
func Loopback(listenAddr string) bool {
	host, _, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
