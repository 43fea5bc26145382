#!/usr/bin/env bash
# scripts/with-redis.sh: run a command with a throwaway redis-server.
#
#   scripts/with-redis.sh make installcheck [PG_CONFIG=...]
#
# Starts redis-server on a free 127.0.0.1 port (no persistence, in a new temporary
# directory), exports MEETCACHE_REDIS_URL=redis://127.0.0.1:PORT/0 (the Makefile writes
# it into the pg_regress instance's configuration), runs the command, stops the server
# and removes the directory. Exits with the command's status. Needs redis-server and
# redis-cli on PATH.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
. "$(dirname "${BASH_SOURCE[0]}")/throwaway-servers.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/meetcache-redis.XXXXXX") || die "mktemp failed"
trap 'tw_stop_redis; rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
tw_start_redis --log-on-failure
export MEETCACHE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
info "redis-server on 127.0.0.1:$REDIS_PORT (pid $(tw_redis_pid))"
"$@"
