# shellcheck shell=bash source-path=SCRIPTDIR
# bench/lib.sh: the shell code that the benchmarks (bench/run.sh, drain.sh, latency.sh and
# get_or_set.sh) share, on top of scripts/throwaway-servers.sh (tw_*, RCLI, say/info/die),
# which it sources. Sourced, never run: it sets PGBIN (unless set; empty: tw_pgbin sets it
# from `pg_config --bindir` in either stage) and STAGE_ARG, and defines functions; it runs no command and
# installs no trap. No variable of its own starts with BENCH_: the root stage passes the
# BENCH_* variables on to the unprivileged stage as the settings.
#
# A benchmark sources it from its own directory, which holds it both in the repository
# (bench/) and in the temporary copy that the root stage re-runs the script from
# (bench_root_stage copies lib.sh there, next to throwaway-servers.sh and the fixture):
#   SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
#   . "${SELF%/*}/lib.sh"
# then sets WORK_PREFIX (its temporary directories are /tmp/WORK_PREFIX.XXXXXX), defines
# stage_bench DIR (its unprivileged stage, which starts with bench_enter "$1") and ends
# with bench_main "$@".
#
# Stage 1 (root):
#   bench_main "$@"            entry point: bench_root_stage as root, else (or when re-run
#                              with STAGE_ARG DIR) stage_bench DIR
#   bench_root_stage           installs the missing Debian packages (unless
#                              MEETCACHE_SKIP_APT=1), checks pgbench and redis-benchmark,
#                              make && make install (unless MEETCACHE_SKIP_BUILD=1), creates
#                              the user postgres, copies the script, this file,
#                              throwaway-servers.sh and the fixture to a new ROOT_WORK, re-runs
#                              the script there as postgres with the variables BENCH_*,
#                              MEETCACHE_PRELOAD, KEEP and PGBIN, copies results.env to
#                              $BENCH_RESULTS
# Stage 2 (unprivileged):
#   bench_enter DIR [HOOK]     tw_enter_work with WORK_PREFIX and bench_cleanup as the EXIT
#                              trap (which runs HOOK first); dies unless meetcache is
#                              installed and redis-benchmark is there
#   bench_start_servers [--settings] [bench_start_pg ARGS...]
#                              starts redis-server and PostgreSQL, prints the banner
#                              (versions, ports, machine, md5 of meetcache.so; --settings:
#                              also synchronous_commit, fsync, shared_preload_libraries and
#                              autovacuum_naptime), creates the database bench
#   bench_start_pg [--writes] [--preload] [LINE...]
#                              initdb; postgresql.conf gets shared_buffers = 256MB and
#                              meetcache.redis_url, --writes: max_wal_size = 8GB,
#                              checkpoint_timeout = 30min, autovacuum = on, --preload:
#                              shared_preload_libraries = 'meetcache', then the LINEs;
#                              starts it; PGDATABASE=bench
#   bench_load_data USERS MEETINGS PMEETINGS NPART [STATUS_OF] <SQL
#                              loads the schema (meet_snake.sql) and USERS users u<i>,
#                              MEETINGS meetings m<i> (host u<1 + i % USERS>, status LIVE /
#                              ENDED / SCHEDULED from STATUS_OF, default i), NPART
#                              participants for each of the first PMEETINGS meetings; runs
#                              the SQL of stdin, then VACUUM ANALYZE, CHECKPOINT, CREATE
#                              EXTENSION meetcache
#   bench_results <LINES       writes WORK/results.env (and $BENCH_RESULTS, not under root:
#                              there the root stage copies it)
#   PSQL ARGS... / Q SQL       psql to the database bench / one query, unaligned tuples
#   stat_of COLUMN             a column of meetcache.stats; ext_version: of the extension
#   launcher_running           true if meetcache.stats shows the launcher running
#   check_modes WHAT MODE...   dies on a mode other than sync, queue, sync+queue
#   set_delivery MODE          ALTER DATABASE bench SET meetcache.delivery, checked by SHOW
#   qdepth                     rows in meetcache.queue
#   wait_queue_empty           waits up to QUEUE_WAIT s (default 60) for meetcache.queue to
#                              empty; sets QWAIT_S (seconds, or "timeout" after a warning)
#   bench_pgbench LABEL ARGS...  pgbench -n ARGS... bench, output in WORK/pgbench-LABEL.out;
#                              sets TPS LAT (ms) NTX; warns of failed transactions
#   median [FMT] / mean [FMT]  of the numbers of stdin (FMT for an average: default %.3f)
#   ratio A B, mb BYTES, now_s, fname MODE (sync+queue -> sync_queue)

PGBIN=${PGBIN:-}
STAGE_ARG=--as-bench-user

# throwaway-servers.sh: next to this file in the temporary copy, else in the repository
if [ -f "$(dirname "${BASH_SOURCE[0]}")/throwaway-servers.sh" ]; then
    # shellcheck source=../scripts/throwaway-servers.sh
    . "$(dirname "${BASH_SOURCE[0]}")/throwaway-servers.sh"
else
    # shellcheck source=../scripts/throwaway-servers.sh
    . "$(dirname "${BASH_SOURCE[0]}")/../scripts/throwaway-servers.sh"
fi

###########################################################################################
# Stage 1 (root)
###########################################################################################
# the settings of the single-row UPDATE rounds that run.sh and transport.sh share
# (BENCH_DURATION, BENCH_ROUNDS, ... override them; see run.sh)
bench_write_settings() {
    DURATION=${BENCH_DURATION:-20}
    ROUNDS=${BENCH_ROUNDS:-3}
    WARMUP=${BENCH_WARMUP:-5}
    CLIENTS=${BENCH_CLIENTS:-4}
    JOBS=${BENCH_JOBS:-2}
    PROTOCOL=${BENCH_PROTOCOL:-prepared}
    HOT=${BENCH_HOT:-10000}
    NPART=${BENCH_PARTICIPANTS:-3}
    NUSERS=${BENCH_USERS:-5000}
}

bench_main() { tw_main "$STAGE_ARG" bench_root_stage stage_bench "$@"; }

bench_root_stage() {
    local rc=0
    if [ "${MEETCACHE_SKIP_APT:-0}" != 1 ]; then
        tw_apt_build_deps say "Installing missing packages:" redis-tools openssl
    fi
    tw_pgbin
    [ -x "$PGBIN/pgbench" ] || die "pgbench not found in $PGBIN"
    command -v redis-benchmark >/dev/null || die "redis-benchmark not found (package redis-tools)"
    if [ "${MEETCACHE_SKIP_BUILD:-0}" != 1 ]; then
        tw_make_install "$(tw_repo_dir "$SELF")"
    fi
    tw_ensure_postgres_user
    tw_root_workdir "$SELF" "$WORK_PREFIX" "${BASH_SOURCE[0]}"
    tw_env_matching '^(BENCH_|MEETCACHE_PRELOAD$|KEEP$|PGBIN$)'
    tw_run_as_postgres "$STAGE_ARG" "${TW_ENV[@]}" || rc=$?
    if [ -n "${BENCH_RESULTS:-}" ] && [ -f "$ROOT_WORK/results.env" ]; then cp "$ROOT_WORK/results.env" "$BENCH_RESULTS"; fi
    if tw_root_keep; then echo "kept $ROOT_WORK" >&2; fi
    return $rc
}

###########################################################################################
# Stage 2 (unprivileged): work directory, servers, data
###########################################################################################
bench_enter() {
    CLEANUP_HOOK=${2:-}
    tw_enter_work "$1" "$WORK_PREFIX" bench_cleanup
    tw_pgbin
    tw_extension_installed \
        || die "meetcache is not installed; run this script as root, or make install"
    command -v redis-benchmark >/dev/null || die "redis-benchmark not found (package redis-tools)"
}

# the EXIT trap: the script's hook, tw_stop_servers, removes WORK unless KEEP=1 or
# UNDER_ROOT (the root stage owns the directory then), exits with the script's status
bench_cleanup() {
    local rc=$?
    set +e
    [ -z "${CLEANUP_HOOK:-}" ] || "$CLEANUP_HOOK"
    tw_stop_servers "$rc" "--- last lines of the PostgreSQL log ---"
    if [ "${KEEP:-0}" != 1 ] && [ -z "${UNDER_ROOT:-}" ]; then cd /; rm -rf "$WORK"; fi
    exit "$rc"
}

bench_start_pg() {
    local writes=0 preload=0
    while [ $# -gt 0 ]; do
        case $1 in
            --writes)  writes=1 ;;
            --preload) preload=1 ;;
            *) break ;;
        esac
        shift
    done
    tw_init_pg
    {
        echo "# benchmark settings (see bench/README.md); durability settings are left at their defaults"
        echo "shared_buffers = 256MB"
        if [ "$writes" = 1 ]; then
            echo "max_wal_size = 8GB"
            echo "checkpoint_timeout = 30min"
            echo "autovacuum = on"
        fi
        if [ "$preload" = 1 ]; then echo "shared_preload_libraries = 'meetcache'"; fi
        echo "meetcache.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'"
        if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi
    } >>"$WORK/pgdata/postgresql.conf"
    tw_start_pg
    export PGDATABASE=bench
}

bench_start_servers() {
    local settings=0 so machine
    if [ "${1:-}" = --settings ]; then settings=1; shift; fi
    say "Starting throwaway servers"
    tw_start_redis
    bench_start_pg "$@"
    info "redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$REDIS_PORT (pid $(tw_redis_pid)); PostgreSQL $("$PGBIN/postgres" -V | awk '{print $3}') on unix socket $WORK port $PGPORT"
    machine="machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    if [ "$settings" = 1 ]; then
        machine+="; synchronous_commit=$(Q 'SHOW synchronous_commit' -d postgres), fsync=$(Q 'SHOW fsync' -d postgres)"
        machine+=", shared_preload_libraries='$(Q 'SHOW shared_preload_libraries' -d postgres)', autovacuum_naptime=$(Q 'SHOW autovacuum_naptime' -d postgres)"
    fi
    info "$machine"
    so="$("$PGBIN/pg_config" --pkglibdir)/meetcache.so"
    info "meetcache.so: md5 $(md5sum "$so" | cut -c 1-12), installed $(date -r "$so" '+%F %T')"
    "$PGBIN/createdb" bench
}

bench_load_data() {
    local nusers=$1 nmeet=$2 npmeet=$3 npart=$4 status_of=${5:-i}
    PSQL -f "$WORK/meet_snake.sql" >/dev/null    # the reference schema
    {
        cat <<EOSQL
INSERT INTO users (id, name, email)
  SELECT 'u' || i, 'User ' || i, 'user' || i || '@example.com' FROM generate_series(1, $nusers) i;
INSERT INTO meetings (id, title, host_id, invite_code, status, scheduled_at)
  SELECT 'm' || i, 'Meeting ' || i, 'u' || (1 + i % $nusers), 'inv-' || i,
         CASE WHEN $status_of % 10 = 0 THEN 'LIVE' WHEN $status_of % 3 = 0 THEN 'ENDED' ELSE 'SCHEDULED' END,
         now() + i * interval '1 minute'
  FROM generate_series(1, $nmeet) i;
EOSQL
        if [ "$npmeet" -gt 0 ]; then
            cat <<EOSQL
INSERT INTO participants (id, meeting_id, user_id)
  SELECT 'p' || i || '-' || k, 'm' || i, 'u' || (1 + (i * 7 + k * 131) % $nusers)
  FROM generate_series(1, $npmeet) i, generate_series(1, $npart) k;
EOSQL
        fi
        cat    # the caller's SQL
        printf '%s\n' 'VACUUM ANALYZE;' 'CHECKPOINT;' 'CREATE EXTENSION meetcache;'
    } | PSQL >/dev/null
}

bench_results() {
    cat >"$WORK/results.env"
    if [ -n "${BENCH_RESULTS:-}" ] && [ -z "${UNDER_ROOT:-}" ]; then cp "$WORK/results.env" "$BENCH_RESULTS"; fi
}

###########################################################################################
# SQL helpers
###########################################################################################
PSQL() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -P pager=off "$@"; }
# Q SQL [psql options...]: one query, unaligned tuples only
Q() { PSQL -A -t -c "$@"; }
stat_of() { Q "SELECT $1 FROM meetcache.stats"; }
ext_version() { Q "SELECT extversion FROM pg_extension WHERE extname = 'meetcache'"; }
launcher_running() { [ "$(stat_of worker_state)" = running ]; }

check_modes() {
    local what=$1 m
    shift
    for m in "$@"; do
        case $m in
            sync|queue|sync+queue) ;;
            *) die "unknown mode '$m' in $what (sync, queue, sync+queue)" ;;
        esac
    done
}

# for the database's new sessions (pgbench's), checked in one
set_delivery() {
    Q "ALTER DATABASE bench SET meetcache.delivery = '$1';" >/dev/null
    local got; got=$(Q "SHOW meetcache.delivery")
    [ "$got" = "$1" ] || die "a new session has meetcache.delivery = $got, not $1"
}

qdepth() { Q "SELECT count(*) FROM meetcache.queue"; }

wait_queue_empty() {
    local wait=${QUEUE_WAIT:-60} t0 t; t0=$(now_s)
    while [ "$(Q 'SELECT EXISTS (SELECT 1 FROM meetcache.queue)')" = t ]; do
        t=$(now_s)
        if awk -v a="$t" -v b="$t0" -v w="$wait" 'BEGIN { exit !(a - b > w) }'; then
            QWAIT_S=timeout
            info "warning: meetcache.queue still has $(qdepth) rows after $wait s; stats: $(Q "SELECT worker_state, redis_state, drains_running, last_error FROM meetcache.stats")"
            return 0
        fi
        sleep 0.02
    done
    # shellcheck disable=SC2034  # for the caller
    QWAIT_S=$(awk -v a="$(now_s)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
}

###########################################################################################
# pgbench and numbers
###########################################################################################
bench_pgbench() {
    local label=$1 out="$WORK/pgbench-$1.out" failed
    shift
    "$PGBIN/pgbench" -n "$@" bench >"$out" 2>&1 || { cat "$out" >&2; die "pgbench failed ($label)"; }
    TPS=$(awk '/^tps = / { print $3; exit }' "$out")
    LAT=$(awk '/^latency average = / { print $4; exit }' "$out")
    # shellcheck disable=SC2034  # for the caller
    NTX=$(awk -F': ' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$out")
    failed=$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$out")
    if [ -n "$failed" ] && [ "$failed" != 0 ]; then info "warning: $failed failed transactions in $label"; fi
    if [ -z "$TPS" ] || [ -z "$LAT" ]; then cat "$out" >&2; die "could not parse pgbench output ($label)"; fi
}

median() { sort -g | awk -v f="${1:-%.3f}\n" '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else printf f, (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
mean()   { awk -v f="${1:-%.3f}\n" '{ s += $1; n++ } END { if (n) printf f, s / n; else print "nan" }'; }
ratio()  { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f\n", a / b; else print "nan" }'; }
mb()     { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
now_s()  { date +%s.%N; }
fname()  { echo "${1//+/_}"; }    # sync+queue -> sync_queue (file and variable names)
