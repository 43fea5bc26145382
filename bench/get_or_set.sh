#!/usr/bin/env bash
# meetcache benchmark: what does a cache_get_or_set hit cost?   bash bench/get_or_set.sh
#
# A benchmark, not a test: nothing here asserts on timings. In one run, on throwaway
# servers, pgbench (1 client, -M prepared) measures four statements:
#   (i)   SELECT 1                                                  (the floor)
#   (ii)  SELECT meetcache.cache_get_or_set('bench:hit', 'SELECT 1', 600)   (always a hit)
#   (iii) the dashboard stats query run directly over 100k meetings (one host's share)
#   (iv)  the same query through cache_get_or_set (always a hit)
# and redis-benchmark measures a raw Redis GET round trip (1 client). It reports
# (ii)-(i) in µs next to that round trip, and (iii)/(iv). See bench/get_or_set.md.
#
# Run as root: installs missing Debian packages, builds and installs the extension
# (unless MEETCACHE_SKIP_BUILD=1), then runs as the unprivileged `postgres` user.
# Run as any other user: uses the extension already installed.
# PostgreSQL listens on a unix socket in a temporary directory only; redis-server on
# 127.0.0.1, on a free port chosen at run time. Both stop, and the directory is removed,
# when the script exits (also on error or Ctrl-C; KEEP=1 keeps it).
#
# Environment (defaults):
#   BENCH_DURATION=10      seconds of each measured pgbench run
#   BENCH_ROUNDS=2         rounds; each round runs (i), (ii), (iii), (iv) in turn
#   BENCH_WARMUP=2         seconds of an unmeasured run of each statement first (0 = none)
#   BENCH_MEETINGS=100000  meetings
#   BENCH_HOSTS=10         hosts they are spread over (host u1 gets MEETINGS/HOSTS)
#   BENCH_REDIS_N=20000    requests of redis-benchmark
#   BENCH_PROTOCOL=prepared  pgbench -M
#   BENCH_RESULTS=file     also write the results as key=value lines there
#   PGBIN=$(pg_config --bindir)
#   MEETCACHE_SKIP_BUILD=1 as root: do not run make / make install
#   MEETCACHE_SKIP_APT=1   as root: do not install missing Debian packages
#   KEEP=1                 keep the temporary directory (logs, raw pgbench output)
set -euo pipefail

# What the benchmarks share (bench/lib.sh, on top of scripts/throwaway-servers.sh): next to
# this script, in the repository and in its temporary copy alike.
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${SELF%/*}/lib.sh"
WORK_PREFIX=meetcache-bench-gos

DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-2}
WARMUP=${BENCH_WARMUP:-2}
NMEET=${BENCH_MEETINGS:-100000}
NHOSTS=${BENCH_HOSTS:-10}
REDIS_N=${BENCH_REDIS_N:-20000}
PROTOCOL=${BENCH_PROTOCOL:-prepared}

# (Stage 1, as root, is bench_root_stage of bench/lib.sh: packages, make install, re-run
# as `postgres`.)

###########################################################################################
# Measurement helpers
###########################################################################################
# "command calls" per line, from INFO commandstats (commands run by a script count too)
cmdstats() { RCLI info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ { sub("cmdstat_", "", $1); print $1, $3 }'; }
# cmd_mix BEFORE_FILE AFTER_FILE NTX -> "evalsha 1.00 get 1.00" (per transaction; INFO itself left out)
cmd_mix() {
    awk -v n="$3" 'NR == FNR { a[$1] = $2; next }
        { d = $2 - a[$1]; if ($1 == "info") d -= 1; if (n > 0 && d / n >= 0.005) { printf "%s%s %.2f", sep, $1, d / n; sep = ", " } }
        END { if (sep == "") printf "none" }' "$1" "$2"
}
mean4()  { mean %.4f; }
# median of the 3rd column (latency, µs) of pgbench -l logs given as arguments
p50_us() { cat "$@" | awk '{ print $3 }' | median %.1f; }

# run_one NAME SECONDS LOG(0|1) -> sets LAT (ms, mean) TPS NTX; log files $WORK/log-NAME.*
run_one() {
    local name=$1 secs=$2 log=$3 extra=()
    [ "$log" = 1 ] && extra=(-l --log-prefix="$WORK/log-$name")
    bench_pgbench "$name" -c 1 -j 1 -T "$secs" -M "$PROTOCOL" -D h=u1 -D hitkey=bench:hit -D dashkey=user:u1:meetings:count "${extra[@]}" \
        -f "$WORK/$name.sql"
}

###########################################################################################
# Stage 2 (unprivileged)
###########################################################################################
stage_bench() {
    bench_enter "$1"

    bench_start_servers --preload "autovacuum = off"

    # the reference schema has an index on meetings.host_id; the hosts are the users, each
    # host's meetings take the statuses in turn (status from i / hosts); no participants
    say "Loading data: $NMEET meetings over $NHOSTS hosts"
    bench_load_data "$NHOSTS" "$NMEET" 0 0 "(i / $NHOSTS)" </dev/null
    info "extension meetcache $(ext_version); lease_check = $(Q "SELECT coalesce(current_setting('meetcache.lease_check', true), '(no such setting)')")"

    # pgbench replaces every :name in a script, even inside quotes, so the keys (which
    # contain colons) are pgbench variables too (-D in run_one)
    local dash="SELECT count(*) total, count(*) FILTER (WHERE status='LIVE') live, count(*) FILTER (WHERE status='SCHEDULED') scheduled, count(*) FILTER (WHERE status='ENDED') ended FROM meetings WHERE host_id"
    local dashq="\$q\$$dash = \$1\$q\$"
    echo 'SELECT 1;' >"$WORK/select1.sql"
    echo "SELECT meetcache.cache_get_or_set(:hitkey, 'SELECT 1', 600);" >"$WORK/hit.sql"
    echo "$dash = :h;" >"$WORK/direct.sql"
    echo "SELECT meetcache.cache_get_or_set(:dashkey, $dashq, NULL, :h);" >"$WORK/dashhit.sql"

    local rows plan direct cached
    rows=$(Q "SELECT count(*) FROM meetings WHERE host_id = 'u1'")
    plan=$(Q "EXPLAIN (COSTS OFF) $dash = 'u1'" | tr '\n' ' ' | sed 's/  */ /g')
    direct=$(Q "SELECT row_to_json(t) FROM ($dash = 'u1') t")
    cached=$(Q "SELECT meetcache.cache_get_or_set('user:u1:meetings:count', $dashq, NULL, 'u1')")
    info "host u1 has $rows meetings; plan of (iii): $plan"
    info "(iii) returns $direct"
    info "(iv)  returns $cached; Redis holds $(RCLI get user:u1:meetings:count) (TTL $(RCLI ttl user:u1:meetings:count) s)"
    Q "SELECT meetcache.cache_get_or_set('bench:hit', 'SELECT 1', 600)" >/dev/null

    local names=(select1 hit direct dashhit) n r m0
    if [ "$WARMUP" -gt 0 ]; then
        say "Warm-up: $WARMUP s of each statement (not measured)"
        for n in "${names[@]}"; do run_one "$n" "$WARMUP" 0; done
    fi
    say "Measuring: $ROUNDS rounds x 4 statements x $DURATION s, pgbench 1 client, -M $PROTOCOL"
    for n in "${names[@]}"; do : >"$WORK/lat-$n"; done
    for r in $(seq 1 "$ROUNDS"); do
        for n in "${names[@]}"; do
            # keep the cached entries alive (600 s / 300 s TTLs): re-prime before each run
            Q "SELECT meetcache.cache_get_or_set('bench:hit', 'SELECT 1', 600), meetcache.cache_get_or_set('user:u1:meetings:count', $dashq, NULL, 'u1')" >/dev/null
            m0=$(stat_of cache_misses); cmdstats >"$WORK/cs0"
            rm -f "$WORK/log-$n".*
            run_one "$n" "$DURATION" 1
            cmdstats >"$WORK/cs1"
            cmd_mix "$WORK/cs0" "$WORK/cs1" "$NTX" >"$WORK/mix-$n"
            mkdir -p "$WORK/logs-$n-$r"; mv "$WORK/log-$n".* "$WORK/logs-$n-$r/"
            echo "$LAT" >>"$WORK/lat-$n"
            printf '    round %d %-8s %9.1f tps  mean %7.3f ms  p50 %7.1f us  %s misses; Redis commands/tx: %s\n' \
                "$r" "$n" "$TPS" "$LAT" "$(p50_us "$WORK/logs-$n-$r"/*)" "$(( $(stat_of cache_misses) - m0 ))" "$(cat "$WORK/mix-$n")"
        done
    done

    say "Redis round trip: redis-benchmark -c 1 -n $REDIS_N -t get (same machine, same run)"
    RCLI set key:__rand_int__ x >/dev/null
    local csv rb_rps rb_avg rb_p50
    csv=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 1 -n "$REDIS_N" -t get --csv 2>/dev/null | tr -d '"\r' | grep '^GET,' || true)
    [ -n "$csv" ] || die "redis-benchmark gave no GET line"
    rb_rps=$(echo "$csv" | cut -d, -f2); rb_avg=$(echo "$csv" | cut -d, -f3); rb_p50=$(echo "$csv" | cut -d, -f5)
    info "GET: $rb_rps requests/s; latency avg $rb_avg ms, p50 $rb_p50 ms"

    local L1 L2 L3 L4 P1 P2 P3 P4 HIT_US HIT_P50_US RTT_P50_US RTT_AVG_US RTT_RPS_US DASH_RATIO DASH_RATIO_P50
    L1=$(mean4 <"$WORK/lat-select1"); L2=$(mean4 <"$WORK/lat-hit"); L3=$(mean4 <"$WORK/lat-direct"); L4=$(mean4 <"$WORK/lat-dashhit")
    P1=$(p50_us "$WORK"/logs-select1-*/*); P2=$(p50_us "$WORK"/logs-hit-*/*)
    P3=$(p50_us "$WORK"/logs-direct-*/*); P4=$(p50_us "$WORK"/logs-dashhit-*/*)
    HIT_US=$(awk -v a="$L2" -v b="$L1" 'BEGIN { printf "%.1f", (a - b) * 1000 }')
    HIT_P50_US=$(awk -v a="$P2" -v b="$P1" 'BEGIN { printf "%.1f", a - b }')
    RTT_P50_US=$(awk -v a="$rb_p50" 'BEGIN { printf "%.1f", a * 1000 }')
    RTT_AVG_US=$(awk -v a="$rb_avg" 'BEGIN { printf "%.1f", a * 1000 }')
    RTT_RPS_US=$(awk -v a="$rb_rps" 'BEGIN { if (a > 0) printf "%.1f", 1e6 / a; else print "nan" }')
    DASH_RATIO=$(awk -v a="$L3" -v b="$L4" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "nan" }')
    DASH_RATIO_P50=$(awk -v a="$P3" -v b="$P4" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "nan" }')

    say "Results (pgbench, 1 client, -M $PROTOCOL; mean of $ROUNDS x $DURATION s runs, p50 over all their transactions)"
    printf '\n  %-62s %10s %10s  %s\n' "statement" "mean ms" "p50 us" "Redis commands/tx (last round)"
    printf '  %-62s %10s %10s  %s\n' "--------------------------------------------------------------" "----------" "----------" "------------------------------"
    printf '  %-62s %10.4f %10.1f  %s\n' "(i)   SELECT 1" "$L1" "$P1" "$(cat "$WORK/mix-select1")"
    printf '  %-62s %10.4f %10.1f  %s\n' "(ii)  cache_get_or_set('bench:hit', 'SELECT 1', 600), hit" "$L2" "$P2" "$(cat "$WORK/mix-hit")"
    printf '  %-62s %10.4f %10.1f  %s\n' "(iii) dashboard stats query, direct ($rows of $NMEET meetings)" "$L3" "$P3" "$(cat "$WORK/mix-direct")"
    printf '  %-62s %10.4f %10.1f  %s\n' "(iv)  dashboard stats through cache_get_or_set, hit" "$L4" "$P4" "$(cat "$WORK/mix-dashhit")"
    printf '\n'
    printf '  hit cost, (ii) - (i):                 %8s us (mean)   %8s us (p50)\n' "$HIT_US" "$HIT_P50_US"
    printf '  raw Redis GET round trip, 1 client:   %8s us (p50)    %8s us (avg)   %s us (1/rps)\n' "$RTT_P50_US" "$RTT_AVG_US" "$RTT_RPS_US"
    printf '  dashboard, direct / hit:              %8s x  (mean)   %8s x  (p50)\n' "$DASH_RATIO" "$DASH_RATIO_P50"
    {
        echo "select1_ms=$L1"; echo "hit_ms=$L2"; echo "direct_ms=$L3"; echo "dashhit_ms=$L4"
        echo "select1_p50_us=$P1"; echo "hit_p50_us=$P2"; echo "direct_p50_us=$P3"; echo "dashhit_p50_us=$P4"
        echo "hit_minus_select1_us=$HIT_US"; echo "hit_minus_select1_p50_us=$HIT_P50_US"
        echo "redis_get_p50_us=$RTT_P50_US"; echo "redis_get_avg_us=$RTT_AVG_US"; echo "redis_get_rps=$rb_rps"
        echo "dashboard_direct_over_hit=$DASH_RATIO"; echo "dashboard_direct_over_hit_p50=$DASH_RATIO_P50"
    } | bench_results
}

bench_main "$@"
