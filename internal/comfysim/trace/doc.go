// Package trace records what a ComfyUI server does, as data, and plays the
// same requests against another server: the golden files that keep the
// emulator (package comfysim) true to the real ComfyUI.
//
// A Trace is one scenario: a list of Steps, each an HTTP request and its
// answer, a WebSocket opened, or a wait for a WebSocket frame together with
// every frame that arrived before it. Play runs the steps against any
// server and fills in what it answered, normalised (Normalise) so that two
// runs compare equal where they behave alike: timestamps, random file-name
// suffixes, server-chosen socket ids and the server's prompt counter are
// replaced by stable values; prompt and client ids are fixed by the
// requests themselves.
//
// Scenarios lists the scenarios; the recorder (../tracerec) plays them
// against a real ComfyUI and writes the traces to ../testdata/traces, and
// the replay test plays each committed trace's requests against the
// emulator and compares the answers and the frames, with the differences
// the emulator has on purpose listed field by field.
package trace
