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

TARGET_KEYS=${BENCH_DRAIN_KEYS:-1000000}
NSINGLE=${BENCH_DRAIN_SINGLE:-60000}
BULK_ROWS=${BENCH_DRAIN_BULK_ROWS:-10000}
POLL_MS=${BENCH_DRAIN_POLL_MS:-10}
REPS=${BENCH_DRAIN_REPS:-3}
TIMEOUT=${BENCH_DRAIN_TIMEOUT:-300}
RAW_N=${BENCH_RAW_N:-1000000}
CLIENTS=${BENCH_CLIENTS:-4}
JOBS=${BENCH_JOBS:-2}
HOT=${BENCH_HOT:-10000}
NPART=${BENCH_PARTICIPANTS:-3}
NUSERS=${BENCH_USERS:-5000}
NMEET=${BENCH_MEETINGS:-100000}

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
    [ -z "${POLLER_PID:-}" ] || kill "$POLLER_PID" 2>/dev/null || true
}

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
    [ "$HOT" -le "$NMEET" ] || die "BENCH_HOT ($HOT) must not exceed BENCH_MEETINGS ($NMEET)"
    local t_start; t_start=$(date +%s)

    bench_start_servers --writes --preload

    say "Loading data: $NUSERS users, $NMEET meetings ($HOT with $NPART participants each)"
    bench_load_data "$NUSERS" "$NMEET" "$HOT" "$NPART" <<'EOSQL'
-- meetings' number, for the bulk UPDATEs' ranges
ALTER TABLE meetings ADD COLUMN n int;
UPDATE meetings SET n = substr(id, 2)::int;
CREATE INDEX ON meetings (n);
EOSQL
    set_delivery queue
    PSQL >/dev/null <<'EOSQL'
SELECT meetcache.attach_defaults();
-- the watcher: polls the oldest queue id until the queue is empty, one transaction per
-- poll (no snapshot held), and keeps its samples in memory until the end
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
    launcher_running || die "the meetcache launcher is not running"
    info "extension meetcache $(ext_version), triggers attached, delivery = $(Q "SHOW meetcache.delivery"), drain_batch = $(Q "SHOW meetcache.drain_batch"), max_keys = $(Q "SHOW meetcache.max_keys")"

    cat >"$WORK/update.sql" <<EOSQL
\\set n random(1, $HOT)
UPDATE meetings SET title = 'drain ' || (:client_id)::text || '-' || (:n)::text WHERE id = 'm' || (:n)::text;
EOSQL
    local per_client=$(( (NSINGLE + CLIENTS - 1) / CLIENTS ))
    local args200=""
    for _ in $(seq 1 200); do args200+=" key:__rand_int__"; done

    : >"$WORK/rate-total"; : >"$WORK/rate-steady"; : >"$WORK/raw1"; : >"$WORK/raw200"
    : >"$WORK/rate-single"; : >"$WORK/rows-single"
    local rep lo=1 last_single t_singles single_keys single_rows kps_single rps_single rows keys pats k0 k1 t_cont t_first t_empty first_done kps_total kps_steady delay sent0 sent1 rows0 rows1 f0 f1 cmd0 cmd1
    for rep in $(seq 1 "$REPS"); do
        say "Repetition $rep of $REPS"
        Q "TRUNCATE drain_poll" >/dev/null
        PSQL -c "VACUUM meetings" -c "VACUUM meetcache.queue" -c "CHECKPOINT" >/dev/null
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

        info "freezing redis-server (SIGSTOP pid $(tw_redis_pid))"
        kill -STOP "$(tw_redis_pid)"
        # single-row transactions first (8 keys each), then bulk ones up to the target
        bench_pgbench "backlog-$rep" -c "$CLIENTS" -j "$JOBS" -t "$per_client" -M prepared -f "$WORK/update.sql"
        info "single-row UPDATEs: $(( per_client * CLIENTS )) transactions at $(awk -v t="$TPS" 'BEGIN { printf "%.0f", t }') tps (Redis frozen: commits do not touch it)"
        keys=$(Q "SELECT coalesce(sum(cardinality(keys)), 0) FROM meetcache.queue")
        last_single=$(Q "SELECT coalesce(max(id), 0) FROM meetcache.queue")
        local nbulk=0
        while [ "$keys" -lt "$TARGET_KEYS" ]; do
            [ "$lo" -le "$NMEET" ] || lo=1
            Q "UPDATE meetings SET title = title || 'y' WHERE n BETWEEN $lo AND $(( lo + BULK_ROWS - 1 ))" >/dev/null
            lo=$(( lo + BULK_ROWS )); nbulk=$(( nbulk + 1 ))
            keys=$(Q "SELECT coalesce(sum(cardinality(keys)), 0) FROM meetcache.queue")
        done
        info "bulk UPDATEs: $nbulk transactions of $BULK_ROWS meetings"

        # let the failed drain give up and the breaker open, so each repetition starts alike
        local w=0 st
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
        PSQL -c "CALL drain_watch($POLL_MS, $TIMEOUT)" >"$WORK/watch-$rep.out" 2>&1 &
        POLLER_PID=$!
        sleep 0.3
        t_cont=$(now_s)
        kill -CONT "$(tw_redis_pid)"
        info "thawed redis-server (SIGCONT) at $t_cont; waiting for an empty queue"
        wait "$POLLER_PID" || { cat "$WORK/watch-$rep.out" >&2; die "the watcher failed"; }
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
        kps_total=$(awk -v k="$keys" -v a="$t_empty" -v b="$t_cont" 'BEGIN { printf "%.0f", k / (a - b) }')
        if awk -v a="$t_empty" -v b="$t_first" 'BEGIN { exit !(a > b) }'; then
            kps_steady=$(awk -v k="$keys" -v d="$first_done" -v a="$t_empty" -v b="$t_first" 'BEGIN { printf "%.0f", (k - d) / (a - b) }')
        else
            kps_steady=nan
        fi
        delay=$(awk -v a="$t_first" -v b="$t_cont" 'BEGIN { printf "%.3f", a - b }')
        # the single-row rows come first: their rate, from the samples taken while the
        # oldest queue row was still one of them (the first one with progress to the last)
        IFS='|' read -r t_singles single_keys single_rows <<<"$(Q "
            WITH s AS (SELECT t, min_id FROM drain_poll WHERE t > $t_cont AND min_id > $k0 AND min_id <= $last_single ORDER BY t DESC LIMIT 1)
            SELECT (SELECT t FROM s), (SELECT sum(nkeys) FROM backlog WHERE id < (SELECT min_id FROM s)),
                   (SELECT count(*) FROM backlog WHERE id < (SELECT min_id FROM s))")"
        kps_single=$(awk -v k="$single_keys" -v d="$first_done" -v a="$t_singles" -v b="$t_first" 'BEGIN { if (a > b) printf "%.0f", (k - d) / (a - b); else print "nan" }')
        rps_single=$(awk -v r="$single_rows" -v k="$single_keys" -v d="$first_done" -v a="$t_singles" -v b="$t_first" 'BEGIN { if (a > b && k > 0) printf "%.0f", r * (1 - d / k) / (a - b); else print "nan" }')
        echo "$kps_total" >>"$WORK/rate-total"; echo "$kps_steady" >>"$WORK/rate-steady"
        echo "$kps_single" >>"$WORK/rate-single"; echo "$rps_single" >>"$WORK/rows-single";
        info "empty after $(awk -v a="$t_empty" -v b="$t_cont" 'BEGIN { printf "%.3f", a - b }') s ($k1 polls); first batch committed after $delay s ($first_done keys)"
        info "queue_keys_sent +$(( sent1 - sent0 )) (backlog: $keys), queue_rows_done +$(( rows1 - rows0 )) (backlog: $rows), Redis commands +$(( cmd1 - cmd0 )), worker_failures +$(( f1 - f0 ))"
        info "=> $kps_total keys/s from SIGCONT to empty; $kps_steady keys/s from the first committed batch on"
        info "   while it drained single-row rows (8 keys each): $kps_single keys/s = $rps_single rows/s"
        Q "SELECT 'progress: ' || string_agg(format('%s%% at %s s', pct, to_char(dt, 'FM990.000')), ', ' ORDER BY pct)
           FROM (SELECT pct, (SELECT min(t) FROM drain_poll p WHERE p.t > $t_cont AND (p.min_id IS NULL OR
                   (SELECT coalesce(sum(nkeys), 0) FROM backlog b WHERE b.id < p.min_id) >= pct / 100.0 * $keys)) - $t_cont AS dt
                 FROM unnest(ARRAY[10, 25, 50, 75, 90, 100]) pct) x" | sed 's/^/    /'
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
