// Package bench measures the fleet the way its users meet it, for
// `comfyfleet bench`. Each scenario runs against a stack the bench starts
// in this process through internal/devstack, or against a running one
// named by URL, prints a table and records every figure in a [Report],
// written as JSON with the commit, the Go version and the CPU count so
// that two commits can be compared. It measures and prints; it never
// passes or fails a figure.
//
// The bench talks to the stack only as a user would: RunPod's endpoint API
// over HTTP (/runsync, /run, /status), the NATS submission contract of
// proto/ (a JetStream publish on cf.submit.batch with Nats-Msg-Id, status
// events on cf.events.<id>.*), and ComfyUI's own HTTP and WebSocket API
// (through internal/comfy) for the floor and for the executor's
// timestamps in /history. It never reads Redis and never reaches into a
// running component, so the internals can change under it; the one
// exception is mixed-models, which reads the model loads of the emulators
// it started (the counters of their control surface, through
// devstack.Stack.EmulatorStats), because ComfyUI reports none.
//
// The scenarios are in [Scenarios]; [NotBuilt] names the ones of issue 11
// that need changes to the emulator first.
package bench
