#!/usr/bin/env bash
# clients/node: the package's suites, in the environment test/clients.sh describes
# (DATABASE_URL, MEETCACHE_REDIS_URL, MEETCACHE_REPO). Needs `npm ci` first.
set -euo pipefail
[ -d node_modules ] || { echo "clients/node: node_modules missing, run npm ci" >&2; exit 1; }
npm run --silent build
exec node --test --test-concurrency=1 --test-reporter=tap test/*.test.js
