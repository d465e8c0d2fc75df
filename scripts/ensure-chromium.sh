#!/usr/bin/env bash
# Makes sure Debian's chromium is installed at /usr/bin/chromium for the
# console's browser test (test/console), installing it with apt-get when
# it is missing. CHROMIUM may name another binary, which is then used as is.
set -euo pipefail

bin=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$bin" ]; then
	echo "chromium: $bin"
	exit 0
fi
if [ -n "${CHROMIUM:-}" ]; then
	echo "chromium: CHROMIUM=$bin is not an executable" >&2
	exit 1
fi
echo "chromium: installing Debian's chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
"$bin" --version
