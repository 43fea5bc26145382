#!/usr/bin/env bash
# examples/meet-app: the app's suites, in the environment test/clients.sh describes
# (DATABASE_URL: an empty database; MEETCACHE_REDIS_URL; PG* for psql). Needs `npm ci`.
set -euo pipefail
[ -d node_modules ] || { echo "examples/meet-app: node_modules missing, run npm ci" >&2; exit 1; }
sh scripts/prisma-generate.sh >/dev/null
npx --no-install tsc -p .     # the app, its tests and the generated modules type-check
# the schema as Prisma Migrate writes it (migrate needs the schema engine: psql -f instead),
# then meetcache as the README shows
psql -X -q -v ON_ERROR_STOP=1 -f "$MEETCACHE_REPO/test/fixtures/meet_camel.sql"
psql -X -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION meetcache" -c "SELECT meetcache.attach_defaults()" >/dev/null
export REDIS_URL=$MEETCACHE_REDIS_URL
exec node --import tsx --test --test-concurrency=1 --test-reporter=tap test/*.test.ts
