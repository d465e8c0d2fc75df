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
// The memory scenario is the exception that measures processes: it runs
// the role it measures in a process of its own (this binary re-executed,
// see [Child]) against a stack in the bench's process without that role,
// reads the process's resident memory from /proc, and stands in for a
// fleet of workers by writing their heartbeats through package rdb, as a
// gpuworker does. Its S3 store, and that of overhead's S3 variant, is a
// versitygw the bench starts (package s3test finds and runs it).
//
// The scenarios are in [Scenarios].
package bench
