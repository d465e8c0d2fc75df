#!/bin/sh
# Stands in for the worker image's Python in the entrypoint tests.
#   -c CODE          the GPU check: FAKE_GPU=ok passes, anything else fails
#   -u main.py ARGS  ComfyUI: FAKE_COMFYUI=sim runs the emulator on --listen/--port,
#                    hang never answers, exit exits 3 at once; FAKE_STEP_DELAY is
#                    the emulator's time per sampler step (default 0); with
#                    FAKE_OUTPUT_FILE set, it first writes that file (and its
#                    folders) as ComfyUI writes an output
# Every call is recorded in FAKE_ARGS_FILE, ComfyUI's umask after it.
echo "$*" >>"${FAKE_ARGS_FILE:-/dev/null}"
if [ "$1" = "-c" ]; then
	if [ "${FAKE_GPU:-ok}" = ok ]; then
		echo "NVIDIA Fake GPU"
		exit 0
	fi
	echo "Traceback (most recent call last):" >&2
	echo "RuntimeError: Found no NVIDIA driver on your system." >&2
	exit 1
fi
echo "umask $(umask)" >>"${FAKE_ARGS_FILE:-/dev/null}"
if [ -n "${FAKE_OUTPUT_FILE:-}" ]; then
	mkdir -p "$(dirname "$FAKE_OUTPUT_FILE")" && echo png >"$FAKE_OUTPUT_FILE"
fi
listen=127.0.0.1
port=8188
while [ $# -gt 0 ]; do
	case "$1" in
	--listen) listen=$2; shift ;;
	--port) port=$2; shift ;;
	esac
	shift
done
case "${FAKE_COMFYUI:-sim}" in
sim) exec comfysim --listen "$listen:$port" --step-delay "${FAKE_STEP_DELAY:-0}" --log-level warn ;;
hang) exec sleep 300 ;;
*) exit 3 ;;
esac
