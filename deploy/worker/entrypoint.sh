#!/usr/bin/env bash
# Entrypoint of the comfyfleet worker image (Dockerfile.worker).
#
#   entrypoint.sh [worker]   ComfyUI on 127.0.0.1, then gpuworker next to it; with
#                            RUNPOD_WEBHOOK_GET_JOB set (a RunPod serverless worker),
#                            also runpod-adapter, which takes the endpoint's jobs.
#                            RUNPOD_WEBHOOK_GET_JOB set and NATS_URL unset (no fleet
#                            to join): standalone mode, as below
#   entrypoint.sh standalone ComfyUI on 127.0.0.1, then `comfyfleet standalone`: the
#                            whole fleet in one process (embedded NATS and Redis,
#                            dispatcher, one gpuworker, the RunPod worker), a
#                            drop-in for worker-comfyui
#   entrypoint.sh comfyui    ComfyUI alone, listening on 0.0.0.0 (compose runs the
#                            gpuworker in its own container); SIGTERM stops it
#   entrypoint.sh CMD...     runs CMD (a shell, comfy-cli, ...)
#
# Boot: GPU check (as worker-comfyui does), ComfyUI, wait until it answers, then
# the worker (gpuworker, or comfyfleet standalone). SIGTERM or SIGINT: the
# worker (and adapter) drain first, then ComfyUI stops; a second signal is
# passed on, which makes them exit at once.
# If ComfyUI dies, the worker is stopped and the container exits non-zero; if
# the worker or the adapter exits, the others are stopped and its exit code is
# the container's (the adapter, or comfyfleet standalone, exits 0 after a job
# with REFRESH_WORKER).
#
# Every variable below is documented in docs/configuration.md (worker image);
# a test checks that the two agree.
set -Eeuo pipefail

: "${COMFYUI_DIR:=/comfyui}"                # ComfyUI's workspace
: "${COMFYUI_PYTHON:=/opt/venv/bin/python}" # the venv ComfyUI was installed into
: "${COMFYUI_LISTEN:=}"                     # "" = 127.0.0.1 (worker mode), 0.0.0.0 (comfyui mode)
: "${COMFYUI_PORT:=8188}"
: "${COMFYUI_ARGS:=}"                       # extra ComfyUI arguments, split on spaces
: "${COMFY_LOG_LEVEL:=INFO}"                # ComfyUI's --verbose level
: "${COMFYUI_SAVE_METADATA:=false}"         # false = --disable-metadata, as worker-comfyui
: "${COMFYUI_START_TIMEOUT:=600}"           # seconds until ComfyUI must answer; 0 = while it lives
: "${COMFYUI_STOP_TIMEOUT:=20}"             # seconds ComfyUI gets to exit before SIGKILL
: "${COMFYUI_PID_FILE:=/tmp/comfyui.pid}"
: "${COMFYUI_MANAGER_CONFIG:=$COMFYUI_DIR/user/default/ComfyUI-Manager/config.ini}"
: "${GPU_CHECK:=true}"                      # false skips the CUDA check (CPU-only runs)
: "${NETWORK_VOLUME:=/runpod-volume}"       # where a RunPod network volume is mounted
: "${NETWORK_VOLUME_DEBUG:=false}"          # true prints the volume's model folders at boot
: "${RUNPOD_WEBHOOK_GET_JOB:=}"             # set by RunPod: selects the serverless mode
: "${COMFYUI_OUTPUT_GID:=}"                 # comfyui mode: the group of a gpuworker in another container that deletes outputs
# NATS_URL (the gpuworker's) picks joined over standalone mode; it is not
# given a default here, as an empty one means "no fleet".

log() { printf 'comfyfleet-worker: %s\n' "$*"; }

signals=0 # signals received (TERM, INT)

gpu_check() {
	[ "$GPU_CHECK" = "true" ] || { log "GPU check skipped (GPU_CHECK=$GPU_CHECK)"; return 0; }
	log "Checking GPU availability..."
	local out
	if out=$("$COMFYUI_PYTHON" -c 'import torch; torch.cuda.init(); print(torch.cuda.get_device_name(0))' 2>&1); then
		log "GPU available — OK: ${out##*$'\n'}"
		return 0
	fi
	log "GPU is not available. PyTorch CUDA init failed:"
	log "FAIL: ${out##*$'\n'}"
	log "This usually means the GPU on this machine is not properly initialized."
	log "On RunPod, please contact RunPod support and report this machine."
	exit 1
}

volume_report() {
	[ "$NETWORK_VOLUME_DEBUG" = "true" ] || return 0
	if [ ! -d "$NETWORK_VOLUME" ]; then
		log "network volume: nothing mounted at $NETWORK_VOLUME"
		return 0
	fi
	if [ ! -d "$NETWORK_VOLUME/models" ]; then
		log "network volume: $NETWORK_VOLUME has no models/ folder; put models in $NETWORK_VOLUME/models/<type>/"
		return 0
	fi
	local dir n
	for dir in "$NETWORK_VOLUME"/models/*/; do
		[ -d "$dir" ] || continue
		n=$(find "$dir" -type f 2>/dev/null | wc -l) || n="?"
		log "network volume: $(basename "$dir"): $n file(s)"
	done
}

# manager_offline keeps ComfyUI-Manager from fetching anything at run time,
# as worker-comfyui does: nodes are installed when the image is built.
manager_offline() {
	local f=$COMFYUI_MANAGER_CONFIG
	if ! mkdir -p "$(dirname "$f")" 2>/dev/null; then
		log "could not set ComfyUI-Manager's network_mode in $f" >&2
		return 0
	fi
	if [ -f "$f" ] && grep -q '^network_mode' "$f"; then
		sed -i 's/^network_mode.*/network_mode = offline/' "$f"
	elif [ -f "$f" ] && grep -q '^\[default\]' "$f"; then
		sed -i '/^\[default\]/a network_mode = offline' "$f"
	else
		printf '[default]\nnetwork_mode = offline\n' >>"$f"
	fi
}

comfyui_args() {
	local listen=$1
	args=(-u "$COMFYUI_DIR/main.py" --disable-auto-launch --log-stdout
		--verbose "$COMFY_LOG_LEVEL" --listen "$listen" --port "$COMFYUI_PORT")
	[ "$COMFYUI_SAVE_METADATA" = "true" ] || args+=(--disable-metadata)
	# shellcheck disable=SC2206 # splitting on spaces is the documented behaviour
	[ -z "$COMFYUI_ARGS" ] || args+=($COMFYUI_ARGS)
}

# share_outputs lets a gpuworker in another container (compose's pairs,
# user 65532:65532 of deploy/Dockerfile), which mounts the same output
# folder, delete the files ComfyUI writes there once they are stored: the
# folder and what is in it go to group COMFYUI_OUTPUT_GID, group-writable,
# folders setgid (new subfolders keep the group), and ComfyUI runs with
# umask 002 (its files and subfolders are group-writable).
share_outputs() {
	[ -n "$COMFYUI_OUTPUT_GID" ] || return 0
	# The gpuworker's setting, which the image sets to ComfyUI's folder.
	local out=${COMFYUI_OUTPUT_DIR:-$COMFYUI_DIR/output}
	case "$COMFYUI_OUTPUT_GID" in
	*[!0-9]*)
		log "COMFYUI_OUTPUT_GID=$COMFYUI_OUTPUT_GID: want a numeric group id" >&2
		exit 1
		;;
	esac
	mkdir -p "$out"
	if ! chgrp -R "$COMFYUI_OUTPUT_GID" "$out" || ! chmod -R g+rwX "$out" ||
		! find "$out" -type d -exec chmod g+s {} +; then
		log "could not share $out with group $COMFYUI_OUTPUT_GID (COMFYUI_OUTPUT_GID)" >&2
		exit 1
	fi
	umask 0002
	log "output folder $out shared with group $COMFYUI_OUTPUT_GID"
}

# comfyui_only runs ComfyUI alone. ComfyUI is a child, not exec'd: as PID 1
# (no init in front: docker run --init missing, --entrypoint overridden) it
# would ignore SIGTERM and every stop would wait for SIGKILL. SIGTERM and
# SIGINT are passed on to it, and it is killed after COMFYUI_STOP_TIMEOUT.
comfyui_only() {
	gpu_check
	volume_report
	manager_offline
	share_outputs
	comfyui_args "${COMFYUI_LISTEN:-0.0.0.0}"
	log "starting ComfyUI on ${COMFYUI_LISTEN:-0.0.0.0}:$COMFYUI_PORT"
	trap 'signals=$((signals + 1)); [ -z "${comfy_pid:-}" ] || kill -TERM "$comfy_pid" 2>/dev/null || true' TERM INT
	"$COMFYUI_PYTHON" "${args[@]}" &
	comfy_pid=$!
	echo "$comfy_pid" >"$COMFYUI_PID_FILE"
	# A signal that came before comfy_pid was set is passed on here.
	[ "$signals" -eq 0 ] || kill -TERM "$comfy_pid" 2>/dev/null || true
	local code=0
	# A signal interrupts wait (status > 128) while ComfyUI still runs.
	until [ "$signals" -gt 0 ] || ! alive "$comfy_pid"; do
		code=0
		wait "$comfy_pid" || code=$?
	done
	if [ "$signals" -gt 0 ]; then
		log "signal received: stopping ComfyUI"
		await "$comfy_pid" ComfyUI "$COMFYUI_STOP_TIMEOUT"
		log "stopped"
		# Ended by the signal passed on (or by itself): a clean stop.
		case "$status" in 0 | 143 | 130) exit 0 ;; *) exit "$status" ;; esac
	fi
	log "ComfyUI exited with status $code"
	exit "$code"
}

# alive PID: whether the process still runs.
alive() { kill -0 "$1" 2>/dev/null; }

# reap PID: waits for an exited child and sets status to its exit code
# (known already when the main loop's wait reaped it).
reap() {
	status=0
	if [ "$1" = "${reaped_pid:-}" ]; then
		status=$reaped_code
		return 0
	fi
	wait "$1" 2>/dev/null || status=$?
}

# terminate PID NAME: sends SIGTERM once, if the process still runs.
terminate() {
	alive "$1" || return 0
	log "stopping $2"
	kill -TERM "$1" 2>/dev/null || true
}

# await PID NAME TIMEOUT: waits for a terminated process, with SIGKILL after
# TIMEOUT seconds (0 = no deadline: the process keeps its own grace period);
# sets status to its exit code.
await() {
	local pid=$1 name=$2 timeout=$3 waited=0
	while alive "$pid"; do
		if [ "$timeout" -gt 0 ] && [ "$waited" -ge $((timeout * 10)) ]; then
			log "$name did not stop within ${timeout}s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	reap "$pid"
}

# stop PID NAME TIMEOUT: terminate, then await.
stop() {
	terminate "$1" "$2"
	await "$@"
}

# on_signal starts the drain at once, so a signal can never slip in before
# the main loop's wait: the adapter stops taking jobs and the worker drains,
# and the loop then waits for them. A second signal is passed on, which makes
# them exit at once.
on_signal() {
	signals=$((signals + 1))
	[ -n "${worker_pid:-}" ] || return 0 # still starting: the start loop stops
	if [ "$signals" -eq 1 ]; then
		log "signal received: draining"
		[ -z "${adapter_pid:-}" ] || terminate "$adapter_pid" runpod-adapter
		terminate "$worker_pid" "$worker_name"
		return 0
	fi
	log "second signal: passing it on"
	[ -z "${adapter_pid:-}" ] || kill -TERM "$adapter_pid" 2>/dev/null || true
	kill -TERM "$worker_pid" 2>/dev/null || true
}

# worker_mode MODE: joined (gpuworker, and runpod-adapter on RunPod) or
# standalone (comfyfleet standalone), beside ComfyUI.
worker_mode() {
	local mode=$1
	gpu_check
	volume_report
	manager_offline
	trap on_signal TERM INT

	comfyui_args "${COMFYUI_LISTEN:-127.0.0.1}"
	log "starting ComfyUI on ${COMFYUI_LISTEN:-127.0.0.1}:$COMFYUI_PORT"
	"$COMFYUI_PYTHON" "${args[@]}" &
	comfy_pid=$!
	echo "$comfy_pid" >"$COMFYUI_PID_FILE"

	local probe="http://127.0.0.1:$COMFYUI_PORT/" waited=0
	until curl -fsS -o /dev/null --max-time 2 "$probe" 2>/dev/null; do
		if ! alive "$comfy_pid"; then
			reap "$comfy_pid"
			log "ComfyUI exited with status $status before it answered"
			exit $((status == 0 ? 1 : status))
		fi
		if [ "$signals" -gt 0 ]; then
			stop "$comfy_pid" ComfyUI "$COMFYUI_STOP_TIMEOUT"
			exit 0
		fi
		if [ "$COMFYUI_START_TIMEOUT" -gt 0 ] && [ "$waited" -ge $((COMFYUI_START_TIMEOUT * 2)) ]; then
			log "ComfyUI did not answer on $probe within ${COMFYUI_START_TIMEOUT}s"
			stop "$comfy_pid" ComfyUI "$COMFYUI_STOP_TIMEOUT"
			exit 1
		fi
		[ $((waited % 20)) -ne 19 ] || log "still waiting for ComfyUI on $probe"
		sleep 0.5
		waited=$((waited + 1))
	done
	log "ComfyUI answers on $probe"

	export COMFYUI_URL="${COMFYUI_URL:-http://127.0.0.1:$COMFYUI_PORT}"
	if [ -z "${WORKER_ID:-}" ] && [ -n "${RUNPOD_POD_ID:-}" ]; then
		export WORKER_ID="runpod-$RUNPOD_POD_ID"
	fi
	adapter_pid=""
	if [ "$mode" = standalone ]; then
		worker_name="comfyfleet standalone"
		log "starting comfyfleet standalone (NATS, Redis, dispatcher, gpuworker and the RunPod worker in one process)"
		comfyfleet standalone &
		worker_pid=$!
	else
		worker_name=gpuworker
		log "starting gpuworker"
		gpuworker &
		worker_pid=$!
		if [ -n "$RUNPOD_WEBHOOK_GET_JOB" ]; then
			log "RUNPOD_WEBHOOK_GET_JOB is set: starting runpod-adapter (RunPod serverless mode)"
			runpod-adapter &
			adapter_pid=$!
		fi
	fi

	local exited="" code=0 pids=("$comfy_pid" "$worker_pid")
	[ -z "$adapter_pid" ] || pids+=("$adapter_pid")
	until [ "$signals" -gt 0 ] || [ -n "$exited" ]; do
		code=0
		# A signal interrupts wait and leaves exited unset.
		wait -n -p exited "${pids[@]}" || code=$?
		exited=${exited:-}
	done
	reaped_pid=$exited reaped_code=$code

	if [ "$signals" -gt 0 ]; then
		# Shutdown order: the adapter and the worker (signalled by on_signal)
		# finish first, then ComfyUI, which may still be running the
		# worker's last job.
		[ -z "$adapter_pid" ] || await "$adapter_pid" runpod-adapter 0
		await "$worker_pid" "$worker_name" 0
		local worker_status=$status
		stop "$comfy_pid" ComfyUI "$COMFYUI_STOP_TIMEOUT"
		log "stopped"
		exit "$worker_status"
	fi

	case "$exited" in
	"$comfy_pid")
		log "ComfyUI exited with status $code; stopping the worker"
		[ -z "$adapter_pid" ] || stop "$adapter_pid" runpod-adapter 0
		stop "$worker_pid" "$worker_name" 0
		exit $((code == 0 ? 1 : code))
		;;
	"$worker_pid")
		# Status 0 from comfyfleet standalone: REFRESH_WORKER, as below.
		log "$worker_name exited with status $code; stopping ComfyUI"
		[ -z "$adapter_pid" ] || stop "$adapter_pid" runpod-adapter 0
		stop "$comfy_pid" ComfyUI "$COMFYUI_STOP_TIMEOUT"
		exit "$code"
		;;
	*)
		# Status 0: the adapter finished on purpose (REFRESH_WORKER asks
		# RunPod for a fresh worker after a job); the container ends cleanly.
		log "runpod-adapter exited with status $code; stopping the worker and ComfyUI"
		stop "$worker_pid" gpuworker 0
		stop "$comfy_pid" ComfyUI "$COMFYUI_STOP_TIMEOUT"
		exit "$code"
		;;
	esac
}

case "${1:-worker}" in
worker)
	if [ -n "$RUNPOD_WEBHOOK_GET_JOB" ] && [ -z "${NATS_URL:-}" ]; then
		log "RUNPOD_WEBHOOK_GET_JOB is set and NATS_URL is not: standalone mode (no fleet to join)"
		worker_mode standalone
	else
		worker_mode joined
	fi
	;;
standalone) worker_mode standalone ;;
comfyui) comfyui_only ;;
*) exec "$@" ;;
esac
