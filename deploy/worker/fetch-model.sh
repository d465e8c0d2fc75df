#!/bin/sh
# fetch-model: downloads one model file into ComfyUI's models folder while the
# worker image is built (Dockerfile.worker), and for images built FROM it.
#
#   fetch-model [--hf | --civitai] DEST URL [SHA256]
#
#   DEST       models/<folder>/<file>, relative to $COMFYUI_DIR (/comfyui). A bare
#              file name goes to models/checkpoints/; "loras/x.safetensors" to
#              models/loras/.
#   --hf       send the Hugging Face token of the build secret "hf_token", if given
#   --civitai  send the CivitAI token of the build secret "civitai_token", if given
#   SHA256     the file's expected checksum; the build fails when it differs
#
# Tokens are read from $SECRETS_DIR (/run/secrets), where
# `RUN --mount=type=secret,id=...` puts them, and reach curl on its standard
# input: they are in no image layer, no history entry and no argument list.
# curl drops the header when a download redirects to another host.
# Each file's SHA-256 is added to $COMFYUI_DIR/models/SHA256SUMS.
set -eu

: "${COMFYUI_DIR:=/comfyui}"
: "${SECRETS_DIR:=/run/secrets}"

secret=""
case "${1:-}" in
--hf) secret=hf_token; shift ;;
--civitai) secret=civitai_token; shift ;;
esac
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
	echo "usage: fetch-model [--hf | --civitai] DEST URL [SHA256]" >&2
	exit 2
fi
dest=$1 url=$2 want=${3:-}

case "$dest" in
"" | /* | *..*)
	echo "fetch-model: DEST must be a relative path under models/ without '..', got '$dest'" >&2
	exit 2
	;;
models/*) ;;
*/*) dest="models/$dest" ;;
*) dest="models/checkpoints/$dest" ;;
esac
case "$url" in
https://* | http://*) ;;
*)
	echo "fetch-model: '$url' is not an http(s) URL" >&2
	exit 2
	;;
esac

token=""
if [ -n "$secret" ] && [ -s "$SECRETS_DIR/$secret" ]; then
	token=$(tr -d '\r\n' <"$SECRETS_DIR/$secret")
fi

path="$COMFYUI_DIR/$dest"
mkdir -p "$(dirname "$path")"
tmp="$path.part"
trap 'rm -f "$tmp"' EXIT

echo "fetch-model: $dest <- $url"
# curl's config on stdin carries the header, so the token is never an argument.
code=$(
	if [ -n "$token" ]; then printf 'header = "Authorization: Bearer %s"\n' "$token"; fi |
		curl --config - --silent --show-error --location --fail \
			--retry 5 --retry-connrefused --retry-delay 2 \
			--output "$tmp" --write-out '%{http_code}' "$url"
) || {
	echo "fetch-model: download of $url failed (HTTP ${code:-none})" >&2
	case "${code:-}" in
	401 | 403)
		if [ -z "$secret" ]; then
			echo "fetch-model: the server wants a token" >&2
		elif [ -z "$token" ]; then
			echo "fetch-model: this file needs a token: build with --secret id=$secret,env=<VARIABLE holding it>" >&2
		else
			echo "fetch-model: the $secret secret was refused (accept the model's licence on its page, or check the token)" >&2
		fi
		;;
	esac
	exit 1
}

got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ -n "$want" ] && [ "$got" != "$want" ]; then
	echo "fetch-model: $dest has SHA-256 $got, want $want" >&2
	exit 1
fi
mv "$tmp" "$path"
printf '%s  %s\n' "$got" "$dest" >>"$COMFYUI_DIR/models/SHA256SUMS"
echo "fetch-model: $dest $(wc -c <"$path") bytes, sha256 $got"
