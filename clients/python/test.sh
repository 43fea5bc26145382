#!/usr/bin/env bash
# clients/python/test.sh: the Python client's tests (python3 -m unittest) against a
# throwaway PostgreSQL 15 with meetcache preloaded (its unix socket in the temporary
# directory, like the other suites') and a throwaway redis-server on a free 127.0.0.1
# port, in a new temporary directory (scripts/throwaway-servers.sh); both are stopped on exit.
#
#   bash clients/python/test.sh            (as an unprivileged user: initdb refuses root)
#   su postgres -c "PGBIN=$PGBIN bash clients/python/test.sh"
#
# Needs: meetcache installed for that PostgreSQL, redis-server, /usr/bin/python3 with
# Debian's python3-redis and python3-psycopg2 (python3-psycopg optional).
# Environment (all optional):
#   PGBIN=DIR            PostgreSQL bin directory (else MEETCACHE_PGBIN, else the bindir
#                        of ${PG_CONFIG:-pg_config})
#   PYTHON=/usr/bin/python3
#   MEETCACHE_KEEP_TMP=1 keep the temporary directory (logs) even on success
#   MEETCACHE_TEST_TIMEOUT=300  seconds the unittest run may take
#   TMPDIR               where the temporary directory is made
# Run by test/clients.sh (DATABASE_URL and MEETCACHE_REDIS_URL set, see its header), it uses
# that database and Redis instead of starting servers of its own.
# The last lines printed are always the TAP counts `# pass N`, `# fail M` (what
# test/clients.sh adds up) and: python: N passed, M failed (exit status 0 only if M = 0).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$REPO/scripts/throwaway-servers.sh"
PYTHON=${PYTHON:-/usr/bin/python3}
PGBIN=${PGBIN:-${MEETCACHE_PGBIN:-}}
passed=0 failed=0 WORK=

cleanup() {
	local rc=$?
	cd /
	tw_stop_servers "$rc" "--- PostgreSQL log (last lines) ---"
	if [ -z "${WORK:-}" ]; then
		:
	elif [ "$failed" -eq 0 ] && [ "$rc" -eq 0 ] && [ "${MEETCACHE_KEEP_TMP:-0}" != 1 ]; then
		rm -rf "$WORK"
	else
		echo "(test files kept in $WORK)"
	fi
	# a setup failure counts as one failed test
	if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
	printf '# pass %d\n# fail %d\n' "$passed" "$failed"
	echo "python: $passed passed, $failed failed"
	[ "$failed" -eq 0 ] && exit "$rc"
	exit 1
}

trap cleanup EXIT
[ "$(id -u)" != 0 ] || die "run this as an unprivileged user (initdb refuses root), e.g. su postgres -c \"PGBIN=\$PGBIN bash $0\""
tw_pgbin
tw_extension_installed || die "meetcache is not installed for $PGBIN/pg_config (make install PG_CONFIG=$PGBIN/pg_config)"
"$PYTHON" -c 'import redis, psycopg2' 2>/dev/null ||
	die "$PYTHON lacks redis or psycopg2: apt-get install -y python3-redis python3-psycopg2"
tw_enter_work "" meetcache-python cleanup

if [ -n "${DATABASE_URL:-}" ] && [ -n "${MEETCACHE_REDIS_URL:-}" ]; then
	# test/clients.sh's servers and a new empty database of ours
	export MEETCACHE_TEST_REDIS_URL=$MEETCACHE_REDIS_URL
	export MEETCACHE_TEST_DSN=$DATABASE_URL
	where="the database and redis-server of test/clients.sh"
else
	tw_start_preloaded
	export MEETCACHE_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
	export MEETCACHE_TEST_DSN="host=$WORK port=$PGPORT dbname=postgres user=postgres"
	where="PostgreSQL on $WORK:$PGPORT (unix socket), redis-server on 127.0.0.1:$REDIS_PORT"
fi
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$MEETCACHE_TEST_DSN" -f "$WORK/meet_snake.sql" \
	-c "CREATE EXTENSION meetcache; SELECT meetcache.attach_defaults();" >"$WORK/setup.log" 2>&1 ||
	{ cat "$WORK/setup.log" >&2; die "schema setup failed"; }
export MEETCACHE_REPO=$REPO
export PYTHONPATH=$HERE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1
info "$where; $PYTHON -m unittest"
timeout -k 10 "${MEETCACHE_TEST_TIMEOUT:-300}" \
	"$PYTHON" -m unittest discover -v -s "$HERE/tests" -t "$HERE/tests" 2>&1 </dev/null | tee "$WORK/unittest.out"
rc=${PIPESTATUS[0]}
# unittest's summary: "Ran N tests in ...", then "OK" or "FAILED (failures=F, errors=E, skipped=S)"
ran=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in .*/\1/p' "$WORK/unittest.out" | tail -n 1)
verdict=$(grep -E '^(OK|FAILED)( \(.*\))?$' "$WORK/unittest.out" | tail -n 1)
count() { local n; n=$(printf '%s' "$verdict" | grep -oE "$1=[0-9]+" | cut -d= -f2); echo "${n:-0}"; }
skipped=$(count skipped)
failed=$(($(count failures) + $(count errors) + $(count 'unexpected successes')))
passed=$((${ran:-0} - failed - skipped))
[ "$skipped" -eq 0 ] || info "$skipped skipped"
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
exit "$rc"
