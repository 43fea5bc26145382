#!/usr/bin/env bash
# meetcache benchmark: each delivery mode over TLS and a Unix socket, as ratios to plain TCP.
#   bash bench/transport.sh
#
# A benchmark, not a test: nothing here asserts on timings. In one run, on throwaway
# servers (meetcache preloaded when BENCH_MODES has a queue mode, so that the drains run),
# one redis-server listens on TCP, TLS (a CA and a certificate made here by openssl) and a
# Unix socket; pgbench runs single-row UPDATEs of meetings with meetcache.delivery (ALTER
# DATABASE) set to each mode in turn and, within a mode, meetcache.redis_url (ALTER
# DATABASE) set to each transport in turn, BENCH_ROUNDS rounds of every mode and transport.
# After a queue mode's run the script waits for meetcache.queue to empty, and after a
# change of transport for the database's drains to leave, so that the next run's drains
# connect with the new setting. Reported per mode: TPS per transport (median) and the
# ratio of TLS and of the Unix socket to TCP (of the medians, and the median of per-round
# ratios). Each pgbench client's backend, and each drain, opens its connection, and its
# TLS session, once.
#
# Run as root: installs missing Debian packages, builds and installs the extension
# (unless MEETCACHE_SKIP_BUILD=1), then runs as the unprivileged `postgres` user.
# Environment (defaults):
#   BENCH_MODES="sync queue sync+queue"   meetcache.delivery modes measured
#   BENCH_DURATION=20 BENCH_ROUNDS=3 BENCH_WARMUP=5   seconds per run, rounds, warm-up s
#   BENCH_CLIENTS=4 BENCH_JOBS=2 BENCH_PROTOCOL=prepared   pgbench -c / -j / -M
#   BENCH_HOT=10000 BENCH_PARTICIPANTS=3 BENCH_USERS=5000  data, as in bench/run.sh
#   BENCH_QUEUE_WAIT=120  seconds to wait for meetcache.queue to empty after a run
#   BENCH_RESULTS=file  also write the results as key=value lines there
#   PGBIN, MEETCACHE_SKIP_BUILD, MEETCACHE_SKIP_APT, KEEP: as in bench/run.sh
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${SELF%/*}/lib.sh"
WORK_PREFIX=meetcache-bench-transport

bench_write_settings
TRANSPORTS="tcp tls unix"
MODES=${BENCH_MODES:-sync queue sync+queue}
QUEUE_WAIT=${BENCH_QUEUE_WAIT:-120}

# the EXIT trap's hook: stop the redis-server of the transports
transport_cleanup() { [ -z "${TR_PID:-}" ] || kill "$TR_PID" 2>/dev/null || true; }

# certificates: a CA and a server certificate for 127.0.0.1
make_certs() {
    local d=$WORK/tls ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    mkdir -p "$d"
    echo "subjectAltName=IP:127.0.0.1" >"$d/san.cnf"
    openssl req -x509 "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.crt" -days 2 -subj "/CN=bench ca" 2>/dev/null
    openssl req "${ec[@]}" -keyout "$d/srv.key" -out "$d/srv.csr" -subj "/CN=127.0.0.1" 2>/dev/null
    openssl x509 -req -in "$d/srv.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -out "$d/srv.crt" -days 2 -extfile "$d/san.cnf" 2>/dev/null
}

# url_of TRANSPORT
url_of() {
    case $1 in
        tcp)  echo "redis://127.0.0.1:$TR_PORT/0" ;;
        tls)  echo "rediss://127.0.0.1:$TR_TLS_PORT/0" ;;
        unix) echo "unix://$WORK/redis.sock?db=0" ;;
    esac
}

# use_transport TRANSPORT: for the database's new sessions, and its drains once the ones
# connected with the old setting have left (they leave after 500 ms idle)
use_transport() {
    local i
    Q "ALTER DATABASE bench SET meetcache.redis_url = '$(url_of "$1")'" >/dev/null
    [ "$(Q 'SELECT meetcache.cache_ping()')" = PONG ] || die "no PONG over $1"
    [ "$PRELOAD" = 1 ] || return 0
    for i in $(seq 1 100); do
        [ "$(stat_of drains_running)" != 0 ] || return 0
        sleep 0.05
    done
    die "a drain is still connected 5 s after the switch to $1"
}

# run_mode_transport MODE TRANSPORT LABEL SECONDS: one pgbench run (TPS, LAT), then, in a
# queue mode, until meetcache.queue is empty
run_mode_transport() {
    use_transport "$2"
    bench_pgbench "$3" -c "$CLIENTS" -j "$JOBS" -T "$4" -M "$PROTOCOL" -f "$WORK/update.sql"
    [ "$1" = sync ] || wait_queue_empty
}

stage_bench() {
    bench_enter "$1" transport_cleanup
    local t_start r t m f i pg=(); t_start=$(date +%s)
    # shellcheck disable=SC2086  # word splitting of the mode list is intended
    check_modes BENCH_MODES $MODES
    PRELOAD=0
    for m in $MODES; do [ "$m" = sync ] || PRELOAD=1; done
    [ "$PRELOAD" = 0 ] || pg=(--preload)
    bench_start_servers "${pg[@]}"
    make_certs
    TR_PORT=$(tw_free_port); TR_TLS_PORT=$(tw_free_port)
    redis-server --port "$TR_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        --unixsocket "$WORK/redis.sock" --unixsocketperm 700 \
        --tls-port "$TR_TLS_PORT" --tls-cert-file "$WORK/tls/srv.crt" --tls-key-file "$WORK/tls/srv.key" \
        --tls-ca-cert-file "$WORK/tls/ca.crt" --tls-auth-clients no \
        --logfile "$WORK/redis-transport.log" --dir "$WORK" >/dev/null &
    TR_PID=$!
    for i in $(seq 1 50); do
        [ "$(redis-cli -p "$TR_PORT" ping 2>/dev/null)" = PONG ] && break
        sleep 0.1
    done
    info "transports: redis-server pid $TR_PID, TCP 127.0.0.1:$TR_PORT, TLS 127.0.0.1:$TR_TLS_PORT, unix $WORK/redis.sock"

    say "Loading data: $NUSERS users, $HOT meetings with $NPART participants each"
    bench_load_data "$NUSERS" "$HOT" "$HOT" "$NPART" </dev/null
    Q "SELECT meetcache.attach_defaults()" >/dev/null
    [ "$PRELOAD" = 0 ] || launcher_running || die "meetcache is preloaded but its launcher is not running"
    Q "ALTER DATABASE bench SET meetcache.redis_tls_ca_file = '$WORK/tls/ca.crt'" >/dev/null
    cat >"$WORK/update.sql" <<EOSQL
\\set n random(1, $HOT)
UPDATE meetings SET title = 'bench ' || :n WHERE id = 'm' || :n;
EOSQL
    if [ "$WARMUP" -gt 0 ]; then
        for m in $MODES; do
            set_delivery "$m"
            run_mode_transport "$m" tcp "warmup-$(fname "$m")" "$WARMUP"
        done
    fi

    say "Single-row UPDATE, $CLIENTS clients, $DURATION s, $ROUNDS rounds of [$MODES] x [$TRANSPORTS]"
    declare -A TPSL RR
    for r in $(seq 1 "$ROUNDS"); do
        for m in $MODES; do
            set_delivery "$m"
            declare -A TPSR=()
            for t in $TRANSPORTS; do
                run_mode_transport "$m" "$t" "$(fname "$m")-$t-$r" "$DURATION"
                TPSR[$t]=$TPS
                TPSL[$m/$t]+="$TPS "
                printf '    round %d %-10s %-5s %8.0f tps, latency average %s ms%s\n' "$r" "$m" "$t" "$TPS" "$LAT" \
                    "$([ "$m" = sync ] || echo ", queue empty ${QWAIT_S} s later")"
            done
            for t in tls unix; do RR[$m/$t]+="$(ratio "${TPSR[$t]}" "${TPSR[tcp]}") "; done
        done
    done
    [ "$(stat_of delivery_failures)" = 0 ] || info "warning: $(stat_of delivery_failures) failed deliveries"

    declare -A MED
    for m in $MODES; do
        for t in $TRANSPORTS; do MED[$m/$t]=$(tr ' ' '\n' <<<"${TPSL[$m/$t]}" | grep . | median %.1f); done
    done
    say "Results: TPS per delivery mode and transport, as a ratio to TCP in the same mode and run"
    printf '\n  %-10s %-10s %12s %16s %22s\n' mode transport "TPS (median)" "ratio to tcp" "median per-round ratio"
    for m in $MODES; do
        for t in $TRANSPORTS; do
            if [ "$t" = tcp ]; then
                printf '  %-10s %-10s %12.0f %16s %22s\n' "$m" "$t" "${MED[$m/$t]}" 1.000 1.000
            else
                printf '  %-10s %-10s %12.0f %16s %22s\n' "$m" "$t" "${MED[$m/$t]}" \
                    "$(ratio "${MED[$m/$t]}" "${MED[$m/tcp]}")" "$(tr ' ' '\n' <<<"${RR[$m/$t]}" | grep . | median)"
            fi
        done
    done
    printf '\n  higher is better; 1.0 means the same throughput as TCP loopback in the same mode.\n'
    info "total run time $(( $(date +%s) - t_start )) s"
    {
        for m in $MODES; do
            f=$(fname "$m")
            for t in $TRANSPORTS; do echo "tps_${f}_$t=${MED[$m/$t]}"; done
            echo "ratio_${f}_tls_tcp=$(ratio "${MED[$m/tls]}" "${MED[$m/tcp]}")"
            echo "ratio_${f}_unix_tcp=$(ratio "${MED[$m/unix]}" "${MED[$m/tcp]}")"
        done
    } | bench_results
}

bench_main "$@"
