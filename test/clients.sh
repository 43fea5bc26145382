#!/usr/bin/env bash
# test/clients.sh: the client and example suites, against one throwaway PostgreSQL 15 (with
# meetcache preloaded) and one throwaway redis-server, both on free 127.0.0.1 ports.
#
#   bash test/clients.sh [DIR...]        default: every clients/*/ and examples/*/ with a test.sh
#
# Run as a user that may run initdb (test/run-tests.sh runs it as postgres, after `npm ci`
# in every such directory that has a package-lock.json), with meetcache installed for
# $PGBIN (default: pg_config's bindir).
#
# The convention for a suite: DIR/test.sh, run as `bash test.sh` from DIR, under a timeout
# (MEETCACHE_TEST_TIMEOUT, default 300 s), with this environment:
#   DATABASE_URL          postgresql://postgres@127.0.0.1:PORT/NAME: a new, empty database
#                         of its own (superuser postgres, no password); meetcache is
#                         installed on the server, not created in the database
#   MEETCACHE_REDIS_URL   redis://127.0.0.1:PORT/0, emptied (FLUSHALL) before the suite;
#                         the server's meetcache.redis_url points at it
#   PGHOST PGPORT PGUSER PGDATABASE   the same database, for psql (PGBIN is on PATH)
#   MEETCACHE_REPO        the repository root (test/fixtures/meet_camel.sql, lua/, ...)
# It prints TAP summary lines `# pass N` and `# fail M` (node --test --test-reporter=tap
# does; several runs may print several, they are added up) and exits non-zero on failure.
# A suite that prints none counts as one test, passed or failed by its exit status.
#
# The last line printed is: clients: N passed, M failed
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$repo/scripts/throwaway-servers.sh"
PGBIN=${PGBIN:-${MEETCACHE_PGBIN:-}}
tw_pgbin
SUITE_TIMEOUT=${MEETCACHE_TEST_TIMEOUT:-300}
passed=0 failed=0

cleanup() {
	local rc=$?
	tw_stop_servers "$rc" "--- last lines of the PostgreSQL log ---"
	if [ "$rc" -eq 0 ] && [ -z "${MEETCACHE_KEEP_TMP:-}" ]; then rm -rf "$WORK"; else echo "(kept $WORK)"; fi
	echo "clients: $passed passed, $failed failed"
	exit "$rc"
}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/meetcache-clients.XXXXXX") || die "mktemp failed"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

suites=()
if [ $# -gt 0 ]; then
	suites=("$@")
else
	for d in "$repo"/clients/*/ "$repo"/examples/*/; do
		[ -f "$d/test.sh" ] && suites+=("${d%/}")
	done
fi
[ ${#suites[@]} -gt 0 ] || { info "no client suites"; exit 0; }
tw_extension_installed || die "meetcache is not installed for $PGBIN/pg_config"

tw_start_preloaded "listen_addresses = '127.0.0.1'" "max_connections = 200"
export PATH="$PGBIN:$PATH" MEETCACHE_REPO=$repo
export MEETCACHE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
info "redis-server on 127.0.0.1:$REDIS_PORT, PostgreSQL on 127.0.0.1:$PGPORT"

n=0
for dir in "${suites[@]}"; do
	n=$((n + 1))
	name=$(basename "$dir")
	db="client_${n}_$(printf '%s' "$name" | tr -c 'a-zA-Z0-9\n' '_')"
	say "client suite $dir (database $db)"
	RCLI flushall >/dev/null
	"$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres "$db" || { failed=$((failed + 1)); continue; }
	out=$WORK/$n.out
	(cd "$dir" && PGHOST=127.0.0.1 PGDATABASE=$db \
		DATABASE_URL="postgresql://postgres@127.0.0.1:$PGPORT/$db" \
		timeout -k 10 "$SUITE_TIMEOUT" bash test.sh </dev/null) 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	ok=$(sed -n 's/^# pass \([0-9][0-9]*\)$/\1/p' "$out" | awk '{s += $1} END {print s + 0}')
	bad=$(sed -n 's/^# fail \([0-9][0-9]*\)$/\1/p' "$out" | awk '{s += $1} END {print s + 0}')
	if ! grep -qE '^# (pass|fail) [0-9]+$' "$out"; then
		if [ "$rc" -eq 0 ]; then ok=1; else bad=1; fi
	fi
	[ "$rc" -ne 0 ] && [ "$bad" -eq 0 ] && bad=1
	[ "$rc" -eq 124 ] && info "!!! $dir/test.sh timed out after ${SUITE_TIMEOUT}s"
	passed=$((passed + ok))
	failed=$((failed + bad))
	info "$dir: $ok passed, $bad failed (exit $rc)"
done
[ "$failed" -eq 0 ]
