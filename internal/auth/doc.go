// Package auth decides who sends a request to one of comfyfleet's HTTP
// servers and whether the request may reach its route. It is the trust
// boundary of the HTTP surface, in one place for every server (the
// endpoint API, the job-take host, the dispatcher's operator API and the
// dev stack):
//
//   - An API key is a tenant: its jobs are its own, and another tenant's
//     job does not exist for it. A key is named "name:key" (the name is the
//     tenant) or given bare (the tenant is "key-" and 8 hex digits of the
//     key's SHA-256, stable and not secret). Several keys may share a name:
//     that is how a tenant rotates its key.
//   - Admin keys see every tenant's jobs and alone reach the operator
//     routes (fleet, dead letters, metrics). Worker keys (RunPod workers)
//     reach the job-take routes and nothing else; an API key never works
//     there.
//   - With no key configured at all, authentication is off (a developer's
//     machine): every request acts as an admin of the default tenant, and a
//     request with a body must be JSON, so that a web page cannot post a
//     form to the server.
//   - Browsers' cross-site requests are refused everywhere, as ComfyUI's
//     own origin check does: a request whose Origin is not the server's
//     own, or that says "Sec-Fetch-Site: cross-site", gets 403 unless an
//     allowed origin is configured for it. Clients that send no Origin
//     (curl, RunPod's SDKs, RunPod's Python worker with its form-encoded
//     job-done posts) are unaffected.
//
// Keys are compared in constant time, by digest, against every key held.
package auth
