#!/usr/bin/env bash
# meetcache benchmark: commit-to-deleted latency.   bash bench/latency.sh
#
# A benchmark, not a test: nothing here asserts on timings. In one run, on throwaway
# servers (meetcache preloaded), for each delivery mode of BENCH_LAT_MODES:
#   pgbench runs single-row UPDATEs of meetings at a fixed rate (--rate, default 1,000
#   transactions/s, 4 clients, 20 s); every transaction updates a meeting no other
#   transaction of the run touches, so the key meeting:m<n> names it. pgbench logs each
#   transaction's completion time (-l: when the client got the COMMIT's reply, epoch µs);
#   redis-cli MONITOR records, with Redis's own µs timestamp, every UNLINK the server
#   executes. Latency = time of the UNLINK of meeting:m<n> - time the client saw the commit
#   (both from the same machine's clock). Reported: p50, p90, p99, p99.9, max.
# In sync modes the backend deletes the keys before it answers the COMMIT, so the
# latency is negative there: that run shows the method's floor. See bench/README.md.
#
# Run as root: installs missing Debian packages, builds and installs the extension
# (unless MEETCACHE_SKIP_BUILD=1), then runs as the unprivileged `postgres` user.
# Run as any other user: uses the extension already installed.
# PostgreSQL listens on a unix socket in a temporary directory only; redis-server on
# 127.0.0.1, on a free port chosen at run time. Both stop, and the directory is removed,
# when the script exits (also on error or Ctrl-C; KEEP=1 keeps it).
#
# Environment (defaults):
#   BENCH_LAT_MODES="queue sync+queue sync"  delivery modes, one run each
#   BENCH_LAT_RATE=1000       pgbench --rate, transactions/s (all clients together)
#   BENCH_DURATION=20         seconds of each measured run
#   BENCH_WARMUP=3            seconds of an unmeasured run at the same rate before each (0: none)
#   BENCH_CLIENTS=4 BENCH_JOBS=2  pgbench -c / -j
#   BENCH_PARTICIPANTS=3 BENCH_USERS=5000   participants per meeting, users
#   BENCH_RESULTS=file        also write the results as key=value lines there
#   PGBIN=$(pg_config --bindir)
#   MEETCACHE_SKIP_BUILD=1    as root: do not run make / make install
#   MEETCACHE_SKIP_APT=1      as root: do not install missing Debian packages
#   KEEP=1                    keep the temporary directory (logs, MONITOR output)
set -euo pipefail

# What the benchmarks share (bench/lib.sh, on top of scripts/throwaway-servers.sh): next to
# this script, in the repository and in its temporary copy alike.
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${SELF%/*}/lib.sh"
WORK_PREFIX=meetcache-bench-lat

MODES=${BENCH_LAT_MODES:-queue sync+queue sync}
RATE=${BENCH_LAT_RATE:-1000}
DURATION=${BENCH_DURATION:-20}
WARMUP=${BENCH_WARMUP:-3}
CLIENTS=${BENCH_CLIENTS:-4}
JOBS=${BENCH_JOBS:-2}
NPART=${BENCH_PARTICIPANTS:-3}
NUSERS=${BENCH_USERS:-5000}
# each client updates meetings client_id * STRIDE + 1, + 2, ... (1.5 x its expected share)
STRIDE=$(( RATE * (DURATION > WARMUP ? DURATION : WARMUP) * 3 / (2 * CLIENTS) + 1000 ))
NMEET=$(( STRIDE * CLIENTS ))
QUEUE_WAIT=60    # seconds wait_queue_empty waits for meetcache.queue to empty

# (Stage 1, as root, is bench_root_stage of bench/lib.sh: packages, make install, re-run
# as `postgres`.)

###########################################################################################
# Helpers
###########################################################################################
# the EXIT trap's hook: stop MONITOR
lat_cleanup() { [ -z "${MON_PID:-}" ] || kill "$MON_PID" 2>/dev/null || true; }

# run_rate LABEL SECONDS [pgbench options...] -> TPS LAT NTX; output in $WORK/pgbench-LABEL.out
run_rate() {
    local label=$1 secs=$2
    shift 2
    bench_pgbench "$label" -c "$CLIENTS" -j "$JOBS" -T "$secs" -R "$RATE" -M prepared \
        -D i=0 -D stride="$STRIDE" "$@" -f "$WORK/lat.sql"
}

# latencies MONITOR_FILE LOGS...: one line per transaction, "latency_ms" (or "missing")
# pgbench -l line: client_id transaction_no latency_us script_no epoch_s epoch_us [lag_us]
latencies() {
    local mon=$1
    shift
    awk -v stride="$STRIDE" '
        FNR == NR {
            # MONITOR: 1700000000.123456 [0 127.0.0.1:port] "UNLINK" "k1" "k2" ...
            if ($0 !~ /"UNLINK"/) next
            for (f = 5; f <= NF; f++) {
                k = $f; gsub(/"/, "", k)
                if (k ~ /^meeting:m[0-9]+$/) { n = substr(k, 10) + 0; if (!(n in del)) del[n] = $1 }
            }
            next
        }
        {
            n = $1 * stride + $2
            ack = $5 + $6 / 1e6
            if (n in del) printf "%.3f\n", (del[n] - ack) * 1000; else print "missing"
        }' "$mon" "$@"
}

# histogram < numbers: share of the values per latency bucket (ms)
histogram() {
    awk 'BEGIN { nb = split("0 0.5 1 1.5 2 2.5 3 5", ub, " ") }
        { for (i = 1; i <= nb && $1 >= ub[i]; i++); c[i]++; n++ }
        END { if (!n) exit
              for (i = 1; i <= nb + 1; i++) {
                  lab = (i == 1) ? "<0" : (i == nb + 1) ? ">=" ub[nb] : ub[i - 1] "-" ub[i]
                  printf "%s%s %.1f%%", (i > 1 ? " | " : ""), lab, 100 * c[i] / n } }'
}

# pct P < sorted numbers
pct() { awk -v p="$1" '{ a[NR] = $1 } END { if (NR == 0) { print "nan"; exit } i = int(p / 100 * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; printf "%.3f\n", a[i] }'; }

###########################################################################################
# Stage 2 (unprivileged)
###########################################################################################
stage_bench() {
    bench_enter "$1" lat_cleanup
    local m t_start; t_start=$(date +%s)
    # shellcheck disable=SC2086  # word splitting of the mode list is intended
    check_modes BENCH_LAT_MODES $MODES

    bench_start_servers --writes --preload

    say "Loading data: $NUSERS users, $NMEET meetings with $NPART participants each"
    bench_load_data "$NUSERS" "$NMEET" "$NMEET" "$NPART" </dev/null
    Q "SELECT meetcache.attach_defaults()" >/dev/null
    launcher_running || die "the meetcache launcher is not running"

    # pgbench keeps a client's variables from one transaction to the next: i counts them,
    # like the transaction number in the -l log, so the log tells which meeting each updated
    cat >"$WORK/lat.sql" <<'EOSQL'
\set i :i + 1
\set n :client_id * :stride + :i
UPDATE meetings SET title = 'lat ' || (:n)::text WHERE id = 'm' || (:n)::text;
EOSQL

    say "Single-row UPDATEs at --rate=$RATE, $CLIENTS clients, $DURATION s per mode [$MODES]; MONITOR on Redis"
    local f p50 p90 p99 p999 pmax pmin nneg ntx nmiss tps lag lat
    declare -A P50 P99 P90 P999 PMAX
    for m in $MODES; do
        f=$(fname "$m")
        set_delivery "$m"
        PSQL -c "VACUUM meetings" -c "CHECKPOINT" >/dev/null
        if [ "$WARMUP" -gt 0 ]; then
            run_rate "warmup-$f" "$WARMUP"
            wait_queue_empty
        fi
        RCLI flushall >/dev/null
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" monitor >"$WORK/monitor-$f.txt" 2>&1 &
        MON_PID=$!
        for _ in $(seq 1 50); do grep -q '^OK' "$WORK/monitor-$f.txt" 2>/dev/null && break; sleep 0.05; done
        rm -f "$WORK/log-$f".*
        run_rate "$f" "$DURATION" -l --log-prefix="$WORK/log-$f"
        wait_queue_empty
        sleep 0.3
        kill "$MON_PID" 2>/dev/null || true
        wait "$MON_PID" 2>/dev/null || true
        MON_PID=
        latencies "$WORK/monitor-$f.txt" "$WORK/log-$f".* >"$WORK/lat-$f.all"
        ntx=$(wc -l <"$WORK/lat-$f.all")
        nmiss=$(grep -c missing "$WORK/lat-$f.all" || true)
        grep -v missing "$WORK/lat-$f.all" | sort -g >"$WORK/lat-$f.sorted" || true
        p50=$(pct 50 <"$WORK/lat-$f.sorted"); p90=$(pct 90 <"$WORK/lat-$f.sorted"); p99=$(pct 99 <"$WORK/lat-$f.sorted")
        p999=$(pct 99.9 <"$WORK/lat-$f.sorted"); pmax=$(tail -n 1 "$WORK/lat-$f.sorted"); pmin=$(head -n 1 "$WORK/lat-$f.sorted")
        nneg=$(awk '$1 < 0' "$WORK/lat-$f.sorted" | wc -l)
        tps=$(awk -v t="$TPS" 'BEGIN { printf "%.0f", t }')
        lat=$LAT
        lag=$(awk '/^rate limit schedule lag/ { print $0; exit }' "$WORK/pgbench-$f.out" | sed 's/^rate limit schedule lag: //')
        P50[$m]=$p50; P90[$m]=$p90; P99[$m]=$p99; P999[$m]=$p999; PMAX[$m]=$pmax
        printf '    %-10s %5s tps, pgbench latency avg %s ms (schedule lag %s); %d transactions, %d without a recorded UNLINK\n' \
            "$m" "$tps" "$lat" "${lag:-n/a}" "$ntx" "$nmiss"
        printf '    %-10s commit -> UNLINK, ms: min %s  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (%d of them before the client saw the commit)\n' \
            "" "$pmin" "$p50" "$p90" "$p99" "$p999" "$pmax" "$nneg"
        printf '    %-10s distribution, ms: %s\n' "" "$(histogram <"$WORK/lat-$f.sorted")"
    done

    say "Results: time from the client seeing COMMIT's reply to Redis executing the key's UNLINK"
    printf '\n  %-12s %9s %9s %9s %9s %9s\n' "mode" "p50 ms" "p90 ms" "p99 ms" "p99.9 ms" "max ms"
    printf '  %-12s %9s %9s %9s %9s %9s\n' "------------" "---------" "---------" "---------" "---------" "---------"
    for m in $MODES; do
        printf '  %-12s %9s %9s %9s %9s %9s\n' "$m" "${P50[$m]}" "${P90[$m]}" "${P99[$m]}" "${P999[$m]}" "${PMAX[$m]}"
    done
    printf '\n  at --rate=%s, %s clients; negative: the key was gone before COMMIT returned (sync delivery).\n' "$RATE" "$CLIENTS"
    info "total run time $(( $(date +%s) - t_start )) s"
    {
        echo "rate=$RATE"
        for m in $MODES; do
            f=$(fname "$m")
            echo "lat_p50_ms_$f=${P50[$m]}"; echo "lat_p90_ms_$f=${P90[$m]}"; echo "lat_p99_ms_$f=${P99[$m]}"
            echo "lat_p999_ms_$f=${P999[$m]}"; echo "lat_max_ms_$f=${PMAX[$m]}"
        done
    } | bench_results
}

bench_main "$@"
