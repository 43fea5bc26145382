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
#   BENCH_MODES="sync queue sync+queue"  meetcache.delivery modes measured against the
#                            baseline (no triggers); a queue mode preloads meetcache
#   BENCH_DURATION=20        seconds of each pgbench run (single-row UPDATE)
#   BENCH_ROUNDS=3           pgbench rounds; each round runs baseline then every mode
#   BENCH_WARMUP=5           seconds of an unmeasured pgbench warm-up run (0 = none)
#   BENCH_CLIENTS=4          pgbench clients (-c)
#   BENCH_JOBS=2             pgbench threads (-j)
#   BENCH_PROTOCOL=prepared  pgbench -M
#   BENCH_HOT=10000          meetings with participants, picked at random by pgbench
#   BENCH_PARTICIPANTS=3     participants per such meeting
#   BENCH_USERS=5000         users (meeting hosts and participants)
#   BENCH_BULK_ROWS=100000   meetings in the table = rows of the bulk UPDATE
#   BENCH_BULK_REPS=5        bulk repetitions per mode (median reported)
#   BENCH_BULK_MODES=$BENCH_MODES  modes of the bulk UPDATE (besides the baseline)
#   BENCH_PREFILL=2000       keys written to Redis before each bulk run (checked afterwards)
#   BENCH_PING_SECONDS=3     seconds of each SQL round-trip run, 2 of each (0 = skip)
#   BENCH_QUEUE_WAIT=120     seconds to wait for meetcache.queue to empty after a run
#   BENCH_NAPTIME=           autovacuum_naptime (empty: the server default, 1min)
#   PGBIN=$(pg_config --bindir)
#   MEETCACHE_SKIP_BUILD=1   as root: do not run make / make install
#   MEETCACHE_SKIP_APT=1     as root: do not install missing Debian packages
#   MEETCACHE_PRELOAD=       1: add meetcache to shared_preload_libraries (all modes);
#                            empty: only if BENCH_MODES has a queue mode; 0: never
#   KEEP=1                   keep the temporary directory (logs, data, raw outputs)
set -euo pipefail

# What the benchmarks share (bench/lib.sh, on top of scripts/throwaway-servers.sh): next to
# this script, in the repository and in its temporary copy alike.
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${SELF%/*}/lib.sh"
WORK_PREFIX=meetcache-bench

MODES=${BENCH_MODES:-sync queue sync+queue}
bench_write_settings
BULK_ROWS=${BENCH_BULK_ROWS:-100000}
BULK_REPS=${BENCH_BULK_REPS:-5}
BULK_MODES=${BENCH_BULK_MODES:-$MODES}
PREFILL=${BENCH_PREFILL:-2000}
PING_SECONDS=${BENCH_PING_SECONDS:-3}
QUEUE_WAIT=${BENCH_QUEUE_WAIT:-120}
NAPTIME=${BENCH_NAPTIME:-}

# (Stage 1, as root, is bench_root_stage of bench/lib.sh: packages, make install, re-run
# as `postgres`.)

###########################################################################################
# Modes and throwaway servers
###########################################################################################
# check_modes_preload: checks the modes, sets PRELOAD (1: shared_preload_libraries)
check_modes_preload() {
    local m
    # shellcheck disable=SC2086  # word splitting of the mode lists is intended
    check_modes BENCH_MODES/BENCH_BULK_MODES $MODES $BULK_MODES
    PRELOAD=${MEETCACHE_PRELOAD:-}
    if [ -z "$PRELOAD" ]; then
        PRELOAD=0
        for m in $MODES $BULK_MODES; do [ "$m" = sync ] || PRELOAD=1; done
    elif [ "$PRELOAD" != 1 ]; then
        for m in $MODES $BULK_MODES; do
            [ "$m" = sync ] || die "mode $m needs shared_preload_libraries = 'meetcache' (MEETCACHE_PRELOAD=0 given)"
        done
    fi
}

# the servers (autovacuum runs, for meetcache.queue, but not on the benchmark's own tables)
start_servers() {
    local pg=(--writes)
    if [ "$PRELOAD" = 1 ]; then pg+=(--preload); fi
    pg+=("meetcache.delivery = 'sync'")
    if [ -n "$NAPTIME" ]; then pg+=("autovacuum_naptime = '$NAPTIME'"); fi
    bench_start_servers --settings "${pg[@]}"
}

###########################################################################################
# Measurement helpers
###########################################################################################
# set_mode baseline|sync|queue|sync+queue: baseline detaches every trigger; a mode attaches
# the default triggers and sets meetcache.delivery for the database (new sessions)
set_mode() {
    if [ "$1" = baseline ]; then
        Q "SELECT meetcache.detach(relation) FROM meetcache.attached;" >/dev/null
    else
        Q "SELECT meetcache.attach_defaults();" >/dev/null
        set_delivery "$1"
    fi
    local n; n=$(Q "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'meetings'::regclass AND NOT tgisinternal;")
    if [ "$1" = baseline ] && [ "$n" != 0 ]; then die "baseline: meetings still has $n triggers after detach"; fi
    if [ "$1" != baseline ] && [ "$n" = 0 ]; then die "$1: attach_defaults() created no trigger on meetings"; fi
}
redis_cmds() { RCLI info stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }'; }
# counters of meetcache.stats that tell the modes apart (cluster-wide when preloaded)
STAT_COLS="xacts_delivered, queue_rows_written, queue_rows_skipped, queue_rows_done, queue_keys_sent, delivery_failures, lookups_settled, lookup_handoffs"
stats_now() { Q "SELECT $STAT_COLS FROM meetcache.stats"; }
# stats_delta BEFORE AFTER -> "delivered 123, queued 0, ..."
stats_delta() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        split(a, x, "|"); split(b, y, "|")
        split("delivered|rows queued|skipped|rows drained|keys drained|failures|lookups settled|lookups handed off", name, "|")
        for (i = 1; i <= 8; i++) { d = y[i] - x[i]; if (d != 0 || i <= 2) { printf "%s%s %d", sep, name[i], d; sep = ", " } }
    }'
}
qsize()  { Q "SELECT pg_total_relation_size('meetcache.queue')"; }
# (wait_queue_empty, bench/lib.sh, waits up to QUEUE_WAIT s and sets QWAIT_S)

# pgbench_run LABEL SECONDS SCRIPT CLIENTS JOBS -> sets TPS LAT NTX
pgbench_run() { bench_pgbench "$1" -c "$4" -j "$5" -T "$2" -M "$PROTOCOL" -f "$3"; }

# time one autocommit statement from the client (includes commit and post-commit delivery)
# -> "ms cpu_ms": client time, and CPU time of its backend (from /proc/PID/schedstat:
# less sensitive than the clock to what else runs on the machine)
# (stderr, e.g. the NOTICE of the max_keys fall-back, goes to the file $2)
time_stmt() {
    PSQL -f - 2>"$2" <<EOSQL | awk '/^Time: / { t = $2 } /^cpu / { c = $2 } END { printf "%s %.1f\n", t, c / 1e6 }'
\pset tuples_only on
\pset format unaligned
SELECT pg_catalog.split_part(pg_catalog.pg_read_file('/proc/' || pg_catalog.pg_backend_pid() || '/schedstat'), ' ', 1) AS cpu0 \gset
\timing on
$1
\timing off
SELECT 'cpu ' || (pg_catalog.split_part(pg_catalog.pg_read_file('/proc/' || pg_catalog.pg_backend_pid() || '/schedstat'), ' ', 1)::bigint - :cpu0);
EOSQL
}

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
    bench_enter "$1"
    [ "$HOT" -le "$BULK_ROWS" ] || die "BENCH_HOT ($HOT) must not exceed BENCH_BULK_ROWS ($BULK_ROWS)"
    check_modes_preload
    local t_start; t_start=$(date +%s)

    start_servers

    say "Loading data: $NUSERS users, $BULK_ROWS meetings ($HOT with $NPART participants each)"
    bench_load_data "$NUSERS" "$BULK_ROWS" "$HOT" "$NPART" <<EOSQL
INSERT INTO chat_messages (id, meeting_id, user_id, message)
  SELECT 'c' || i, 'm' || i, 'u' || (1 + (i * 7 + 131) % $NUSERS), 'hello'
  FROM generate_series(1, $HOT) i;
-- the script vacuums these itself between runs; autovacuum serves meetcache.queue
ALTER TABLE users SET (autovacuum_enabled = off);
ALTER TABLE meetings SET (autovacuum_enabled = off);
ALTER TABLE participants SET (autovacuum_enabled = off);
ALTER TABLE chat_messages SET (autovacuum_enabled = off);
ALTER TABLE recordings SET (autovacuum_enabled = off);
EOSQL
    info "extension meetcache $(ext_version) created; Redis ping from SQL: $(Q "SELECT meetcache.cache_ping()"); worker: $(stat_of worker_state)"
    if [ "$PRELOAD" = 1 ]; then
        launcher_running || die "meetcache is preloaded but its launcher is not running"
    fi

    cat >"$WORK/update.sql" <<'EOSQL'
\set n random(1, :hot)
UPDATE meetings SET title = 'bench ' || (:client_id)::text || '-' || (:n)::text WHERE id = 'm' || (:n)::text;
EOSQL
    sed -i "s/:hot/$HOT/" "$WORK/update.sql"

    local QUEUE_MODES=0 m
    for m in $MODES $BULK_MODES; do [ "$m" = sync ] || QUEUE_MODES=1; done
    local QROWS0=0
    [ "$QUEUE_MODES" = 0 ] || QROWS0=$(stat_of queue_rows_written)

    ###################################################################################
    say "a. pgbench single-row UPDATE of meetings: $CLIENTS clients, $DURATION s per run, $ROUNDS rounds of baseline + [$MODES] (-M $PROTOCOL)"
    if [ "$WARMUP" -gt 0 ]; then
        for m in $MODES; do
            set_mode "$m"
            pgbench_run "warmup-$(fname "$m")" "$WARMUP" "$WORK/update.sql" "$CLIENTS" "$JOBS"
            [ "$m" = sync ] || wait_queue_empty
            info "warm-up ($WARMUP s, $m): $TPS tps"
        done
    fi
    local r mode f c0 c1 cpt s0 s1 note base_tps
    for mode in baseline $MODES; do f=$(fname "$mode"); : >"$WORK/tps-$f"; : >"$WORK/lat-$f"; : >"$WORK/rr-$f"; done
    for r in $(seq 1 "$ROUNDS"); do
        for mode in baseline $MODES; do
            f=$(fname "$mode")
            set_mode "$mode"
            PSQL -c "VACUUM meetings" -c "CHECKPOINT" >/dev/null
            c0=$(redis_cmds); s0=$(stats_now)
            pgbench_run "$f-$r" "$DURATION" "$WORK/update.sql" "$CLIENTS" "$JOBS"
            note=""
            if [ "$mode" != baseline ] && [ "$mode" != sync ]; then
                # the drain may still be catching up: let it finish before the next run
                local depth size; depth=$(qdepth); size=$(qsize)
                wait_queue_empty
                note="; queue at end $depth rows, $(mb "$size") MB, empty after ${QWAIT_S} s"
            fi
            c1=$(redis_cmds); s1=$(stats_now)
            cpt=$(awk -v a="$c0" -v b="$c1" -v n="$NTX" 'BEGIN { printf "%.2f", (b - a - 1) / (n > 0 ? n : 1) }')
            echo "$TPS" >>"$WORK/tps-$f"
            echo "$LAT" >>"$WORK/lat-$f"
            if [ "$mode" = baseline ]; then base_tps=$TPS; else ratio "$TPS" "$base_tps" >>"$WORK/rr-$f"; fi
            printf '    round %d %-10s %9.1f tps  latency %6.3f ms  %7d tx  %5s Redis cmds/tx' "$r" "$mode" "$TPS" "$LAT" "$NTX" "$cpt"
            [ "$mode" = baseline ] || printf '  ratio %s' "$(tail -n 1 "$WORK/rr-$f")"
            [ "$PRELOAD" = 0 ] || printf '  [%s%s]' "$(stats_delta "$s0" "$s1")" "$note"
            printf '\n'
        done
    done
    declare -A TPSM LATM RATIO RRMED
    for mode in baseline $MODES; do
        f=$(fname "$mode")
        TPSM[$mode]=$(median <"$WORK/tps-$f"); LATM[$mode]=$(median <"$WORK/lat-$f")
        RATIO[$mode]=$(ratio "${TPSM[$mode]}" "${TPSM[baseline]}")
        RRMED[$mode]=$(median <"$WORK/rr-$f")
    done

    ###################################################################################
    say "b. bulk UPDATE meetings SET title = title || 'x' ($BULK_ROWS rows), $BULK_REPS repetitions of baseline + [$BULK_MODES]"
    local ms cpums left filled nt
    declare -A BULKM BULKR PERROW DRAINM BCPUM BCPUR
    for mode in baseline $BULK_MODES; do f=$(fname "$mode"); : >"$WORK/bulk-$f"; : >"$WORK/bcpu-$f"; : >"$WORK/bdrain-$f"; done
    for r in $(seq 1 "$BULK_REPS"); do
        for mode in baseline $BULK_MODES; do
            f=$(fname "$mode")
            set_mode "$mode"
            PSQL -c "VACUUM meetings" -c "CHECKPOINT" >/dev/null
            prefill
            filled=$(RCLI dbsize)
            read -r ms cpums < <(time_stmt "UPDATE meetings SET title = title || 'x';" "$WORK/bulk-$f-$r.err")
            [ -n "$ms" ] || die "could not time the bulk UPDATE"
            echo "$ms" >>"$WORK/bulk-$f"
            echo "$cpums" >>"$WORK/bcpu-$f"
            note=""
            if [ "$mode" != baseline ] && [ "$mode" != sync ]; then
                wait_queue_empty
                echo "$QWAIT_S" >>"$WORK/bdrain-$f"
                note="  queue empty ${QWAIT_S} s later;"
            fi
            left=$(RCLI dbsize)
            nt=""
            grep -q 'NOTICE' "$WORK/bulk-$f-$r.err" && nt="  (NOTICE: $(grep -m1 -o 'NOTICE:.*' "$WORK/bulk-$f-$r.err" | cut -c 10-70))"
            printf '    rep %d %-10s %9.1f ms (backend CPU %7.1f ms)%s  keys left in Redis: %s of %s prefilled%s\n' "$r" "$mode" "$ms" "$cpums" "$note" "$left" "$filled" "$nt"
            if [ "$mode" != baseline ] && [ "$left" != 0 ]; then
                info "warning: $left prefilled keys survived the bulk UPDATE with $mode, e.g. $(RCLI --scan | head -n 3 | tr '\n' ' ')"
                STALE_WARN="$left stale keys after a $mode bulk UPDATE"
            fi
        done
    done
    for mode in baseline $BULK_MODES; do
        f=$(fname "$mode")
        BULKM[$mode]=$(median <"$WORK/bulk-$f")
        BULKR[$mode]=$(ratio "${BULKM[$mode]}" "${BULKM[baseline]}")
        BCPUM[$mode]=$(median <"$WORK/bcpu-$f")
        BCPUR[$mode]=$(ratio "${BCPUM[$mode]}" "${BCPUM[baseline]}")
        PERROW[$mode]=$(awk -v a="${BULKM[$mode]}" -v b="${BULKM[baseline]}" -v n="$BULK_ROWS" 'BEGIN { printf "%.2f", (a - b) * 1000 / n }')
        DRAINM[$mode]=$(median <"$WORK/bdrain-$f")
    done

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
    local QSTAT="" QROWS=0 QBYTES=nan QHEAP=nan QCOUNT=nan QDEAD=nan QAV=nan QAVLAST="" QIDX=0 QTOAST=0
    if [ "$QUEUE_MODES" = 1 ]; then
        say "d. meetcache.queue after the whole run ($(( $(date +%s) - t_start )) s)"
        wait_queue_empty
        QROWS=$(( $(stat_of queue_rows_written) - QROWS0 ))
        QSTAT=$(Q "SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid), (SELECT count(*) FROM meetcache.queue),
                          s.n_dead_tup, s.autovacuum_count, coalesce(to_char(s.last_autovacuum, 'HH24:MI:SS'), 'never'),
                          pg_indexes_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)
                   FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = 'meetcache.queue'::regclass")
        IFS='|' read -r QBYTES QHEAP QCOUNT QDEAD QAV QAVLAST QIDX QTOAST <<<"$QSTAT"
        info "rows written over the run: $QROWS; now: $QCOUNT rows, $(mb "$QBYTES") MB in all (heap $(mb "$QHEAP") MB, indexes $(mb "$QIDX") MB, toast $(mb "$QTOAST") MB)"
        info "n_dead_tup $QDEAD; autovacuum ran $QAV times (last: $QAVLAST, now $(date +%H:%M:%S))"
    fi

    ###################################################################################
    say "Results (ratio = mode / baseline, same server, same run)"
    printf '\n'
    row() { local label=$1 base=$2; shift 2; printf '  %-46s %11s' "$label" "$base"; local v; for v in "$@"; do printf ' %11s' "$v"; done; printf '\n'; }
    fmt1() { awk -v a="$1" 'BEGIN { if (a == "nan" || a == "") print "nan"; else printf "%.1f", a }'; }
    local -a c_tps=() c_ratio=() c_rr=() c_target=() c_lat=() b_ms=() b_ratio=() b_row=() b_drain=() b_cpu=() b_cpur=() dashes=()
    for mode in $MODES; do
        c_tps+=("$(fmt1 "${TPSM[$mode]}")"); c_ratio+=("${RATIO[$mode]}"); c_rr+=("${RRMED[$mode]}")
        c_lat+=("${LATM[$mode]}"); dashes+=(-----------)
        case $mode in sync) c_target+=(">= 0.73") ;; queue) c_target+=(">= 0.88") ;; *) c_target+=(">= 0.72") ;; esac
    done
    for mode in $BULK_MODES; do
        b_cpu+=("$(fmt1 "${BCPUM[$mode]}")"); b_cpur+=("${BCPUR[$mode]}")
        b_ms+=("$(fmt1 "${BULKM[$mode]}")"); b_ratio+=("${BULKR[$mode]}"); b_row+=("${PERROW[$mode]}"); b_drain+=("${DRAINM[$mode]}")
    done
    # shellcheck disable=SC2086  # word splitting of the mode lists is intended
    row "measurement" "baseline" $MODES
    row "----------------------------------------------" "-----------" "${dashes[@]}"
    row "a. single-row UPDATE, $CLIENTS clients, TPS (median)" "$(fmt1 "${TPSM[baseline]}")" "${c_tps[@]}"
    row "   TPS ratio (of the medians)" "" "${c_ratio[@]}"
    row "   TPS ratio (median of per-round ratios)" "" "${c_rr[@]}"
    row "   target" "" "${c_target[@]}"
    row "   latency average, ms (median)" "${LATM[baseline]}" "${c_lat[@]}"
    printf '\n'
    # shellcheck disable=SC2086
    row "" "baseline" $BULK_MODES
    row "b. bulk UPDATE $BULK_ROWS rows, ms (median)" "$(fmt1 "${BULKM[baseline]}")" "${b_ms[@]}"
    row "   time ratio (lower is better)" "" "${b_ratio[@]}"
    row "   added per row, us" "" "${b_row[@]}"
    row "   then until the queue is empty, s (median)" "" "${b_drain[@]}"
    row "   backend CPU time, ms (median)" "$(fmt1 "${BCPUM[baseline]}")" "${b_cpu[@]}"
    row "   backend CPU ratio (lower is better)" "" "${b_cpur[@]}"
    row "   target (time ratio)" "" $(for mode in $BULK_MODES; do printf '%s ' '<=1.20'; done)
    printf '\n'
    row "c. Redis PING round trip, 1 client, us" "${RTT_US:-nan}"
    row "   cache_ping() from SQL minus SELECT 1, us" "$SQL_RTT_US"
    if [ "$QUEUE_MODES" = 1 ]; then
        row "d. meetcache.queue after the run, MB" "$(mb "$QBYTES")"
        row "   rows left / rows written during the run" "$QCOUNT / $QROWS"
    fi
    printf '\n  TPS ratio: 1.0 means no cost; higher is better. Bulk time ratio: 1.0 means no cost; lower is better.\n'
    [ -z "${STALE_WARN:-}" ] || printf '  WARNING: %s\n' "$STALE_WARN"
    info "total run time $(( $(date +%s) - t_start )) s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews single runs)"
    {
        echo "modes=\"$MODES\""
        echo "tps_baseline=${TPSM[baseline]}"
        for mode in $MODES; do f=$(fname "$mode"); echo "tps_$f=${TPSM[$mode]}"; echo "tps_ratio_$f=${RATIO[$mode]}"; echo "tps_round_ratio_$f=${RRMED[$mode]}"; done
        echo "bulk_ms_baseline=${BULKM[baseline]}"
        for mode in $BULK_MODES; do f=$(fname "$mode"); echo "bulk_ms_$f=${BULKM[$mode]}"; echo "bulk_ratio_$f=${BULKR[$mode]}"; echo "bulk_cpu_ratio_$f=${BCPUR[$mode]}"; done
        echo "redis_rtt_us=${RTT_US:-nan}"; echo "sql_ping_rtt_us=$SQL_RTT_US"
        if [ "$QUEUE_MODES" = 1 ]; then
            echo "queue_bytes=$QBYTES"; echo "queue_rows_left=$QCOUNT"; echo "queue_rows_written=$QROWS"
            echo "queue_dead_tuples=$QDEAD"; echo "queue_autovacuums=$QAV"
        fi
    } | bench_results
}

bench_main "$@"
