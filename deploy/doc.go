// Package deploy holds comfyfleet's deployment artifacts and the tests that
// keep them right, since no Docker engine or GPU runs where the code is
// developed:
//
//   - compose/: the whole fleet on one machine with Docker Compose (NATS,
//     Redis, an S3 store, dispatchers, the RunPod-compatible API, and one
//     gpuworker+ComfyUI pair per GPU, or ComfyUI emulators with the "sim"
//     profile); gpus.sh generates the GPU pairs.
//   - Dockerfile: the control plane's images (dispatcher, runpod-adapter,
//     gpuworker, comfyfleet, comfysim), static and unprivileged.
//   - worker/: the entrypoint, model downloader and extra_model_paths.yaml of
//     the ComfyUI worker image built by Dockerfile.worker at the repository
//     root.
//   - healthcheck/: the health probe every image runs.
//   - configdoc/: keeps docs/configuration.md equal to the code's settings.
//
// The tests load compose.yaml with compose-go and the Dockerfiles with
// BuildKit's parser and check what they declare; run the scripts for real
// (the entrypoint on the ComfyUI emulator, fetch-model against a local
// server, the GPU pair generator); and start the sim profile's services as
// plain processes, with the commands and environment compose.yaml gives
// them, and run a job through them. docs/deployment.md is the guide.
package deploy
