#!/usr/bin/env bash
# meetcache benchmark: how fast do the drains empty a backlog?   bash bench/drain.sh
#
# A benchmark, not a test: nothing here asserts on timings. In one run, on throwaway
# servers (meetcache preloaded, meetcache.delivery = queue):
#   1. redis-server is frozen (SIGSTOP), so nothing can be delivered;
#   2. writes build a backlog in meetcache.queue: single-row UPDATEs (pgbench, one queue
#      row of 8 keys each) and bulk UPDATEs of BENCH_DRAIN_BULK_ROWS meetings each (one
#      queue row of tens of thousands of keys each), until it holds BENCH_DRAIN_KEYS keys;
#   3. redis-server is thawed (SIGCONT) and a poller (a procedure in the database,
#      every BENCH_DRAIN_POLL_MS) records the queue's oldest id until the queue is empty;
#   4. redis-benchmark measures raw pipelined UNLINK throughput on the same redis-server.
# Reported: keys/s = backlog keys / time from SIGCONT to an empty queue (and the same rate
# from the drain's first committed batch on), next to the raw UNLINK rate, as a ratio.
# See bench/README.md ("Drain throughput").
#
# Run as root: installs missing Debian packages, builds and installs the extension
# (unless MEETCACHE_SKIP_BUILD=1), then runs as the unprivileged `postgres` user.
# Run as any other user: uses the extension already installed.
# PostgreSQL listens on a unix socket in a temporary directory only; redis-server on
# 127.0.0.1, on a free port chosen at run time. Both stop, and the directory is removed,
# when the script exits (also on error or Ctrl-C; KEEP=1 keeps it).
#
# Environment (defaults):
#   BENCH_DRAIN_KEYS=1000000    keys in the backlog (reached with bulk UPDATEs)
#   BENCH_DRAIN_SINGLE=60000    single-row UPDATE transactions in the backlog (pgbench)
#   BENCH_DRAIN_BULK_ROWS=10000 meetings per bulk UPDATE transaction
#   BENCH_DRAIN_POLL_MS=10      poll interval of the queue watcher
#   BENCH_DRAIN_REPS=3          backlog / drain repetitions (the median is reported)
#   BENCH_DRAIN_TIMEOUT=300     seconds to wait for the queue to empty
#   BENCH_RAW_N=1000000         UNLINKs of each redis-benchmark run
#   BENCH_CLIENTS=4 BENCH_JOBS=2  pgbench -c / -j of the single-row UPDATEs
#   BENCH_HOT=10000 BENCH_PARTICIPANTS=3 BENCH_USERS=5000 BENCH_MEETINGS=100000  data
#   BENCH_RESULTS=file          also write the results as key=value lines there
#   PGBIN=$(pg_config --bindir)
#   MEETCACHE_SKIP_BUILD=1      as root: do not run make / make install
#   MEETCACHE_SKIP_APT=1        as root: do not install missing Debian packages
#   KEEP=1                      keep the temporary directory (logs, raw outputs)
set -euo pipefail

# What the benchmarks share (bench/lib.sh, on top of scripts/throwaway-servers.sh): next to
# this script, in the repository and in its temporary copy alike.
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${SELF%/*}/lib.sh"
WORK_PREFIX=meetcache-bench-drain

bench_write_settings
bench_drain_settings
RAW_N=${BENCH_RAW_N:-1000000}

# (Stage 1, as root, is bench_root_stage of bench/lib.sh: packages, make install, re-run
# as `postgres`.)

###########################################################################################
# Helpers
###########################################################################################
# rates are whole keys/s
median0() { median %.0f; }

# the EXIT trap's hook: thaw Redis whatever happens (the trap stops it, and a stopped
# process ignores SHUTDOWN), stop the watcher
drain_cleanup() {
    tw_kill_redis -CONT
    drain_stop_watcher
}

# freeze / thaw the redis-server for drain_rep
freeze_redis() { info "freezing redis-server (SIGSTOP pid $(tw_redis_pid))"; tw_kill_redis -STOP; }
thaw_redis() { tw_kill_redis -CONT; }

# raw_unlink LABEL ARGS... -> RAW_RPS (requests/s of redis-benchmark --csv)
raw_unlink() {
    local label=$1 csv
    shift
    csv=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" --csv "$@" 2>/dev/null | tr -d '\r' | tail -n 1)
    RAW_RPS=$(printf '%s\n' "$csv" | awk -F'","' '{ printf "%.0f", $2 }')
    if [ -z "$RAW_RPS" ] || [ "$RAW_RPS" = 0 ]; then die "redis-benchmark gave no result ($label): $csv"; fi
}

###########################################################################################
# Stage 2 (unprivileged)
###########################################################################################
stage_bench() {
    bench_enter "$1" drain_cleanup
    local t_start rep; t_start=$(date +%s)

    bench_start_servers --writes --preload
    drain_load_data
    set_delivery queue
    launcher_running || die "the meetcache launcher is not running"
    info "extension meetcache $(ext_version), triggers attached, delivery = $(Q "SHOW meetcache.delivery"), drain_batch = $(Q "SHOW meetcache.drain_batch"), max_keys = $(Q "SHOW meetcache.max_keys")"

    local args200=""
    for _ in $(seq 1 200); do args200+=" key:__rand_int__"; done

    : >"$WORK/rate-total"; : >"$WORK/rate-steady"; : >"$WORK/raw1"; : >"$WORK/raw200"
    : >"$WORK/rate-single"; : >"$WORK/rows-single"
    for rep in $(seq 1 "$REPS"); do
        say "Repetition $rep of $REPS"
        RCLI flushall >/dev/null

        # raw reference first, on the same (empty) redis-server
        raw_unlink raw1 -c 1 -P 1000 -n "$RAW_N" -r 1000000 UNLINK key:__rand_int__
        echo "$RAW_RPS" >>"$WORK/raw1"
        info "raw: redis-benchmark -c 1 -P 1000 -n $RAW_N -r 1000000 UNLINK key:__rand_int__: $RAW_RPS UNLINK/s (= keys/s)"
        # shellcheck disable=SC2086  # $args200: 200 arguments
        raw_unlink raw200 -c 1 -P 10 -n $(( RAW_N / 100 )) -r 1000000 UNLINK $args200
        echo "$(( RAW_RPS * 200 ))" >>"$WORK/raw200"
        info "raw: redis-benchmark -c 1 -P 10 -n $(( RAW_N / 100 )) UNLINK <200 keys> (meetcache's command shape): $RAW_RPS UNLINK/s = $(( RAW_RPS * 200 )) names/s"
        RCLI flushall >/dev/null

        drain_rep "$rep" freeze_redis thaw_redis
        echo "$DR_TOTAL" >>"$WORK/rate-total"; echo "$DR_STEADY" >>"$WORK/rate-steady"
        echo "$DR_SINGLE" >>"$WORK/rate-single"; echo "$DR_ROWS_SINGLE" >>"$WORK/rows-single"
    done

    local R_TOTAL R_STEADY RAW1 RAW200 R_SINGLE ROWS_SINGLE
    R_TOTAL=$(median0 <"$WORK/rate-total"); R_STEADY=$(median0 <"$WORK/rate-steady")
    R_SINGLE=$(median0 <"$WORK/rate-single"); ROWS_SINGLE=$(median0 <"$WORK/rows-single")
    RAW1=$(median0 <"$WORK/raw1"); RAW200=$(median0 <"$WORK/raw200")
    say "Results (median of $REPS repetitions; same redis-server, same run)"
    printf '\n  %-62s %12s\n' "measurement" "keys/s"
    printf '  %-62s %12s\n' "--------------------------------------------------------------" "------------"
    printf '  %-62s %12s\n' "drain, backlog keys / (SIGCONT to empty queue)" "$R_TOTAL"
    printf '  %-62s %12s\n' "drain, from its first committed batch to empty queue" "$R_STEADY"
    printf '  %-62s %12s\n' "   while it drained the single-row rows ($ROWS_SINGLE rows/s)" "$R_SINGLE"
    printf '  %-62s %12s\n' "raw: UNLINK 1 key, pipelined 1000, 1 connection" "$RAW1"
    printf '  %-62s %12s\n' "raw: UNLINK 200 names per command, pipelined 10 (names/s)" "$RAW200"
    printf '\n  ratio drain / raw (1 key per UNLINK):   %s (SIGCONT to empty)   %s (from first batch)\n' "$(ratio "$R_TOTAL" "$RAW1")" "$(ratio "$R_STEADY" "$RAW1")"
    printf '  target: >= 300000 keys/s. meetcache sends each key with its lease key (2 names per key).\n'
    info "total run time $(( $(date +%s) - t_start )) s"
    {
        echo "drain_keys_per_s=$R_TOTAL"; echo "drain_keys_per_s_from_first_batch=$R_STEADY"
        echo "raw_unlink_per_s=$RAW1"; echo "raw_unlink200_names_per_s=$RAW200"
        echo "drain_over_raw=$(ratio "$R_TOTAL" "$RAW1")"; echo "drain_over_raw_from_first_batch=$(ratio "$R_STEADY" "$RAW1")"
        echo "drain_single_keys_per_s=$R_SINGLE"; echo "drain_single_rows_per_s=$ROWS_SINGLE"
    } | bench_results
}

bench_main "$@"
