#!/usr/bin/env bash
# Makes sure a Redis server answers at REDIS_URL (default
# redis://127.0.0.1:6379/0) before the tests run: if none answers, it starts
# a throw-away redis-server there (no persistence). The redis-server binary
# itself is installed from Debian's package when missing, whether or not a
# Redis answers: the fault suite (internal/chaos) starts and kills its own,
# and its Sentinel cases run the sentinels as `redis-server --sentinel`
# (which is all the redis-sentinel package's command is), so no other
# package is needed.
set -euo pipefail

url=${REDIS_URL:-redis://127.0.0.1:6379/0}
hostport=${url#*://}
hostport=${hostport#*@}
hostport=${hostport%%/*}
host=${hostport%:*}
port=${hostport##*:}
[ "$host" = "$hostport" ] && port=6379
[ -z "$host" ] && host=127.0.0.1

answers() {
	# PING over bash's /dev/tcp, so redis-cli is not needed.
	{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
	printf 'PING\r\n' >&3
	local reply
	IFS= read -r -t 2 reply <&3 || true
	exec 3>&- 3<&-
	[[ "$reply" == +PONG* ]]
}

if ! command -v redis-server >/dev/null; then
	echo "redis: installing redis-server with apt-get"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq redis-server >/dev/null
fi

if answers; then
	echo "redis: answering at $host:$port"
	exit 0
fi
case "$host" in
127.0.0.1|localhost|::1) ;;
*) echo "redis: nothing answers at $host:$port and it is not local; start it or unset REDIS_URL" >&2; exit 1 ;;
esac
echo "redis: starting redis-server on $host:$port"
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
	--dir /tmp --logfile /tmp/comfyfleet-test-redis.log
for _ in $(seq 1 50); do
	answers && { echo "redis: up"; exit 0; }
	sleep 0.1
done
echo "redis: redis-server did not come up; see /tmp/comfyfleet-test-redis.log" >&2
exit 1
