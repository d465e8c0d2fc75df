// Package chaos is comfyfleet's fault-injection suite: it runs a fleet of
// real processes (gpuworker and dispatcher binaries, a redis-server, an
// embedded NATS server with file storage, ComfyUI emulators), submits a
// load of jobs, kills things while they run (SIGKILL of workers and of a
// dispatcher replica, NATS and Redis restarted, ComfyUI killed mid-job,
// jobs cancelled and purged), and checks that every job submitted reached
// exactly one terminal status, none is stuck and none completed twice. It
// has no code outside its tests; `make test` runs it.
package chaos
