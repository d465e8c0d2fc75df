package role

import (
	"fmt"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

// Keys are the key settings of a process's HTTP servers (package auth):
// API keys are tenants, admin keys reach every tenant's jobs and the
// operator routes, worker keys the job-take routes. Each list also comes
// from a file, for Docker and Kubernetes secrets.
type Keys struct {
	API, Admin, Worker             []string
	APIFile, AdminFile, WorkerFile string
	// AllowedOrigins are the browser origins that may call the servers
	// cross-origin.
	AllowedOrigins []string
}

const keyFormat = `"name:key" (the name is the tenant; several keys may share one) or the bare key`

func (k *Keys) bindAPI(fs *flagenv.Set) {
	fs.List(&k.API, "api-keys", "API_KEYS", nil, "API keys, comma-separated, each "+keyFormat+"; each names a tenant, which sees its own jobs only; no keys at all = no authentication")
	fs.String(&k.APIFile, "api-keys-file", "API_KEYS_FILE", "", "file with one API key per line (same forms; '#' starts a comment); added to API_KEYS")
}

func (k *Keys) bindAdmin(fs *flagenv.Set) {
	fs.List(&k.Admin, "admin-keys", "ADMIN_KEYS", nil, "admin keys, comma-separated (\"name:key\" or bare): every tenant's jobs and the operator routes (/fleet, /dlq, /metrics)")
	fs.String(&k.AdminFile, "admin-keys-file", "ADMIN_KEYS_FILE", "", "file with one admin key per line; added to ADMIN_KEYS")
}

func (k *Keys) bindWorker(fs *flagenv.Set) {
	fs.List(&k.Worker, "worker-keys", "WORKER_KEYS", nil, "keys RunPod workers send (their RUNPOD_AI_API_KEY), comma-separated; required with --job-take; never the same as an API or admin key")
	fs.String(&k.WorkerFile, "worker-keys-file", "WORKER_KEYS_FILE", "", "file with one worker key per line; added to WORKER_KEYS")
}

func (k *Keys) bindOrigins(fs *flagenv.Set) {
	fs.List(&k.AllowedOrigins, "allowed-origins", "ALLOWED_ORIGINS", nil, "browser origins (https://host[:port]) allowed to call this server cross-origin; every other cross-site request gets 403")
}

// read parses the keys of one role, from the list and the file; on
// failure it names the setting.
func (k *Keys) read(role auth.Role) (keys []auth.Key, setting string, err error) {
	list, file, name := k.API, k.APIFile, "API_KEYS"
	switch role {
	case auth.Admin:
		list, file, name = k.Admin, k.AdminFile, "ADMIN_KEYS"
	case auth.Worker:
		list, file, name = k.Worker, k.WorkerFile, "WORKER_KEYS"
	}
	keys, err = auth.ParseKeys(role, list)
	if err != nil {
		return nil, name, err
	}
	more, err := auth.ReadKeyFile(role, file)
	if err != nil {
		return nil, name + "_FILE", err
	}
	return append(keys, more...), "", nil
}

// Keyrings are the keys of one process, by the servers that take them.
type Keyrings struct {
	// API holds the API and admin keys: the endpoint API and the
	// operator routes (where only the admin keys pass).
	API *auth.Keyring
	// Admin holds the admin keys alone: the dispatcher's HTTP API.
	Admin *auth.Keyring
	// Worker holds the worker keys alone: the job-take host.
	Worker *auth.Keyring
}

// keyrings reads every key of the given roles and checks that no key is
// given twice, whatever its roles.
func (k *Keys) keyrings(roles auth.Role) (Keyrings, string, error) {
	var all []auth.Key
	by := map[auth.Role][]auth.Key{}
	for _, role := range []auth.Role{auth.Tenant, auth.Admin, auth.Worker} {
		if roles&role == 0 {
			continue
		}
		keys, setting, err := k.read(role)
		if err != nil {
			return Keyrings{}, setting, err
		}
		by[role] = keys
		all = append(all, keys...)
	}
	if _, err := auth.NewKeyring(all...); err != nil {
		return Keyrings{}, "API_KEYS/ADMIN_KEYS/WORKER_KEYS", err
	}
	var r Keyrings
	r.API, _ = auth.NewKeyring(append(by[auth.Tenant], by[auth.Admin]...)...)
	r.Admin, _ = auth.NewKeyring(by[auth.Admin]...)
	r.Worker, _ = auth.NewKeyring(by[auth.Worker]...)
	return r, "", nil
}

// finish reads the keys of the given roles (keyrings) and checks the
// browser origins, naming the setting at fault.
func (k *Keys) finish(roles auth.Role) (Keyrings, string, error) {
	rings, setting, err := k.keyrings(roles)
	if err != nil {
		return Keyrings{}, setting, err
	}
	if _, setting, err := k.guard(nil); err != nil {
		return Keyrings{}, setting, err
	}
	return rings, "", nil
}

// guard builds the guard of a server with keys; on failure it names the
// setting.
func (k *Keys) guard(keys *auth.Keyring) (*auth.Guard, string, error) {
	g, err := auth.NewGuard(keys, k.AllowedOrigins)
	if err != nil {
		return nil, "ALLOWED_ORIGINS", err
	}
	return g, "", nil
}

// adminRoutes puts every route behind the guard's admin keys.
func adminRoutes(g *auth.Guard, routes []dispatch.Route) []dispatch.Route {
	out := make([]dispatch.Route, len(routes))
	for i, r := range routes {
		if r.Public {
			out[i] = r // a page without data: its API routes are guarded
			continue
		}
		out[i] = dispatch.Route{Pattern: r.Pattern, Handler: g.Require(auth.Admin, r.Handler)}
	}
	return out
}

// exposedWithoutAdmin says why an operator listener may not run: one that
// takes connections from other hosts needs admin keys.
func exposedWithoutAdmin(addr string, admins *auth.Keyring, what string) error {
	if addr == "" || auth.Loopback(addr) || admins.Count(auth.Admin) > 0 {
		return nil
	}
	return fmt.Errorf("%s on %s is reachable from other hosts and %s; set ADMIN_KEYS, or listen on 127.0.0.1", what, addr, "has no admin key")
}
