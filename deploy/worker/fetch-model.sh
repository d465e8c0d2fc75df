#!/bin/sh
# fetch-model: downloads one model file into ComfyUI's models folder while the
# worker image is built (Dockerfile.worker), and for images built FROM it.
#
#   fetch-model [--hf | --civitai] DEST URL [SHA256]
#
#   DEST       models/<folder>/<file>, relative to $COMFYUI_DIR (/comfyui). A bare
#              file name goes to models/checkpoints/; "loras/x.safetensors" to
#              models/loras/.
#   --hf       send the Hugging Face token of the build secret "hf_token", if given,
#              when URL's host is a Hugging Face host ($FETCH_HF_HOSTS)
#   --civitai  send the CivitAI token of the build secret "civitai_token", if given,
#              when URL's host is a CivitAI host ($FETCH_CIVITAI_HOSTS)
#   SHA256     the file's expected checksum; the build fails when it differs
#
# Tokens are read from $SECRETS_DIR (/run/secrets), where
# `RUN --mount=type=secret,id=...` puts them, and reach curl on its standard
# input: they are in no image layer, no history entry and no argument list.
# A token goes only to its own hosts: the URL's host must be one of the list
# or a subdomain of one, else the file is fetched without it (a presigned S3
# or R2 URL refuses a second credential with 400 "Only one auth mechanism
# allowed"). curl drops the header when a download redirects to another host
# or port (--location without --location-trusted).
#
# Downloads survive a bad network: a failed attempt (connection reset, time
# out, stall, 5xx, ...) is tried again after a growing delay and resumes
# from the bytes already in DEST.part (a Range request); a stall (less than
# FETCH_STALL_BYTES bytes/s for FETCH_STALL_SECONDS) aborts the attempt
# instead of hanging the build. An HTTP 4xx answer other than 408 and 429
# fails at once: it does not heal by trying again.
# Each file's SHA-256 is added to $COMFYUI_DIR/models/SHA256SUMS.
#
# Every variable below is documented in docs/configuration.md (fetch-model).
set -eu

: "${COMFYUI_DIR:=/comfyui}"
: "${SECRETS_DIR:=/run/secrets}"
: "${FETCH_ATTEMPTS:=8}"                          # attempts of a download, each resuming the last
: "${FETCH_RETRY_DELAY:=5}"                       # seconds before the 2nd attempt, doubling up to 60
: "${FETCH_CONNECT_TIMEOUT:=30}"                  # seconds to connect
: "${FETCH_STALL_SECONDS:=60}"                    # an attempt stalls after this long below FETCH_STALL_BYTES/s
: "${FETCH_STALL_BYTES:=1024}"
: "${FETCH_HF_HOSTS:=huggingface.co hf.co}"       # hosts (and their subdomains) the HF token goes to
: "${FETCH_CIVITAI_HOSTS:=civitai.com}"           # hosts (and their subdomains) the CivitAI token goes to

secret="" hosts=""
case "${1:-}" in
--hf) secret=hf_token hosts=$FETCH_HF_HOSTS; shift ;;
--civitai) secret=civitai_token hosts=$FETCH_CIVITAI_HOSTS; shift ;;
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
for n in "$FETCH_ATTEMPTS" "$FETCH_RETRY_DELAY" "$FETCH_CONNECT_TIMEOUT" "$FETCH_STALL_SECONDS" "$FETCH_STALL_BYTES"; do
	case "$n" in
	"" | *[!0-9]*)
		echo "fetch-model: FETCH_ATTEMPTS, FETCH_RETRY_DELAY, FETCH_CONNECT_TIMEOUT, FETCH_STALL_SECONDS and FETCH_STALL_BYTES are whole numbers, got '$n'" >&2
		exit 2
		;;
	esac
done
[ "$FETCH_ATTEMPTS" -ge 1 ] || FETCH_ATTEMPTS=1

# url_host URL: the URL's host, lower case, without user info and port.
url_host() {
	h=${1#*://}
	h=${h%%[/?#]*}
	h=${h##*@}
	case "$h" in
	\[*) h=${h%%]*}] ;;
	*) h=${h%%:*} ;;
	esac
	printf '%s' "$h" | tr 'A-Z' 'a-z'
}

# host_in HOST LIST: whether HOST is one of LIST or a subdomain of one.
host_in() {
	for allowed in $2; do
		allowed=$(printf '%s' "$allowed" | tr 'A-Z' 'a-z')
		case "$1" in
		"$allowed" | *."$allowed") return 0 ;;
		esac
	done
	return 1
}

token=""
if [ -n "$secret" ] && [ -s "$SECRETS_DIR/$secret" ]; then
	host=$(url_host "$url")
	if host_in "$host" "$hosts"; then
		token=$(tr -d '\r\n' <"$SECRETS_DIR/$secret")
	else
		echo "fetch-model: $host is not one of the $secret hosts ($hosts): fetching without the token"
	fi
fi

path="$COMFYUI_DIR/$dest"
mkdir -p "$(dirname "$path")"
tmp="$path.part"
errs="$path.curl-errors"
trap 'rm -f "$tmp" "$errs"' EXIT
rm -f "$tmp"

echo "fetch-model: $dest <- $url"
attempt=1 delay=$FETCH_RETRY_DELAY
while :; do
	# curl's config on stdin carries the header, so the token is never an
	# argument. --continue-at - resumes from the bytes already in $tmp.
	rc=0
	code=$(
		if [ -n "$token" ]; then printf 'header = "Authorization: Bearer %s"\n' "$token"; fi |
			curl --config - --silent --show-error --location --fail \
				--connect-timeout "$FETCH_CONNECT_TIMEOUT" \
				--speed-limit "$FETCH_STALL_BYTES" --speed-time "$FETCH_STALL_SECONDS" \
				--continue-at - --output "$tmp" --write-out '%{http_code}' "$url" 2>"$errs"
	) || rc=$?
	[ "$rc" -ne 0 ] || break
	code=${code:-000}
	reason=$(tail -n 1 "$errs" 2>/dev/null || true)
	case "$rc:$code" in
	28:000) why="no answer within ${FETCH_CONNECT_TIMEOUT}s ($reason)" ;;
	28:*) why="stalled: less than $FETCH_STALL_BYTES bytes/s for ${FETCH_STALL_SECONDS}s (FETCH_STALL_SECONDS)" ;;
	*) why="HTTP $code, curl exit $rc: $reason" ;;
	esac
	have=$(wc -c <"$tmp" 2>/dev/null || echo 0)
	case "$code" in
	4[0-9][0-9])
		if [ "$code" != 408 ] && [ "$code" != 429 ] && [ "$code" != 416 ]; then
			echo "fetch-model: download of $url failed (HTTP $code)" >&2
			case "$code" in
			401 | 403)
				if [ -z "$secret" ]; then
					echo "fetch-model: the server wants a token" >&2
				elif [ -z "$token" ] && [ -s "$SECRETS_DIR/$secret" ]; then
					echo "fetch-model: the $secret secret is not sent to $(url_host "$url"): add the host to FETCH_$(echo "${secret%_token}" | tr 'a-z' 'A-Z')_HOSTS if it is theirs" >&2
				elif [ -z "$token" ]; then
					echo "fetch-model: this file needs a token: build with --secret id=$secret,env=<VARIABLE holding it>" >&2
				else
					echo "fetch-model: the $secret secret was refused (accept the model's licence on its page, or check the token)" >&2
				fi
				;;
			esac
			exit 1
		fi
		;;
	esac
	# The server cannot resume (no ranges, or the range is past its end):
	# start again from the first byte.
	if [ "$rc" -eq 33 ] || [ "$rc" -eq 36 ] || [ "$code" = 416 ]; then
		rm -f "$tmp"
		have=0
	fi
	if [ "$attempt" -ge "$FETCH_ATTEMPTS" ]; then
		echo "fetch-model: download of $url failed after $attempt attempt(s): $why" >&2
		exit 1
	fi
	echo "fetch-model: attempt $attempt of $FETCH_ATTEMPTS: $why; resuming at byte $have in ${delay}s" >&2
	sleep "$delay"
	attempt=$((attempt + 1))
	delay=$((delay * 2))
	[ "$delay" -le 60 ] || delay=60
done

got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ -n "$want" ] && [ "$got" != "$want" ]; then
	echo "fetch-model: $dest has SHA-256 $got, want $want" >&2
	exit 1
fi
mv "$tmp" "$path"
rm -f "$errs"
printf '%s  %s\n' "$got" "$dest" >>"$COMFYUI_DIR/models/SHA256SUMS"
echo "fetch-model: $dest $(wc -c <"$path") bytes, sha256 $got"
