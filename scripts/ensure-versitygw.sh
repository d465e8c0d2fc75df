#!/usr/bin/env bash
# Makes sure the versitygw S3 gateway is installed for the S3 tests
# (internal/blob/s3, internal/worker): it is looked for on PATH and in
# $(go env GOPATH)/bin, and installed with `go install` when missing. The
# tests start their own gateway on a random loopback port; they fail, not
# skip, when the binary is missing.
set -euo pipefail

version=v1.8.0
go=${GO:-go}
gobin=$("$go" env GOBIN)
[ -z "$gobin" ] && gobin="$("$go" env GOPATH | cut -d: -f1)/bin"

if command -v versitygw >/dev/null 2>&1; then
	echo "versitygw: $(command -v versitygw)"
	exit 0
fi
if [ -x "$gobin/versitygw" ]; then
	echo "versitygw: $gobin/versitygw"
	exit 0
fi
echo "versitygw: installing $version into $gobin"
"$go" install "github.com/versity/versitygw/cmd/versitygw@$version"
echo "versitygw: $gobin/versitygw"
