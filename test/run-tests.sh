#!/usr/bin/env bash
# meetcache: THE test command (see README.md).
#
#   bash test/run-tests.sh
#
# As root (CI, fresh Debian 12): installs the missing packages with apt-get,
# builds (make WERROR=1) and installs the extension, then runs every test as the
# unprivileged `postgres` user against throwaway servers (redis-servers and
# temporary PostgreSQL clusters, on free 127.0.0.1 ports chosen at run time) in a
# copy of the repository under a fresh temporary directory:
#   scripts/with-redis.sh make installcheck TAP_TESTS=    the pg_regress suites
#   make prove_installcheck PROVE_TESTS=test/t/NNN.pl     each TAP suite
#   bash test/package.sh                                  the Debian package
#   bash test/clients.sh                                  the client and example suites
# The client suites are every clients/*/ and examples/*/ directory with a test.sh (the
# convention, and the environment such a script gets, are in test/clients.sh's header).
# Before the tests, in the outer phase (as root when run as root, from the npm registry),
# `npm ci` runs in each such directory that has a package-lock.json, clients/ first
# (examples depend on them with file:../../clients/NAME). Each suite's node --test TAP
# summary (`# pass N`, `# fail M`) is counted in the closing line.
# As a normal user: checks the packages (fails if one is missing; the package
# test is skipped if only its build tools are missing), builds, installs only if
# the PostgreSQL library directory is writable, and runs the tests as that user.
#
# The last line printed is always: meetcache: N passed, M failed
#
# Environment knobs (all optional):
#   MEETCACHE_KEEP_TMP=1   keep the temporary directory even on success
#   MEETCACHE_TAP_TESTS="001_redis_restart.pl ..."  run only these TAP files
#   MEETCACHE_TEST_TIMEOUT=300   per-suite timeout in seconds
#   MEETCACHE_SKIP_INSTALL=1     do not run `make install` (test the installed build)
#   MEETCACHE_PGBIN=DIR          PostgreSQL bin directory (default: PG_CONFIG's --bindir)
#   MEETCACHE_CLIENT_TESTS="clients/node ..."   run only these client suites; "none": none
#   PG_CONFIG=pg_config          the pg_config to build with when MEETCACHE_PGBIN is not set
set -uo pipefail

# MEETCACHE_PGBIN: another (relocated) PostgreSQL 15 bin directory, e.g. a private copy
# of the installation so that several checkouts can install and test side by side.
# Without it, PGBIN is PG_CONFIG's bindir, known once the packages are installed.
if [ -n "${MEETCACHE_PGBIN:-}" ]; then
	PGBIN=$MEETCACHE_PGBIN
	PG_CONFIG=$PGBIN/pg_config
else
	PG_CONFIG=${PG_CONFIG:-pg_config}
fi
PACKAGES=(postgresql-15 postgresql-server-dev-15 libhiredis-dev libssl-dev libc-ares-dev redis-server libipc-run-perl openssl
	python3-redis python3-psycopg2 python3-psycopg)
# only test/package.sh needs these
PACKAGE_TEST_PACKAGES=(debhelper postgresql-server-dev-all)
SUITE_TIMEOUT=${MEETCACHE_TEST_TIMEOUT:-300}

say() { printf '==> %s\n' "$*"; }
warn() { printf '!!! %s\n' "$*" >&2; }

###########################################################################
# Inner phase: runs as the unprivileged user, inside the copy of the repo.
#   run-tests.sh --inner WORKDIR
###########################################################################
inner() {
	# globals on purpose: the EXIT trap uses them after this function returns
	work=$1
	repo=$work/repo
	passed=0 failed=0

	cd "$repo" || exit 1
	export HOME=$work
	export PATH="$PGBIN:$PATH"
	export LC_ALL=C.UTF-8 LANG=C.UTF-8 2>/dev/null || true
	export TMPDIR=$work
	unset PGHOST PGPORT PGDATABASE PGUSER PGSERVICE PGOPTIONS

	record() { printf '%s %s\n' "$passed" "$failed" >"$work/result"; }
	trap record EXIT
	# what failed, printed again at the very end: CI shows only the tail of a long run
	recap=$work/failures
	: >"$recap"
	# recap_tap NAME LOG: the failed assertions of a TAP log, each with its diagnostics
	recap_tap() {
		{
			echo "--- $1 (full log: $2)"
			# regress logs prefix each line with [time](elapsed)
			sed -E 's/^\[[0-9:.]+\]\([0-9.]+s\) //' "$2" |
				awk '/^not ok/ || /^#   Failed test/ { n = 12 } n > 0 && (/^not ok/ || /^#/) { print; n-- }' | head -n 60
		} >>"$recap"
	}

	# (a) the pg_regress suites on a temporary instance (test/regress.conf) and a
	# throwaway redis-server; the TAP suites start their own servers
	local out rc
	say "pg_regress: scripts/with-redis.sh make installcheck TAP_TESTS="
	out=$work/regress.out
	timeout -k 10 "$SUITE_TIMEOUT" \
		scripts/with-redis.sh make -s PG_CONFIG="$PG_CONFIG" installcheck TAP_TESTS= \
		</dev/null 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	local ok bad
	ok=$(grep -cE '\.\.\. ok' "$out")
	bad=$(grep -cE '\.\.\. (FAILED|failed)' "$out")
	passed=$((passed + ok))
	failed=$((failed + bad))
	if [ "$rc" -ne 0 ]; then
		[ "$bad" -eq 0 ] && failed=$((failed + 1))
		[ "$rc" -eq 124 ] && warn "pg_regress timed out after ${SUITE_TIMEOUT}s"
		{
			echo "--- pg_regress (exit $rc)"
			grep -E '\.\.\. (FAILED|failed)' "$out"
			[ -s regression.diffs ] && head -n 60 regression.diffs
		} >>"$recap"
		if [ -s regression.diffs ]; then
			warn "pg_regress failed; regression.diffs:"
			cat regression.diffs
		else
			warn "pg_regress failed (exit $rc)"
		fi
		if [ -f log/postmaster.log ]; then
			warn "tail of log/postmaster.log:"
			tail -n 40 log/postmaster.log
		fi
	fi
	record

	# (b) TAP tests
	local -a tap=()
	if [ -n "${MEETCACHE_TAP_TESTS:-}" ]; then
		local t
		for t in $MEETCACHE_TAP_TESTS; do tap+=("test/t/${t##*/}"); done
	else
		shopt -s nullglob
		tap=(test/t/*.pl)
		shopt -u nullglob
	fi
	if [ ${#tap[@]} -eq 0 ]; then
		say "no TAP tests in test/t: skipped"
	elif ! command -v prove >/dev/null 2>&1; then
		warn "prove not found: TAP tests not run"
		failed=$((failed + 1))
	else
		export PG_TEST_PORT_DIR=$work/portlock
		export PG_TEST_TIMEOUT_DEFAULT=${PG_TEST_TIMEOUT_DEFAULT:-60}
		export MEETCACHE_REPO=$repo
		mkdir -p "$PG_TEST_PORT_DIR"
		local f name lf
		for f in "${tap[@]}"; do
			name=$(basename "$f" .pl)
			say "TAP $f: make prove_installcheck PROVE_TESTS=$f"
			mkdir -p "$work/tap"
			timeout -k 10 "$SUITE_TIMEOUT" \
				make -s PG_CONFIG="$PG_CONFIG" prove_installcheck PROVE_TESTS="$f" \
				</dev/null 2>&1 | tee "$work/tap/$name.out"
			rc=${PIPESTATUS[0]}
			# the next run removes tmp_check: keep this suite's logs and data
			[ -d tmp_check ] && mv tmp_check "$work/tap/$name"
			if [ "$rc" -eq 0 ]; then
				passed=$((passed + 1))
			else
				failed=$((failed + 1))
				[ "$rc" -eq 124 ] && warn "$f timed out after ${SUITE_TIMEOUT}s"
				warn "$f failed (exit $rc); tail of its logs:"
				lf=$work/tap/$name/log/regress_log_$name
				[ -f "$lf" ] || lf=$work/tap/$name.out
				recap_tap "$f (exit $rc)" "$lf"
				for lf in "$work/tap/$name/log/regress_log_$name" "$work/tap/$name/log/${name}"_*.log; do
					[ -f "$lf" ] || continue
					echo "----- $lf (last 80 lines)"
					tail -n 80 "$lf"
				done
			fi
			record
		done
	fi

	# (c) the Debian package
	if [ -z "${MEETCACHE_PACKAGE_TEST:-}" ]; then
		say "package test skipped (missing: ${PACKAGE_TEST_PACKAGES[*]})"
	else
		say "package: bash test/package.sh"
		timeout -k 10 "$SUITE_TIMEOUT" bash test/package.sh </dev/null
		rc=$?
		if [ "$rc" -eq 0 ]; then
			passed=$((passed + 1))
		else
			failed=$((failed + 1))
			[ "$rc" -eq 124 ] && warn "test/package.sh timed out after ${SUITE_TIMEOUT}s"
			warn "test/package.sh failed (exit $rc)"
			echo "--- test/package.sh (exit $rc)" >>"$recap"
		fi
	fi
	record

	# (d) the client and example suites (test/clients.sh)
	local -a suites=()
	local d
	if [ "${MEETCACHE_CLIENT_TESTS:-}" = none ]; then
		say "client suites skipped (MEETCACHE_CLIENT_TESTS=none)"
	else
		if [ -n "${MEETCACHE_CLIENT_TESTS:-}" ]; then
			for d in $MEETCACHE_CLIENT_TESTS; do suites+=("$repo/${d%/}"); done
		else
			for d in clients/*/ examples/*/; do [ -f "$d/test.sh" ] && suites+=("$repo/${d%/}"); done
		fi
		local -a runnable=()
		for d in "${suites[@]}"; do
			if [ -f "$work/npm-ci-failed" ] && grep -qxF "$d" "$work/npm-ci-failed"; then
				warn "$d: npm ci failed in the outer phase; not run"
				failed=$((failed + 1))
			else
				runnable+=("$d")
			fi
		done
		if [ ${#runnable[@]} -gt 0 ]; then
			say "client suites: bash test/clients.sh ${runnable[*]#$repo/}"
			out=$work/clients.out
			MEETCACHE_PGBIN=$PGBIN bash test/clients.sh "${runnable[@]}" </dev/null 2>&1 | tee "$out"
			rc=${PIPESTATUS[0]}
			if read -r ok bad < <(sed -n 's/^clients: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$out" | tail -n 1); then
				passed=$((passed + ok))
				failed=$((failed + bad))
				[ "$rc" -ne 0 ] && [ "$bad" -eq 0 ] && failed=$((failed + 1))
				[ "$bad" -gt 0 ] && recap_tap "test/clients.sh ($bad failed)" "$out"
			else
				warn "test/clients.sh failed (exit $rc) before its summary"
				failed=$((failed + 1))
				echo "--- test/clients.sh (exit $rc, no summary)" >>"$recap"
			fi
		fi
	fi
	record
	if [ -s "$recap" ]; then
		say "what failed (details above)"
		cat "$recap"
	fi
	[ "$failed" -eq 0 ]
}

if [ "${1:-}" = "--inner" ]; then
	inner "$2"
	exit $?
fi

###########################################################################
# Outer phase: dependencies, build, install, then the inner phase.
###########################################################################
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
is_root=0
[ "$(id -u)" -eq 0 ] && is_root=1
work=""
final_passed=0
final_failed=0

summary() {
	echo "meetcache: $final_passed passed, $final_failed failed"
}
cleanup() {
	local rc=$?
	if [ -n "$work" ] && [ -d "$work" ]; then
		# a redis-server left behind by an interrupted inner phase (scripts/with-redis.sh,
		# test/package.sh, test/clients.sh, clients/node's cluster suite)
		local pidfile pid
		for pidfile in "$work"/meetcache-*/redis*.pid; do
			[ -f "$pidfile" ] || continue
			pid=$(cat "$pidfile" 2>/dev/null)
			[ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
		done
		if [ "$final_failed" -eq 0 ] && [ "$rc" -eq 0 ] && [ -z "${MEETCACHE_KEEP_TMP:-}" ]; then
			rm -rf "$work"
		else
			echo "(test files kept in $work)"
		fi
	fi
	summary
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
	warn "$*"
	final_failed=$((final_failed + 1))
	exit 1
}

# 1. packages
missing=()
if command -v dpkg >/dev/null 2>&1; then
	for p in "${PACKAGES[@]}"; do
		dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
	done
	if [ "$is_root" -eq 1 ]; then
		for p in "${PACKAGE_TEST_PACKAGES[@]}"; do
			dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
		done
	fi
	# prove comes with the full perl package
	command -v prove >/dev/null 2>&1 || missing+=(perl)
else
	for b in "$PG_CONFIG" redis-server redis-cli prove; do
		command -v "$b" >/dev/null 2>&1 || missing+=("$b")
	done
fi
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$is_root" -eq 1 ] && command -v apt-get >/dev/null 2>&1; then
		say "installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update </dev/null || fail "apt-get update failed"
		apt-get install -y --no-install-recommends "${missing[@]}" </dev/null ||
			fail "apt-get install ${missing[*]} failed"
	else
		fail "missing packages: ${missing[*]} -- install them as root: apt-get install -y ${missing[*]} (or run this script as root)"
	fi
fi
PGBIN=${PGBIN:-$("$PG_CONFIG" --bindir)} || fail "$PG_CONFIG --bindir failed"
PG_CONFIG=$PGBIN/pg_config
pgxs=$("$PG_CONFIG" --pgxs) || fail "$PG_CONFIG --pgxs failed"
for b in "$PG_CONFIG" "$PGBIN/initdb" "$PGBIN/pg_ctl" "${pgxs%/makefiles/pgxs.mk}/test/regress/pg_regress" \
	redis-server redis-cli prove perl make; do
	[ -x "$b" ] || command -v "$b" >/dev/null 2>&1 || fail "required program not found: $b"
done
perl -MIPC::Run -e1 2>/dev/null || fail "perl module IPC::Run missing (package libipc-run-perl)"
package_test=1
for b in dpkg-buildpackage pg_buildext; do
	command -v "$b" >/dev/null 2>&1 || package_test=""
done

# 2. build and install
say "building ($repo)"
make -C "$repo" PG_CONFIG="$PG_CONFIG" WERROR=1 </dev/null || fail "build failed"
pkglibdir=$("$PG_CONFIG" --pkglibdir)
if [ -n "${MEETCACHE_SKIP_INSTALL:-}" ]; then
	say "MEETCACHE_SKIP_INSTALL set: testing the installed build"
elif [ "$is_root" -eq 1 ] || [ -w "$pkglibdir" ]; then
	say "installing"
	make -C "$repo" PG_CONFIG="$PG_CONFIG" install </dev/null || fail "make install failed"
elif [ -f "$pkglibdir/meetcache.so" ]; then
	if ! cmp -s "$repo/meetcache.so" "$pkglibdir/meetcache.so"; then
		warn "not root: cannot install; testing the INSTALLED meetcache.so, which differs from this build"
	fi
else
	fail "not root and meetcache is not installed: run 'sudo make install PG_CONFIG=$PG_CONFIG' or run this script as root"
fi
# 3. copy the repository to a fresh directory owned by the test user
work=$(mktemp -d "${TMPDIR:-/tmp}/meetcache-test.XXXXXX") || fail "mktemp failed"
chmod 755 "$work"
mkdir "$work/repo"
tar -C "$repo" --exclude=./.git --exclude=./tmp_check --exclude=./results \
	--exclude=./test/tmp_check --exclude=node_modules -cf - . | tar -C "$work/repo" -xf - ||
	fail "cannot copy the repository"

# 4. the client suites' npm packages, from the registry (clients/ before examples/, which
# use them); a directory whose npm ci fails is counted as a failed suite by the inner phase
if [ "${MEETCACHE_CLIENT_TESTS:-}" != none ]; then
	for d in "$work"/repo/clients/*/ "$work"/repo/examples/*/; do
		[ -f "$d/test.sh" ] && [ -f "$d/package-lock.json" ] || continue
		say "npm ci in ${d#"$work"/repo/}"
		if ! command -v npm >/dev/null 2>&1; then
			warn "npm not found (Node.js 20 and npm are needed for ${d#"$work"/repo/})"
			echo "${d%/}" >>"$work/npm-ci-failed"
		elif ! (cd "$d" && NPM_CONFIG_UPDATE_NOTIFIER=false npm ci --no-audit --no-fund --loglevel=error </dev/null); then
			warn "npm ci failed in $d"
			echo "${d%/}" >>"$work/npm-ci-failed"
		fi
	done
fi

if [ "$is_root" -eq 1 ]; then
	if ! id -u postgres >/dev/null 2>&1; then
		say "creating user postgres"
		useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres ||
			fail "cannot create user postgres"
	fi
	chown -R postgres: "$work" || fail "chown failed"
	say "running tests as postgres in $work"
	(cd "$work" && runuser -u postgres -- env HOME="$work" MEETCACHE_PGBIN="$PGBIN" \
		MEETCACHE_PACKAGE_TEST="$package_test" bash "$work/repo/test/run-tests.sh" --inner "$work" </dev/null)
	rc=$?
else
	say "running tests as $(id -un) in $work"
	(cd "$work" && MEETCACHE_PGBIN="$PGBIN" MEETCACHE_PACKAGE_TEST="$package_test" \
		bash "$work/repo/test/run-tests.sh" --inner "$work" </dev/null)
	rc=$?
fi

if [ -f "$work/result" ]; then
	read -r p f <"$work/result"
	final_passed=$((final_passed + p))
	final_failed=$((final_failed + f))
fi
if [ "$rc" -ne 0 ] && [ "$final_failed" -eq 0 ]; then
	final_failed=1
fi
[ "$final_failed" -eq 0 ] && exit 0
exit 1
