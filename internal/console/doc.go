// Package console is the fleet's live web console: one page, its assets
// embedded in the binary (no CDN, no build step), served at /console/ by
// the dispatcher's HTTP API and by `comfyfleet dev`, and the admin routes
// under /console/api/ it reads and acts through. It shows the workers,
// lanes, recent jobs (searchable), each job's timeline, workflow,
// preview and outputs, batches and dead letters; it cancels and retries
// jobs, pauses and resumes pools and lanes and drains workers, always
// through the lifecycle core, package rdb's controls and the dead-letter
// routes that already exist.
//
// Live updates are server-sent events from one subscription to every
// job's events and one reader of the fleet view per process, fanned out
// to the browsers; a browser that falls behind by more than its buffer is
// dropped (it reconnects and starts from a fresh snapshot), never
// buffered without bound.
//
// The console is an admin surface. Its page and assets hold no data and
// are served to anyone; every /console/api/ route is behind the admin
// keys (auth.Guard). The browser keeps the admin key in sessionStorage
// and sends it as "Authorization: Bearer" on every call, the event stream
// included (read with fetch, since EventSource cannot send headers), so
// the key never appears in a URL, a cookie or a log. With no key
// configured (dev's default) no login is asked.
package console
