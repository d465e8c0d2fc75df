#!/bin/sh
# gpus.sh: one gpuworker+ComfyUI pair per GPU for compose.yaml.
#
#   ./gpus.sh 4            pairs for GPUs 0,1,2,3, written into compose.yaml
#   ./gpus.sh 0,2,3        pairs for these device ids (as nvidia-smi numbers them)
#   ./gpus.sh --stdout 4   print the block instead of writing it
#
# The pairs live in compose.yaml between the "BEGIN GENERATED GPU PAIRS" and
# "END GENERATED GPU PAIRS" lines, their volumes between "BEGIN GENERATED GPU
# VOLUMES" and "END GENERATED GPU VOLUMES"; everything else in the file is
# kept. Each pair is comfyui-gpuN (ComfyUI pinned to device N) and
# gpuworker-gpuN (its worker, WORKER_ID ${WORKER_ID_PREFIX}-gpuN), which share
# the volume comfyui-output-gpuN as ComfyUI's output folder: the worker
# deletes a job's outputs from it once they are stored. A test checks that
# the blocks in compose.yaml are what this script writes.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
file="$here/compose.yaml"
stdout=false
if [ "${1:-}" = "--stdout" ]; then
	stdout=true
	shift
fi
if [ $# -ne 1 ]; then
	echo "usage: $0 [--stdout] N | ID,ID,..." >&2
	exit 2
fi

case "$1" in
*[!0-9,]* | "" | ,* | *, | *,,*)
	echo "gpus.sh: want a GPU count or a comma-separated list of device ids, got '$1'" >&2
	exit 2
	;;
*,*) ids=$(echo "$1" | tr ',' ' ') ;;
*)
	if [ "$1" -lt 1 ]; then
		echo "gpus.sh: want at least one GPU" >&2
		exit 2
	fi
	ids=$(seq 0 $(($1 - 1)) | tr '\n' ' ')
	;;
esac

block() {
	echo "  # BEGIN GENERATED GPU PAIRS (./gpus.sh $1; do not edit by hand)"
	for id in $ids; do
		cat <<EOF
  comfyui-gpu$id:
    <<: *comfyui
    volumes:
      - \${MODELS_DIR:-./models}:/runpod-volume/models:ro
      - comfyui-output-gpu$id:/comfyui/output
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              device_ids: ["$id"]
              capabilities: [gpu]
  gpuworker-gpu$id:
    <<: *gpuworker
    profiles: [gpu]
    environment:
      <<: *worker-env
      WORKER_ID: \${WORKER_ID_PREFIX:-local}-gpu$id
      COMFYUI_URL: http://comfyui-gpu$id:8188
      COMFYUI_OUTPUT_DIR: /comfyui/output
    volumes:
      - comfyui-output-gpu$id:/comfyui/output
    depends_on:
      <<: *worker-deps
      comfyui-gpu$id:
        condition: service_healthy
EOF
	done
	echo "  # END GENERATED GPU PAIRS"
}

volumes() {
	echo "  # BEGIN GENERATED GPU VOLUMES (./gpus.sh $1; do not edit by hand)"
	for id in $ids; do
		echo "  comfyui-output-gpu$id:"
	done
	echo "  # END GENERATED GPU VOLUMES"
}

if $stdout; then
	block "$1"
	volumes "$1"
	exit 0
fi

for marker in 'BEGIN GENERATED GPU PAIRS' 'END GENERATED GPU PAIRS' 'BEGIN GENERATED GPU VOLUMES' 'END GENERATED GPU VOLUMES'; do
	if ! grep -q "# $marker" "$file"; then
		echo "gpus.sh: $file has no '# $marker' line: no generated block to replace" >&2
		exit 1
	fi
done
tmp=$(mktemp "$file.XXXXXX")
trap 'rm -f "$tmp" "$tmp.block" "$tmp.volumes"' EXIT
block "$1" >"$tmp.block"
volumes "$1" >"$tmp.volumes"
awk -v blockfile="$tmp.block" -v volumesfile="$tmp.volumes" '
	/# BEGIN GENERATED GPU PAIRS/ { while ((getline line < blockfile) > 0) print line; skip = 1; next }
	/# BEGIN GENERATED GPU VOLUMES/ { while ((getline line < volumesfile) > 0) print line; skip = 1; next }
	/# END GENERATED GPU (PAIRS|VOLUMES)/ { skip = 0; next }
	!skip { print }
' "$file" >"$tmp"
cat "$tmp" >"$file" # keeps the file's mode and owner
echo "compose.yaml: GPU pairs for device(s) $(echo "$ids" | tr -s ' ' ',' | sed 's/,$//')"
