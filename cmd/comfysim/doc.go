// Command comfysim runs the ComfyUI emulator (internal/comfysim) as a
// process: the ComfyUI API on --listen (default 127.0.0.1:8188) and, when
// --control-addr is set, the fault-injection API on a separate address. Every
// flag has a COMFYSIM_* environment variable; --help lists them. SIGINT or
// SIGTERM stops it gracefully, a second signal at once.
package main
