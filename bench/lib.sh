# shellcheck shell=bash source-path=SCRIPTDIR
# bench/lib.sh: the shell code that the benchmarks (bench/run.sh, drain.sh, latency.sh,
# get_or_set.sh, transport.sh and cluster.sh) share, on top of scripts/throwaway-servers.sh (tw_*, RCLI, say/info/die),
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
# Settings: bench_write_settings (DURATION ROUNDS WARMUP CLIENTS JOBS PROTOCOL HOT NPART
# NUSERS), bench_drain_settings (TARGET_KEYS NSINGLE BULK_ROWS POLL_MS REPS TIMEOUT NMEET),
# from the BENCH_* variables.
# Several Redis targets (transport.sh, cluster.sh; the caller defines url_of TARGET):
#   bench_preload_for MODE...  PRELOAD=1 if a queue mode is among them, else 0
#   use_redis_url URL WHAT     ALTER DATABASE bench SET meetcache.redis_url, a PONG, and
#                              (PRELOAD=1) no drain left connected with the old URL
#   bench_update_sql           WORK/update.sql: the single-row UPDATE of one of HOT meetings
#   bench_target_rounds TARGET...  warm-up, ROUNDS rounds of MODES x TARGETs, results
#                              against the first TARGET (printed, and WORK/rounds.env)
# A backlog and its drain (drain.sh, cluster.sh):
#   drain_load_data            the data (NMEET meetings, column n), triggers, the watcher
#   drain_rep LABEL FREEZE THAW  one backlog built with Redis frozen, drained after THAW;
#                              sets DR_TOTAL DR_STEADY DR_SINGLE DR_ROWS_SINGLE (keys/s)
#   drain_stop_watcher         for the EXIT hook

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

# the settings of the drain backlog that drain.sh and cluster.sh share (see drain.sh), on
# top of bench_write_settings's CLIENTS, JOBS, HOT, NPART, NUSERS
bench_drain_settings() {
    TARGET_KEYS=${BENCH_DRAIN_KEYS:-1000000}
    NSINGLE=${BENCH_DRAIN_SINGLE:-60000}
    BULK_ROWS=${BENCH_DRAIN_BULK_ROWS:-10000}
    POLL_MS=${BENCH_DRAIN_POLL_MS:-10}
    REPS=${BENCH_DRAIN_REPS:-3}
    TIMEOUT=${BENCH_DRAIN_TIMEOUT:-300}
    NMEET=${BENCH_MEETINGS:-100000}
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

# bench_preload_for MODE...: PRELOAD=1 if a mode is a queue mode (the drains must run)
bench_preload_for() {
    local m
    PRELOAD=0
    for m in "$@"; do [ "$m" = sync ] || PRELOAD=1; done
}

# use_redis_url URL WHAT: meetcache.redis_url of the database's new sessions, checked by
# a PONG; when PRELOAD=1 also of its drains, once those connected with the old setting
# have left (they leave after 500 ms idle)
use_redis_url() {
    local i
    Q "ALTER DATABASE bench SET meetcache.redis_url = '$1'" >/dev/null
    [ "$(Q 'SELECT meetcache.cache_ping()')" = PONG ] || die "no PONG from $2"
    [ "${PRELOAD:-0}" = 1 ] || return 0
    for i in $(seq 1 100); do
        [ "$(stat_of drains_running)" != 0 ] || return 0
        sleep 0.05
    done
    die "a drain is still connected 5 s after the switch to $2"
}

# bench_update_sql: WORK/update.sql, the single-row UPDATE of a random one of the HOT
# meetings (transport.sh, drain.sh, cluster.sh)
bench_update_sql() {
    cat >"$WORK/update.sql" <<EOSQL
\\set n random(1, $HOT)
UPDATE meetings SET title = 'bench ' || (:client_id)::text || '-' || (:n)::text WHERE id = 'm' || (:n)::text;
EOSQL
}

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

###########################################################################################
# Single-row UPDATE rounds against several Redis targets (transport.sh, cluster.sh)
###########################################################################################
# bench_target_run MODE TARGET LABEL SECONDS: use_redis_url "$(url_of TARGET)", one
# pgbench run of WORK/update.sql (TPS, LAT), then in a queue mode until meetcache.queue
# is empty
bench_target_run() {
    use_redis_url "$(url_of "$2")" "$2"
    bench_pgbench "$3" -c "$CLIENTS" -j "$JOBS" -T "$4" -M "$PROTOCOL" -f "$WORK/update.sql"
    [ "$1" = sync ] || wait_queue_empty
}

# bench_target_rounds TARGET...: for each mode of MODES an unmeasured WARMUP s run against
# every TARGET, then ROUNDS rounds of every mode, each against every TARGET in turn
# (bench_target_run; url_of TARGET, the caller's, prints its meetcache.redis_url). The
# first TARGET is the baseline. Prints per mode and TARGET the median TPS, its ratio to
# the baseline's median, and the median and range (min-max) of the per-round ratios;
# writes WORK/rounds.env for bench_results: tps_<mode>_<target>,
# ratio_<mode>_<target>_<baseline> (of the medians), rounds_<mode>_<target>_<baseline>
# (the per-round ratios).
bench_target_rounds() {
    local base=$1 r t m f rr
    declare -A TPSL=() RR=() MED=() TPSR=()
    if [ "$WARMUP" -gt 0 ]; then
        for m in $MODES; do
            set_delivery "$m"
            for t in "$@"; do bench_target_run "$m" "$t" "warmup-$(fname "$m")-$t" "$WARMUP"; done
        done
    fi
    say "Single-row UPDATE, $CLIENTS clients, $DURATION s, $ROUNDS rounds of [$MODES] x [$*]"
    for r in $(seq 1 "$ROUNDS"); do
        for m in $MODES; do
            set_delivery "$m"
            for t in "$@"; do
                bench_target_run "$m" "$t" "$(fname "$m")-$t-$r" "$DURATION"
                TPSR[$t]=$TPS
                TPSL[$m/$t]+="$TPS "
                printf '    round %d %-10s %-8s %8.0f tps, latency average %s ms%s\n' "$r" "$m" "$t" "$TPS" "$LAT" \
                    "$([ "$m" = sync ] || echo ", queue empty ${QWAIT_S} s later")"
            done
            for t in "${@:2}"; do RR[$m/$t]+="$(ratio "${TPSR[$t]}" "${TPSR[$base]}") "; done
        done
    done
    [ "$(stat_of delivery_failures)" = 0 ] || info "warning: $(stat_of delivery_failures) failed deliveries"

    for m in $MODES; do
        for t in "$@"; do MED[$m/$t]=$(tr ' ' '\n' <<<"${TPSL[$m/$t]}" | grep . | median %.1f); done
    done
    say "Results: TPS per delivery mode and target, as a ratio to $base in the same mode and run"
    printf '\n  %-10s %-8s %12s %14s %22s %16s\n' mode target "TPS (median)" "ratio to $base" "median per-round ratio" "per-round range"
    for m in $MODES; do
        printf '  %-10s %-8s %12.0f %14s %22s %16s\n' "$m" "$base" "${MED[$m/$base]}" 1.000 1.000 -
        for t in "${@:2}"; do
            rr=$(tr ' ' '\n' <<<"${RR[$m/$t]}" | grep . | sort -g)
            printf '  %-10s %-8s %12.0f %14s %22s %16s\n' "$m" "$t" "${MED[$m/$t]}" \
                "$(ratio "${MED[$m/$t]}" "${MED[$m/$base]}")" "$(median <<<"$rr")" "$(head -n 1 <<<"$rr")-$(tail -n 1 <<<"$rr")"
        done
    done
    printf '\n  higher is better; 1.0 means the same throughput as %s in the same mode.\n' "$base"
    {
        for m in $MODES; do
            f=$(fname "$m")
            for t in "$@"; do echo "tps_${f}_$t=${MED[$m/$t]}"; done
            for t in "${@:2}"; do
                echo "ratio_${f}_${t}_$base=$(ratio "${MED[$m/$t]}" "${MED[$m/$base]}")"
                echo "rounds_${f}_${t}_$base=\"$(xargs <<<"${RR[$m/$t]}")\""
            done
        done
    } >"$WORK/rounds.env"
}

###########################################################################################
# Drain of a backlog (drain.sh, cluster.sh); settings from bench_drain_settings
###########################################################################################
# drain_load_data: NUSERS users, NMEET meetings (HOT with NPART participants each, a
# column n with the meeting's number for the bulk UPDATEs' ranges), the extension with
# its triggers, and the watcher: drain_watch(poll_ms, timeout_s) polls the oldest queue id
# until the queue is empty, one transaction per poll (no snapshot held), keeps its samples
# in memory and writes them to drain_poll at the end; backlog holds a backlog's rows
drain_load_data() {
    [ "$HOT" -le "$NMEET" ] || die "BENCH_HOT ($HOT) must not exceed BENCH_MEETINGS ($NMEET)"
    say "Loading data: $NUSERS users, $NMEET meetings ($HOT with $NPART participants each)"
    bench_load_data "$NUSERS" "$NMEET" "$HOT" "$NPART" <<'EOSQL'
ALTER TABLE meetings ADD COLUMN n int;
UPDATE meetings SET n = substr(id, 2)::int;
CREATE INDEX ON meetings (n);
EOSQL
    PSQL >/dev/null <<'EOSQL'
SELECT meetcache.attach_defaults();
CREATE TABLE drain_poll (t double precision, min_id bigint);
CREATE TABLE backlog (id bigint PRIMARY KEY, nkeys int, npatterns int);
CREATE PROCEDURE drain_watch(poll_ms int, timeout_s int) LANGUAGE plpgsql AS $$
DECLARE
  ts double precision[] := '{}';
  ids bigint[] := '{}';
  m bigint;
  t0 timestamptz := clock_timestamp();
BEGIN
  LOOP
    SELECT min(id) INTO m FROM meetcache.queue;
    ts := ts || extract(epoch FROM clock_timestamp())::double precision;
    ids := ids || m;
    COMMIT;
    EXIT WHEN m IS NULL OR clock_timestamp() - t0 > make_interval(secs => timeout_s);
    PERFORM pg_sleep(poll_ms / 1000.0);
  END LOOP;
  INSERT INTO drain_poll SELECT * FROM unnest(ts, ids);
END
$$;
EOSQL
    bench_update_sql
    DRAIN_LO=1
}

# for an EXIT hook: stop the watcher of drain_rep, if it runs
drain_stop_watcher() { [ -z "${POLLER_PID:-}" ] || kill "$POLLER_PID" 2>/dev/null || true; }

# drain_rep LABEL FREEZE THAW: one backlog and its drain, in queue mode against the Redis that
# FREEZE stops (SIGSTOP; it says what it stops) and THAW continues (commands):
#   VACUUM, CHECKPOINT, FREEZE; pgbench single-row UPDATEs (NSINGLE transactions, 8 keys
#   each), then bulk UPDATEs of BULK_ROWS meetings until the queue holds TARGET_KEYS keys;
#   wait for the drain to give up and the breaker to open; start the watcher, THAW, wait
#   for an empty queue. Sets DR_TOTAL (keys/s from THAW to an empty queue), DR_STEADY
#   (from the first committed batch on), DR_SINGLE and DR_ROWS_SINGLE (keys/s and rows/s
#   on the single-row rows); prints the details. LABEL names its files in WORK.
drain_rep() {
    local label=$1 freeze=$2 thaw=$3 per_client=$(( (NSINGLE + CLIENTS - 1) / CLIENTS )) nbulk=0 w=0 st
    local last_single t_singles single_keys single_rows rows keys pats k0 k1 t_cont t_first t_empty first_done delay sent0 sent1 rows0 rows1 f0 f1 cmd0 cmd1
    Q "TRUNCATE drain_poll" >/dev/null
    PSQL -c "VACUUM meetings" -c "VACUUM meetcache.queue" -c "CHECKPOINT" >/dev/null
    $freeze
    # single-row transactions first (8 keys each), then bulk ones up to the target
    bench_pgbench "backlog-$label" -c "$CLIENTS" -j "$JOBS" -t "$per_client" -M prepared -f "$WORK/update.sql"
    info "single-row UPDATEs: $(( per_client * CLIENTS )) transactions at $(awk -v t="$TPS" 'BEGIN { printf "%.0f", t }') tps (Redis frozen: commits do not touch it)"
    keys=$(Q "SELECT coalesce(sum(cardinality(keys)), 0) FROM meetcache.queue")
    last_single=$(Q "SELECT coalesce(max(id), 0) FROM meetcache.queue")
    while [ "$keys" -lt "$TARGET_KEYS" ]; do
        [ "$DRAIN_LO" -le "$NMEET" ] || DRAIN_LO=1
        Q "UPDATE meetings SET title = title || 'y' WHERE n BETWEEN $DRAIN_LO AND $(( DRAIN_LO + BULK_ROWS - 1 ))" >/dev/null
        DRAIN_LO=$(( DRAIN_LO + BULK_ROWS )); nbulk=$(( nbulk + 1 ))
        keys=$(Q "SELECT coalesce(sum(cardinality(keys)), 0) FROM meetcache.queue")
    done
    info "bulk UPDATEs: $nbulk transactions of $BULK_ROWS meetings"

    # let the failed drain give up and the breaker open, so each repetition starts alike
    while :; do
        st=$(Q "SELECT redis_state || ' ' || drains_running FROM meetcache.stats")
        [ "$st" = "down 0" ] && break
        w=$(( w + 1 )); [ "$w" -lt 300 ] || { info "warning: still '$st' (redis_state, drains_running) after 30 s"; break; }
        sleep 0.1
    done
    Q "TRUNCATE backlog; INSERT INTO backlog SELECT id, cardinality(keys), coalesce(cardinality(patterns), 0) FROM meetcache.queue;" >/dev/null
    IFS='|' read -r rows keys pats k0 <<<"$(Q "SELECT count(*), sum(nkeys), sum(npatterns), min(id) FROM backlog")"
    info "backlog: $rows queue rows, $keys keys, $pats patterns; queue $(Q "SELECT pg_size_pretty(pg_total_relation_size('meetcache.queue'))"); redis_state, drains_running: $st"
    info "keys per row: $(Q "SELECT string_agg(n || ' keys x ' || c, ', ' ORDER BY n) FROM (SELECT nkeys AS n, count(*) AS c FROM backlog GROUP BY 1 ORDER BY 2 DESC LIMIT 4) x") (most frequent)"
    [ "$pats" = 0 ] || info "warning: the backlog holds $pats family patterns (SCANs), above meetcache.max_keys"
    IFS='|' read -r sent0 rows0 f0 cmd0 <<<"$(Q "SELECT queue_keys_sent, queue_rows_done, worker_failures, commands FROM meetcache.stats")"

    # the watcher starts first, then Redis is thawed
    PSQL -c "CALL drain_watch($POLL_MS, $TIMEOUT)" >"$WORK/watch-$label.out" 2>&1 &
    POLLER_PID=$!
    sleep 0.3
    t_cont=$(now_s)
    $thaw
    info "thawed (SIGCONT) at $t_cont; waiting for an empty queue"
    wait "$POLLER_PID" || { cat "$WORK/watch-$label.out" >&2; die "the watcher failed"; }
    POLLER_PID=
    IFS='|' read -r sent1 rows1 f1 cmd1 <<<"$(Q "SELECT queue_keys_sent, queue_rows_done, worker_failures, commands FROM meetcache.stats")"
    [ "$(Q "SELECT count(*) FROM drain_poll WHERE min_id IS NULL")" = 1 ] \
        || die "the queue did not empty within $TIMEOUT s ($(Q "SELECT count(*) FROM meetcache.queue") rows left)"

    # progress from the samples: the drain takes rows in id order, so keys done at a
    # sample are the backlog keys of ids below the queue's oldest id then
    IFS='|' read -r t_first first_done t_empty k1 <<<"$(Q "
        WITH s AS (SELECT t, min_id FROM drain_poll WHERE t > $t_cont)
        SELECT (SELECT min(t) FROM s WHERE min_id IS NULL OR min_id > $k0),
               (SELECT coalesce(sum(b.nkeys), 0) FROM backlog b
                 WHERE b.id < coalesce((SELECT min_id FROM s WHERE min_id IS NULL OR min_id > $k0 ORDER BY t LIMIT 1), 9223372036854775807)),
               (SELECT min(t) FROM s WHERE min_id IS NULL),
               (SELECT count(*) FROM s)")"
    DR_TOTAL=$(awk -v k="$keys" -v a="$t_empty" -v b="$t_cont" 'BEGIN { printf "%.0f", k / (a - b) }')
    if awk -v a="$t_empty" -v b="$t_first" 'BEGIN { exit !(a > b) }'; then
        DR_STEADY=$(awk -v k="$keys" -v d="$first_done" -v a="$t_empty" -v b="$t_first" 'BEGIN { printf "%.0f", (k - d) / (a - b) }')
    else
        DR_STEADY=nan
    fi
    delay=$(awk -v a="$t_first" -v b="$t_cont" 'BEGIN { printf "%.3f", a - b }')
    # the single-row rows come first: their rate, from the samples taken while the
    # oldest queue row was still one of them (the first one with progress to the last)
    IFS='|' read -r t_singles single_keys single_rows <<<"$(Q "
        WITH s AS (SELECT t, min_id FROM drain_poll WHERE t > $t_cont AND min_id > $k0 AND min_id <= $last_single ORDER BY t DESC LIMIT 1)
        SELECT (SELECT t FROM s), (SELECT sum(nkeys) FROM backlog WHERE id < (SELECT min_id FROM s)),
               (SELECT count(*) FROM backlog WHERE id < (SELECT min_id FROM s))")"
    DR_SINGLE=$(awk -v k="$single_keys" -v d="$first_done" -v a="$t_singles" -v b="$t_first" 'BEGIN { if (a > b) printf "%.0f", (k - d) / (a - b); else print "nan" }')
    DR_ROWS_SINGLE=$(awk -v r="$single_rows" -v k="$single_keys" -v d="$first_done" -v a="$t_singles" -v b="$t_first" 'BEGIN { if (a > b && k > 0) printf "%.0f", r * (1 - d / k) / (a - b); else print "nan" }')
    info "empty after $(awk -v a="$t_empty" -v b="$t_cont" 'BEGIN { printf "%.3f", a - b }') s ($k1 polls); first batch committed after $delay s ($first_done keys)"
    info "queue_keys_sent +$(( sent1 - sent0 )) (backlog: $keys), queue_rows_done +$(( rows1 - rows0 )) (backlog: $rows), Redis commands +$(( cmd1 - cmd0 )), worker_failures +$(( f1 - f0 ))"
    info "=> $DR_TOTAL keys/s from the thaw to empty; $DR_STEADY keys/s from the first committed batch on"
    info "   while it drained single-row rows (8 keys each): $DR_SINGLE keys/s = $DR_ROWS_SINGLE rows/s"
    Q "SELECT 'progress: ' || string_agg(format('%s%% at %s s', pct, to_char(dt, 'FM990.000')), ', ' ORDER BY pct)
       FROM (SELECT pct, (SELECT min(t) FROM drain_poll p WHERE p.t > $t_cont AND (p.min_id IS NULL OR
               (SELECT coalesce(sum(nkeys), 0) FROM backlog b WHERE b.id < p.min_id) >= pct / 100.0 * $keys)) - $t_cont AS dt
             FROM unnest(ARRAY[10, 25, 50, 75, 90, 100]) pct) x" | sed 's/^/    /'
}
