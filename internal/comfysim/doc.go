// Package comfysim emulates a ComfyUI v0.27 server for tests and the dev
// stack: the HTTP API and WebSocket of reference/comfyui-protocol.md (routes,
// status codes, validation errors, message order, history shapes, file-name
// counters, caching), a small registry of core nodes with their real
// object_info schemas that write real PNG, WebP, FLAC and MP4 files whose
// content depends on the inputs, and a separate fault-injection surface
// (dropped sockets, node failures, OOM, slow history, downtime, restarts)
// that real ComfyUI does not have.
//
// Where ComfyUI's behaviour is odd (the raw heap order of /queue, cached
// outputs missing from history without a client_id, a stale socket handler
// unregistering a newer socket with the same clientId), the emulator copies
// it: a client that passes only against a kinder server is not tested.
package comfysim
