// Package node holds the node classes the ComfyUI emulator knows: their
// schemas (Registry, Class, Input), as /object_info renders them and
// validation reads them, and what each node does when it runs (Class.Func).
//
// The values flowing between nodes (models, conditionings, latents, images,
// masks, audio, video) are descriptors, not tensors: they name the models and
// inputs that produced them, a generated image is drawn from their key only
// when a node saves it (render.go), and a waveform likewise, so what a node
// writes depends on every input while cached outputs stay small. The bytes of
// the files come from package media.
//
// The executor (package comfysim, which imports this one; this package does
// not import it) owns everything about a prompt: its order, the output and
// object caches, the WebSocket messages, the history, the faults. The seam
// between the two is small:
//
//   - Host is what classes need of the emulated process, in schemas and
//     validation as well as while running: the model lists and the input
//     folder.
//   - Run is one execution of a node: its inputs with links resolved, the
//     hidden PROMPT and EXTRA_PNGINFO, its cached Object, the Host and the
//     Executor.
//   - Executor is what a running node needs of the executor: the interrupt
//     check (Sleep), the step delay, the hook where faults act at a sampler
//     step (AtStep), whether previews were asked for, a ProgressBar (the
//     server's progress hook, which throttles and frames the messages), and
//     the saving of files (SaveImagePath, WriteFile, Saved: folder_paths and
//     its counter cache).
//   - Error is the Python exception a node raises; the executor reports it
//     in execution_error, validation in its node errors.
package node
