#!/bin/sh
# comfy-node-install: installs ComfyUI custom nodes with comfy-cli in an image
# built FROM the worker image, and fails the build when one of them fails.
#
#   comfy-node-install NODE[@VERSION]...
#
# Each NODE is a ComfyUI registry id (pin it with @version). comfy-cli may exit
# 0 although a node's installation failed (a clone or a requirement that did
# not install), so besides its exit status its output is searched for the
# failure messages of comfy-cli, ComfyUI-Manager's cm-cli and pip in
# $COMFY_NODE_FAIL_PATTERN (an extended regular expression, case-insensitive;
# specific lines, so that a node or package whose name holds "error" passes). The first failure stops the run with a non-zero status
# and names the node; the nodes installed before it stay installed.
#
# Every variable below is documented in docs/configuration.md (comfy-node-install).
set -eu

: "${COMFYUI_DIR:=/comfyui}"
: "${COMFY_NODE_FAIL_PATTERN:=an error occurred while installing|failed to install|not found in|^error:|traceback \(most recent call last\)}"

if [ $# -eq 0 ]; then
	echo "usage: comfy-node-install NODE[@VERSION]..." >&2
	exit 2
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for node in "$@"; do
	echo "comfy-node-install: installing $node"
	rc=0
	comfy --workspace "$COMFYUI_DIR" --skip-prompt node install --exit-on-fail "$node" >"$log" 2>&1 || rc=$?
	cat "$log"
	if [ "$rc" -ne 0 ]; then
		echo "comfy-node-install: $node failed to install (comfy exit $rc)" >&2
		exit 1
	fi
	if grep -Eiq -- "$COMFY_NODE_FAIL_PATTERN" "$log"; then
		echo "comfy-node-install: $node failed to install: comfy said: $(grep -Ei -- "$COMFY_NODE_FAIL_PATTERN" "$log" | head -n 1)" >&2
		exit 1
	fi
	echo "comfy-node-install: $node installed"
done
