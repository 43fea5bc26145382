#!/usr/bin/env bash
# meetcache benchmarks: bash bench/run.sh
#
# Benchmarks, not tests: nothing here asserts on timings. Results are printed as ratios
# (meetcache / baseline) because absolute numbers depend on the machine.
#
# Run as root: installs missing Debian packages, builds and installs the extension, then
# runs everything as the unprivileged `postgres` user (created if absent). Run as any
# other user: uses the extension already installed.
# The servers are throwaway: a PostgreSQL 15 in a temporary directory (unix socket only)
# and a redis-server on a free 127.0.0.1 port; both stop, and the directory is removed,
# when the script exits (also on error or Ctrl-C).
#
# See bench/README.md for what is measured and how to read it. Environment (defaults):
#   BENCH_DURATION=20        seconds of each pgbench run (single-row UPDATE)
#   BENCH_ROUNDS=2           pgbench rounds; each round runs baseline then meetcache
#   BENCH_WARMUP=5           seconds of an unmeasured pgbench warm-up run (0 = none)
#   BENCH_CLIENTS=4          pgbench clients (-c)
#   BENCH_JOBS=2             pgbench threads (-j)
#   BENCH_PROTOCOL=prepared  pgbench -M
#   BENCH_HOT=10000          meetings with participants, picked at random by pgbench
#   BENCH_PARTICIPANTS=3     participants per such meeting
#   BENCH_USERS=5000         users (meeting hosts and participants)
#   BENCH_BULK_ROWS=100000   meetings in the table = rows of the bulk UPDATE
#   BENCH_BULK_REPS=5        bulk repetitions per mode (median reported)
#   BENCH_PREFILL=2000       keys written to Redis before each bulk run (checked afterwards)
#   BENCH_PING_SECONDS=3     seconds of each SQL round-trip run, 2 of each (0 = skip)
#   PGBIN=/usr/lib/postgresql/15/bin
#   MEETCACHE_SKIP_BUILD=1   as root: do not run make / make install
#   MEETCACHE_SKIP_APT=1     as root: do not install missing Debian packages
#   MEETCACHE_PRELOAD=1      add meetcache to shared_preload_libraries (both modes)
#   KEEP=1                   keep the temporary directory (logs, data, raw outputs)
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
STAGE_ARG=--as-bench-user

# The shared root stage and throwaway servers (tw_*, scripts/throwaway-servers.sh): next
# to this script when it runs from its temporary copy, else in the repository.
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
if [ -f "${SELF%/*}/throwaway-servers.sh" ]; then . "${SELF%/*}/throwaway-servers.sh"; else . "${SELF%/*}/../scripts/throwaway-servers.sh"; fi

DURATION=${BENCH_DURATION:-20}
ROUNDS=${BENCH_ROUNDS:-2}
WARMUP=${BENCH_WARMUP:-5}
CLIENTS=${BENCH_CLIENTS:-4}
JOBS=${BENCH_JOBS:-2}
PROTOCOL=${BENCH_PROTOCOL:-prepared}
HOT=${BENCH_HOT:-10000}
NPART=${BENCH_PARTICIPANTS:-3}
NUSERS=${BENCH_USERS:-5000}
BULK_ROWS=${BENCH_BULK_ROWS:-100000}
BULK_REPS=${BENCH_BULK_REPS:-5}
PREFILL=${BENCH_PREFILL:-2000}
PING_SECONDS=${BENCH_PING_SECONDS:-3}

###########################################################################################
# Stage 1 (root): dependencies, build, install, then re-run this script as `postgres`.
###########################################################################################
stage_root() {
    tw_bench_root_stage "$SELF" meetcache-bench "$STAGE_ARG" '^(BENCH_|MEETCACHE_PRELOAD$|KEEP$|PGBIN$)' \
        postgresql-15 postgresql-server-dev-15 libhiredis-dev redis-server
}

###########################################################################################
# Throwaway servers
###########################################################################################
start_pg() {
    tw_init_pg
    cat >>"$WORK/pgdata/postgresql.conf" <<EOF
# benchmark settings (see bench/README.md); durability settings are left at their defaults
shared_buffers = 256MB
max_wal_size = 8GB
checkpoint_timeout = 30min
autovacuum = off
meetcache.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'
meetcache.delivery = 'sync'
EOF
    if [ "${MEETCACHE_PRELOAD:-0}" = 1 ]; then echo "shared_preload_libraries = 'meetcache'" >>"$WORK/pgdata/postgresql.conf"; fi
    tw_start_pg
    export PGDATABASE=bench
}

PSQL() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -P pager=off "$@"; }
Q() { PSQL -A -t -c "$1"; }

###########################################################################################
# Measurement helpers
###########################################################################################
MODE=none
set_mode() {   # set_mode baseline|meetcache
    if [ "$1" = baseline ]; then
        Q "SELECT meetcache.detach(relation) FROM meetcache.attached;" >/dev/null
    else
        Q "SELECT meetcache.attach_defaults();" >/dev/null
    fi
    local n; n=$(Q "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'meetings'::regclass AND NOT tgisinternal;")
    if [ "$1" = baseline ] && [ "$n" != 0 ]; then die "baseline: meetings still has $n triggers after detach"; fi
    if [ "$1" = meetcache ] && [ "$n" = 0 ]; then die "meetcache: attach_defaults() created no trigger on meetings"; fi
    MODE=$1
}
redis_cmds() { RCLI info stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }'; }

# pgbench_run LABEL SECONDS SCRIPT CLIENTS JOBS -> sets TPS LAT NTX
pgbench_run() {
    local label=$1 secs=$2 script=$3 c=$4 j=$5 out="$WORK/pgbench-$1.out"
    "$PGBIN/pgbench" -n -c "$c" -j "$j" -T "$secs" -M "$PROTOCOL" -f "$script" bench >"$out" 2>&1 \
        || { cat "$out" >&2; die "pgbench failed ($label)"; }
    TPS=$(awk '/^tps = / { print $3; exit }' "$out")
    LAT=$(awk '/^latency average = / { print $4; exit }' "$out")
    NTX=$(awk -F': ' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$out")
    local failed; failed=$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$out")
    if [ -n "$failed" ] && [ "$failed" != 0 ]; then info "warning: $failed failed transactions in $label"; fi
    [ -n "$TPS" ] || { cat "$out" >&2; die "could not parse pgbench output ($label)"; }
}

# time one autocommit statement from the client (includes commit and post-commit delivery)
# (stderr, e.g. the NOTICE of the max_keys fall-back, goes to the file $2)
time_stmt() {
    PSQL -c '\timing on' -c "$1" 2>"$2" | awk '/^Time: / { print $2 }'
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
mean()   { awk '{ s += $1; n++ } END { if (n) printf "%.3f\n", s / n; else print "nan" }'; }
ratio()  { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f\n", a / b; else print "nan" }'; }

# prefill Redis with keys the bulk UPDATE must delete (RESP through redis-cli --pipe)
prefill() {
    RCLI flushall >/dev/null
    [ "$PREFILL" -gt 0 ] || return 0
    awk -v n="$PREFILL" -v rows="$BULK_ROWS" -v users="$NUSERS" 'BEGIN {
        srand(42)
        for (k = 0; k < n; k++) {
            r = k % 3; i = 1 + int(rand() * rows)
            if (r == 0) key = "meeting:m" i
            else if (r == 1) key = "meeting:invite:inv-" i
            else key = "meetings:user:u" (1 + i % users)
            printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$2\r\n{}\r\n", length(key), key
        }
    }' | RCLI --pipe >/dev/null
}

###########################################################################################
# Stage 2 (unprivileged)
###########################################################################################
stage_bench() {
    tw_enter_work "$1" meetcache-bench tw_cleanup
    tw_extension_installed \
        || die "meetcache is not installed; run this script as root, or make install"
    [ "$HOT" -le "$BULK_ROWS" ] || die "BENCH_HOT ($HOT) must not exceed BENCH_BULK_ROWS ($BULK_ROWS)"

    say "Starting throwaway servers"
    tw_start_redis
    start_pg
    info "redis-server 127.0.0.1:$REDIS_PORT; PostgreSQL $("$PGBIN/postgres" -V | awk '{print $3}') on unix socket $WORK port $PGPORT"
    info "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo); synchronous_commit=$(PSQL -d postgres -A -t -c 'SHOW synchronous_commit'), fsync=$(PSQL -d postgres -A -t -c 'SHOW fsync')"
    "$PGBIN/createdb" bench

    say "Loading data: $NUSERS users, $BULK_ROWS meetings ($HOT with $NPART participants each)"
    PSQL -f "$WORK/meet_snake.sql" >/dev/null
    PSQL >/dev/null <<EOF
INSERT INTO users (id, name, email)
  SELECT 'u' || i, 'User ' || i, 'user' || i || '@example.com' FROM generate_series(1, $NUSERS) i;
INSERT INTO meetings (id, title, host_id, invite_code, status, scheduled_at)
  SELECT 'm' || i, 'Meeting ' || i, 'u' || (1 + i % $NUSERS), 'inv-' || i,
         CASE WHEN i % 10 = 0 THEN 'LIVE' WHEN i % 3 = 0 THEN 'ENDED' ELSE 'SCHEDULED' END,
         now() + i * interval '1 minute'
  FROM generate_series(1, $BULK_ROWS) i;
INSERT INTO participants (id, meeting_id, user_id)
  SELECT 'p' || i || '-' || k, 'm' || i, 'u' || (1 + (i * 7 + k * 131) % $NUSERS)
  FROM generate_series(1, $HOT) i, generate_series(1, $NPART) k;
INSERT INTO chat_messages (id, meeting_id, user_id, message)
  SELECT 'c' || i, 'm' || i, 'u' || (1 + (i * 7 + 131) % $NUSERS), 'hello'
  FROM generate_series(1, $HOT) i;
VACUUM ANALYZE;
CHECKPOINT;
CREATE EXTENSION meetcache;
EOF
    info "extension meetcache $(Q "SELECT extversion FROM pg_extension WHERE extname = 'meetcache'") created; Redis ping from SQL: $(Q "SELECT meetcache.cache_ping()")"

    cat >"$WORK/update.sql" <<'EOF'
\set n random(1, :hot)
UPDATE meetings SET title = 'bench ' || (:client_id)::text || '-' || (:n)::text WHERE id = 'm' || (:n)::text;
EOF
    sed -i "s/:hot/$HOT/" "$WORK/update.sql"

    ###################################################################################
    say "a. pgbench single-row UPDATE of meetings: $CLIENTS clients, $DURATION s per run, $ROUNDS rounds (-M $PROTOCOL)"
    if [ "$WARMUP" -gt 0 ]; then
        set_mode meetcache
        pgbench_run warmup "$WARMUP" "$WORK/update.sql" "$CLIENTS" "$JOBS"
        info "warm-up ($WARMUP s, meetcache): $TPS tps"
    fi
    : >"$WORK/tps-baseline"; : >"$WORK/tps-meetcache"
    local r mode c0 c1 cpt
    for r in $(seq 1 "$ROUNDS"); do
        for mode in baseline meetcache; do
            set_mode "$mode"
            PSQL -c "VACUUM meetings" -c "CHECKPOINT" >/dev/null
            c0=$(redis_cmds)
            pgbench_run "$mode-$r" "$DURATION" "$WORK/update.sql" "$CLIENTS" "$JOBS"
            c1=$(redis_cmds)
            cpt=$(awk -v a="$c0" -v b="$c1" -v n="$NTX" 'BEGIN { printf "%.2f", (b - a - 1) / (n > 0 ? n : 1) }')
            echo "$TPS" >>"$WORK/tps-$mode"
            echo "$LAT" >>"$WORK/lat-$mode"
            printf '    round %d %-9s  %10.1f tps  latency %7.3f ms  %8d tx  %5s Redis commands/tx\n' "$r" "$mode" "$TPS" "$LAT" "$NTX" "$cpt"
        done
    done
    TPS_BASE=$(mean <"$WORK/tps-baseline"); TPS_MC=$(mean <"$WORK/tps-meetcache")
    LAT_BASE=$(mean <"$WORK/lat-baseline"); LAT_MC=$(mean <"$WORK/lat-meetcache")
    TPS_RATIO=$(ratio "$TPS_MC" "$TPS_BASE")

    ###################################################################################
    say "b. bulk UPDATE meetings SET title = title || 'x' ($BULK_ROWS rows), $BULK_REPS repetitions per mode"
    : >"$WORK/bulk-baseline"; : >"$WORK/bulk-meetcache"
    local ms left filled note
    for r in $(seq 1 "$BULK_REPS"); do
        for mode in baseline meetcache; do
            set_mode "$mode"
            PSQL -c "VACUUM meetings" -c "CHECKPOINT" >/dev/null
            prefill
            filled=$(RCLI dbsize)
            ms=$(time_stmt "UPDATE meetings SET title = title || 'x';" "$WORK/bulk-$mode-$r.err")
            [ -n "$ms" ] || die "could not time the bulk UPDATE"
            echo "$ms" >>"$WORK/bulk-$mode"
            left=$(RCLI dbsize)
            note=""
            grep -q 'NOTICE' "$WORK/bulk-$mode-$r.err" && note="  (NOTICE: $(grep -m1 -o 'NOTICE:.*' "$WORK/bulk-$mode-$r.err" | cut -c 10-90))"
            printf '    rep %d %-9s  %10.1f ms   keys left in Redis: %s of %s prefilled%s\n' "$r" "$mode" "$ms" "$left" "$filled" "$note"
            if [ "$mode" = meetcache ] && [ "$left" != 0 ]; then
                info "warning: $left prefilled keys survived the bulk UPDATE with meetcache, e.g. $(RCLI --scan | head -n 3 | tr '\n' ' ')"
                STALE_WARN="$left stale keys after a meetcache bulk UPDATE"
            fi
        done
    done
    BULK_BASE=$(median <"$WORK/bulk-baseline"); BULK_MC=$(median <"$WORK/bulk-meetcache")
    BULK_RATIO=$(ratio "$BULK_MC" "$BULK_BASE")
    PER_ROW_US=$(awk -v a="$BULK_MC" -v b="$BULK_BASE" -v n="$BULK_ROWS" 'BEGIN { printf "%.2f", (a - b) * 1000 / n }')

    ###################################################################################
    say "c. Redis round trip reference"
    RCLI flushall >/dev/null
    local rb1 rb50
    rb50=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -q -n 20000 -t ping 2>&1 | tr '\r' '\n' | grep 'requests per second' | sed 's/^ *//')
    rb1=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -q -n 20000 -c 1 -t ping 2>&1 | tr '\r' '\n' | grep 'requests per second' | sed 's/^ *//')
    info "redis-benchmark -n 20000 -t ping (50 clients):"; printf '%s\n' "$rb50" | sed 's/^/      /'
    info "redis-benchmark -n 20000 -c 1 -t ping (1 client, one round trip at a time):"; printf '%s\n' "$rb1" | sed 's/^/      /'
    RTT_US=$(printf '%s\n' "$rb1" | awk '/PING_MBULK/ { printf "%.1f", 1e6 / $2 }')
    SQL_RTT_US=nan
    if [ "$PING_SECONDS" -gt 0 ]; then
        echo 'SELECT 1;' >"$WORK/select1.sql"
        echo 'SELECT meetcache.cache_ping();' >"$WORK/ping.sql"
        : >"$WORK/lat-select1"; : >"$WORK/lat-ping"
        for r in 1 2; do
            pgbench_run "select1-$r" "$PING_SECONDS" "$WORK/select1.sql" 1 1; echo "$LAT" >>"$WORK/lat-select1"
            pgbench_run "sqlping-$r" "$PING_SECONDS" "$WORK/ping.sql" 1 1; echo "$LAT" >>"$WORK/lat-ping"
        done
        local l1 l2; l1=$(mean <"$WORK/lat-select1"); l2=$(mean <"$WORK/lat-ping")
        SQL_RTT_US=$(awk -v a="$l2" -v b="$l1" 'BEGIN { printf "%.1f", (a - b) * 1000 }')
        info "pgbench 1 client, mean of 2 x $PING_SECONDS s: SELECT 1 $l1 ms, SELECT meetcache.cache_ping() $l2 ms per statement"
    fi

    ###################################################################################
    say "Results (ratio = meetcache / baseline)"
    printf '\n'
    printf '  %-50s %14s %14s %9s\n' "measurement" "baseline" "meetcache" "ratio"
    printf '  %-50s %14s %14s %9s\n' "--------------------------------------------------" "--------------" "--------------" "---------"
    printf '  %-50s %14.1f %14.1f %9s\n' "a. single-row UPDATE, $CLIENTS clients, TPS (mean)" "$TPS_BASE" "$TPS_MC" "$TPS_RATIO"
    printf '  %-50s %14.3f %14.3f %9s\n' "   latency average, ms (mean)" "$LAT_BASE" "$LAT_MC" "$(ratio "$LAT_MC" "$LAT_BASE")"
    printf '  %-50s %14.1f %14.1f %9s\n' "b. bulk UPDATE $BULK_ROWS rows, ms (median)" "$BULK_BASE" "$BULK_MC" "$BULK_RATIO"
    printf '  %-50s %14s %14s\n' "   added per row, us" "" "$PER_ROW_US"
    printf '  %-50s %14s\n' "c. Redis PING round trip, 1 client, us" "${RTT_US:-nan}"
    printf '  %-50s %14s\n' "   cache_ping() from SQL minus SELECT 1, us" "$SQL_RTT_US"
    printf '\n  TPS ratio %s: 1.0 means no cost; higher is better.\n' "$TPS_RATIO"
    printf '  Bulk time ratio %s: 1.0 means no cost; lower is better.\n' "$BULK_RATIO"
    [ -z "${STALE_WARN:-}" ] || printf '  WARNING: %s\n' "$STALE_WARN"
    {
        echo "tps_baseline=$TPS_BASE"; echo "tps_meetcache=$TPS_MC"; echo "tps_ratio=$TPS_RATIO"
        echo "bulk_ms_baseline=$BULK_BASE"; echo "bulk_ms_meetcache=$BULK_MC"; echo "bulk_ratio=$BULK_RATIO"
        echo "redis_rtt_us=${RTT_US:-nan}"; echo "sql_ping_rtt_us=$SQL_RTT_US"
    } >"$WORK/results.env"
    if [ -n "${BENCH_RESULTS:-}" ] && [ -z "${UNDER_ROOT:-}" ]; then cp "$WORK/results.env" "$BENCH_RESULTS"; fi
}

tw_main "$STAGE_ARG" stage_root stage_bench "$@"
