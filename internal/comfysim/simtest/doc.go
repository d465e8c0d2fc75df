// Package simtest starts a ComfyUI emulator (internal/comfysim) on a random
// loopback port for a test: the ComfyUI API at Sim.URL, the fault-injection
// API at Sim.ControlURL, and the *comfysim.Server for faults and stats. The
// emulator and its folders are removed at the test's cleanup.
package simtest
