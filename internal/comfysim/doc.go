// Package comfysim emulates a ComfyUI v0.27 server for tests and the dev
// stack: the HTTP API and WebSocket of reference/comfyui-protocol.md (routes,
// status codes, validation errors, message order, history shapes, file-name
// counters, caching), a small registry of core nodes with their real
// object_info schemas that write real PNG, WebP, GIF, FLAC, MP4 and WebM files whose
// content depends on the inputs, and a separate fault-injection surface
// (dropped sockets, node failures, OOM, slow history, downtime, restarts,
// refused uploads and prompts, answers without a prompt_id, lost history
// entries, missing /view files, huge outputs) that real ComfyUI does not
// have, plus a record of what clients sent (Uploads, Prompts) for tests.
// Its VRAM holds one prompt's models at a time: other models cost
// Config.ModelLoadDelay to load, and Stats counts the loads (vram.go).
//
// Besides the core txt2img nodes it knows the split loaders of flux-style
// workflows (UNETLoader, DualCLIPLoader, VAELoader), LoraLoader, LoadImage,
// the video, audio and text outputs (SaveVideo, SaveWEBM,
// SaveAnimatedWEBP, SaveAudio, PreviewAny), VideoHelperSuite's
// VHS_VideoCombine ("gifs") and the bundled SaveImageWebsocket; the model
// lists come from Config. The weight-free core nodes (EmptyImage,
// ImageInvert, ImageScale, ImageScaleBy, ImageBlur, SaveAnimatedPNG, the
// primitives, StringConcatenate, RandomNoise, GetImageSize) compute on
// pixels as ComfyUI does, and package trace's replay test holds the
// emulator to traces recorded from a real ComfyUI (testdata/traces).
//
// The emulator is four packages:
//
//   - comfysim (this one) is the server: the HTTP routes and the WebSocket
//     hub, the prompt queue and history, validation (validate_prompt), the
//     executor with its output and object caches and progress messages, the
//     files of input/, output/ and temp/ (folder_paths, /view, uploads),
//     the jobs view, the faults and the records. Config, New and the rest
//     of the exported API live here.
//   - comfysim/node holds the node classes: their schemas and what each one
//     does, behind a small seam (node.Host, node.Executor) that this package
//     implements (host.go, runner.go); it does not import this package.
//   - comfysim/media writes the file formats the nodes save, from plain
//     pixels, frames, samples and metadata.
//   - comfysim/pyvalue is the Python value model every layer shares:
//     json.loads and json.dumps, and int(), float(), str(), ==, < and `in`
//     with Python's error texts.
//
// Where ComfyUI's behaviour is odd (the raw heap order of /queue, cached
// outputs missing from history without a client_id, a stale socket handler
// unregistering a newer socket with the same clientId), the emulator copies
// it: a client that passes only against a kinder server is not tested.
package comfysim
