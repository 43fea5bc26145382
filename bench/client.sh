#!/usr/bin/env bash
# bench/client.sh: the Node client (clients/node) against plain ioredis, in the same run:
# a getOrSet hit against a GET, a getOrSet miss (with its lease) against GET + SET, each
# with one call and with 32 calls in flight (clients/node/bench/bench.js), on a throwaway
# redis-server on a free 127.0.0.1 port. Needs Node.js 20 and npm; runs `npm ci` in
# clients/node if its node_modules is missing. No PostgreSQL needed.
#   BENCH_OPS=40000 BENCH_BLOCK=500 bash bench/client.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$repo/scripts/throwaway-servers.sh"
command -v node >/dev/null || die "node not found (Node.js 20 is needed)"
[ -d "$repo/clients/node/node_modules" ] || (cd "$repo/clients/node" && npm ci --no-audit --no-fund --loglevel=error)
[ -f "$repo/clients/node/dist/cjs/index.js" ] || (cd "$repo/clients/node" && npm run --silent build)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/meetcache-bench-client.XXXXXX")
trap 'tw_stop_redis; rm -rf "$WORK"' EXIT
tw_start_redis --log-on-failure
say "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$REDIS_PORT, node $(node --version), $(nproc) CPUs"
MEETCACHE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" node "$repo/clients/node/bench/bench.js"
