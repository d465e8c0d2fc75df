#!/usr/bin/env bash
# Makes sure test/python/.venv holds exactly the Python packages locked in
# test/python/requirements.txt (RunPod's runpod SDK and nats-py, with every
# dependency pinned and hashed), for the tests that drive the real Python
# peers (test/python, started by `go test` when COMFYFLEET_PYTHON names the
# venv's python; `make test` sets it). The venv is made again when it is
# missing or was made from another lock; pip installs with --require-hashes
# and --no-deps, so nothing outside the lock gets in. Prints the python.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
lock=$root/test/python/requirements.txt
venv=$root/test/python/.venv
stamp=$venv/.lock-sha256
python=${PYTHON:-python3}

want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
	echo "pyenv: $venv/bin/python" >&2
	exit 0
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
	echo "pyenv: $python is missing or older than 3.10 (the runpod SDK needs 3.10+); set PYTHON to another" >&2
	exit 1
fi
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
	echo "pyenv: installing python3-venv with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	sudo=""
	[ "$(id -u)" -ne 0 ] && sudo=sudo
	$sudo apt-get install -y -qq python3-venv >/dev/null
fi
echo "pyenv: creating $venv from $(basename "$lock")" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
# Only the lock's files, verified by hash; the index is PyPI's (or
# PIP_INDEX_URL's).
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes --only-binary=:all: -r "$lock"
echo "$want" >"$stamp"
echo "pyenv: $venv/bin/python" >&2
