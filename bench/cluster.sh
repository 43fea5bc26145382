#!/usr/bin/env bash
# meetcache benchmark: a Redis Cluster against a single redis-server, in the same run.
#   bash bench/cluster.sh
#
# A benchmark, not a test: nothing here asserts on timings. In one run, on throwaway
# servers on 127.0.0.1 (meetcache preloaded, so that the drains run): one redis-server
# ("single") and a Redis Cluster of BENCH_CLUSTER_MASTERS masters without replicas
# ("cluster", every node named as a seed of redis-cluster://). Then:
#   1. Delivery: pgbench runs single-row UPDATEs of meetings (as bench/run.sh: a meeting
#      with participants, -M prepared, 4 clients) with meetcache.delivery (ALTER DATABASE)
#      set to each mode in turn and, within a mode, meetcache.redis_url (ALTER DATABASE)
#      set to single and to cluster in turn, BENCH_ROUNDS rounds (bench_target_rounds of
#      bench/lib.sh: after a queue mode's run it waits for meetcache.queue to empty, after
#      a change of URL for the drains to leave). Reported per mode: TPS (median) against
#      each, the ratio cluster / single, and the median and range of the per-round ratios.
#   2. Drain: in queue mode, the server's and the database's meetcache.redis_url (ALTER
#      SYSTEM, so that the launcher's breaker watches the same Redis, and ALTER DATABASE)
#      set to single and to cluster in turn, BENCH_DRAIN_REPS times each: the Redis is
#      frozen (SIGSTOP, every node of the cluster), a backlog of about BENCH_DRAIN_KEYS keys
#      built as bench/drain.sh builds it, the Redis thawed (SIGCONT), the queue watched
#      until it is empty (drain_rep of bench/lib.sh). Reported: keys/s against each (median)
#      and the ratio cluster / single.
# The cluster's cluster-node-timeout is an hour by default: the nodes are frozen together
# for the backlog's build, and with a timeout shorter than that they would mark each other
# failed when thawed (and, without replicas, stay down for twice the timeout).
#
# Run as root: installs missing Debian packages, builds and installs the extension
# (unless MEETCACHE_SKIP_BUILD=1), then runs as the unprivileged `postgres` user.
# Environment (defaults):
#   BENCH_MODES="sync queue sync+queue"   meetcache.delivery modes measured
#   BENCH_DURATION=10 BENCH_ROUNDS=3 BENCH_WARMUP=3   seconds per run, rounds, warm-up s per mode and target
#   BENCH_CLIENTS=4 BENCH_JOBS=2 BENCH_PROTOCOL=prepared   pgbench -c / -j / -M
#   BENCH_HOT=10000 BENCH_PARTICIPANTS=3 BENCH_USERS=5000 BENCH_MEETINGS=100000  data
#   BENCH_QUEUE_WAIT=120  seconds to wait for meetcache.queue to empty after a run
#   BENCH_DRAIN_REPS=2    backlog / drain repetitions per target (the median is reported)
#   BENCH_DRAIN_KEYS, BENCH_DRAIN_SINGLE, BENCH_DRAIN_BULK_ROWS, BENCH_DRAIN_POLL_MS,
#   BENCH_DRAIN_TIMEOUT   the backlog, as in bench/drain.sh
#   BENCH_CLUSTER_MASTERS=3             masters of the cluster (at least 3)
#   BENCH_CLUSTER_NODE_TIMEOUT=3600000  their cluster-node-timeout (ms)
#   BENCH_RESULTS=file  also write the results as key=value lines there
#   PGBIN, MEETCACHE_SKIP_BUILD, MEETCACHE_SKIP_APT, KEEP: as in bench/run.sh
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${SELF%/*}/lib.sh"
WORK_PREFIX=meetcache-bench-cluster

# shorter than the other benchmarks' defaults: two targets of everything
: "${BENCH_DURATION:=10}" "${BENCH_WARMUP:=3}" "${BENCH_DRAIN_REPS:=2}"
bench_write_settings
bench_drain_settings
TARGETS="single cluster"
MODES=${BENCH_MODES:-sync queue sync+queue}
QUEUE_WAIT=${BENCH_QUEUE_WAIT:-120}
MASTERS=${BENCH_CLUSTER_MASTERS:-3}
NODE_TIMEOUT=${BENCH_CLUSTER_NODE_TIMEOUT:-3600000}

# the EXIT trap's hook: thaw every Redis whatever happens (a stopped process ignores
# SHUTDOWN), stop the watcher
cluster_cleanup() {
    tw_kill_redis -CONT
    tw_kill_redis_cluster -CONT
    drain_stop_watcher
}

# url_of TARGET: its meetcache.redis_url
url_of() {
    case $1 in
        single)  echo "redis://127.0.0.1:$REDIS_PORT/0" ;;
        cluster) echo "redis-cluster://127.0.0.1:${CLUSTER_PORTS// /,127.0.0.1:}" ;;
    esac
}

# flush_of TARGET: FLUSHALL on it (every master of the cluster)
flush_of() {
    local p
    case $1 in
        single)  RCLI flushall >/dev/null ;;
        cluster) for p in $CLUSTER_PORTS; do redis-cli -h 127.0.0.1 -p "$p" flushall >/dev/null; done ;;
    esac
}

# freeze / thaw a target for drain_rep
freeze_single() { info "freezing redis-server (SIGSTOP pid $(tw_redis_pid))"; tw_kill_redis -STOP; }
thaw_single() { tw_kill_redis -CONT; }
freeze_cluster() { info "freezing the $MASTERS cluster nodes (SIGSTOP)"; tw_kill_redis_cluster -STOP; }
thaw_cluster() { tw_kill_redis_cluster -CONT; }

# use_server_url TARGET: the server's meetcache.redis_url (the launcher's: its breaker and
# retries) and the database's (the drains')
use_server_url() {
    Q "ALTER SYSTEM SET meetcache.redis_url = '$(url_of "$1")'" >/dev/null
    Q "SELECT pg_reload_conf()" >/dev/null
    use_redis_url "$(url_of "$1")" "$1"
}

stage_bench() {
    bench_enter "$1" cluster_cleanup
    local t_start rep t p i; t_start=$(date +%s)
    # shellcheck disable=SC2086  # word splitting of the mode list is intended
    check_modes BENCH_MODES $MODES
    [ "$MASTERS" -ge 3 ] || die "BENCH_CLUSTER_MASTERS must be at least 3 (redis-cli --cluster create)"
    PRELOAD=1
    bench_start_servers --writes --preload
    tw_start_redis_cluster "$MASTERS" --cluster-node-timeout "$NODE_TIMEOUT"
    info "cluster: $MASTERS masters, no replicas, cluster-node-timeout $NODE_TIMEOUT ms:"
    i=0
    for p in $CLUSTER_PORTS; do
        i=$(( i + 1 ))
        info "  node $i: 127.0.0.1:$p, pid $(cat "$WORK/cluster-$i.pid"), slots $(redis-cli -h 127.0.0.1 -p "$p" cluster nodes | awk '/myself/ { s = $9; for (k = 10; k <= NF; k++) s = s "," $k; print s }')"
    done

    drain_load_data
    launcher_running || die "meetcache is preloaded but its launcher is not running"
    for t in $TARGETS; do
        use_redis_url "$(url_of "$t")" "$t"
        info "$t: $(url_of "$t"), cache_ping $(Q 'SELECT meetcache.cache_ping()')"
    done

    # shellcheck disable=SC2086  # word splitting of the target list is intended
    bench_target_rounds $TARGETS

    say "Drain of a backlog of about $TARGET_KEYS keys, $REPS repetitions against each of [$TARGETS]"
    set_delivery queue
    for t in $TARGETS; do : >"$WORK/rate-total-$t"; : >"$WORK/rate-steady-$t"; : >"$WORK/rate-single-$t"; done
    for rep in $(seq 1 "$REPS"); do
        for t in $TARGETS; do
            say "Drain repetition $rep of $REPS: $t"
            use_server_url "$t"
            flush_of "$t"
            drain_rep "$t-$rep" "freeze_$t" "thaw_$t"
            echo "$DR_TOTAL" >>"$WORK/rate-total-$t"; echo "$DR_STEADY" >>"$WORK/rate-steady-$t"
            echo "$DR_SINGLE" >>"$WORK/rate-single-$t"
        done
    done
    [ "$(stat_of worker_failures)" = 0 ] || info "note: worker_failures = $(stat_of worker_failures) (the drains that met a frozen Redis)"

    declare -A TOT STE SIN
    for t in $TARGETS; do
        TOT[$t]=$(median %.0f <"$WORK/rate-total-$t"); STE[$t]=$(median %.0f <"$WORK/rate-steady-$t")
        SIN[$t]=$(median %.0f <"$WORK/rate-single-$t")
    done
    say "Results: drain keys/s (median of $REPS repetitions), as a ratio to single in the same run"
    printf '\n  %-52s %12s %12s %8s\n' measurement single cluster ratio
    printf '  %-52s %12s %12s %8s\n' "drain, backlog keys / (thaw to empty queue)" "${TOT[single]}" "${TOT[cluster]}" "$(ratio "${TOT[cluster]}" "${TOT[single]}")"
    printf '  %-52s %12s %12s %8s\n' "drain, from its first committed batch to empty" "${STE[single]}" "${STE[cluster]}" "$(ratio "${STE[cluster]}" "${STE[single]}")"
    printf '  %-52s %12s %12s %8s\n' "   while it drained the single-row rows (8 keys)" "${SIN[single]}" "${SIN[cluster]}" "$(ratio "${SIN[cluster]}" "${SIN[single]}")"
    printf '\n  higher is better; per repetition: %s\n' "$(for t in $TARGETS; do printf '%s %s; ' "$t" "$(xargs <"$WORK/rate-total-$t")"; done)"
    info "total run time $(( $(date +%s) - t_start )) s"
    {
        cat "$WORK/rounds.env"
        for t in $TARGETS; do
            echo "drain_keys_per_s_$t=${TOT[$t]}"; echo "drain_keys_per_s_from_first_batch_$t=${STE[$t]}"
            echo "drain_single_keys_per_s_$t=${SIN[$t]}"
        done
        echo "drain_cluster_over_single=$(ratio "${TOT[cluster]}" "${TOT[single]}")"
        echo "drain_cluster_over_single_from_first_batch=$(ratio "${STE[cluster]}" "${STE[single]}")"
    } | bench_results
}

bench_main "$@"
