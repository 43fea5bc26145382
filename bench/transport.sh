#!/usr/bin/env bash
# meetcache benchmark: sync delivery over TLS and a Unix socket, as ratios to plain TCP.
#   bash bench/transport.sh
#
# A benchmark, not a test: nothing here asserts on timings. In one run, on throwaway
# servers (meetcache not preloaded, so delivery is sync: the committing backend deletes
# the keys), one redis-server listens on TCP, TLS (a CA and a certificate made here by
# openssl) and a Unix socket; pgbench runs single-row UPDATEs of meetings with
# meetcache.redis_url set (ALTER DATABASE) to each transport in turn, BENCH_ROUNDS rounds
# of every transport. Reported: TPS per transport (median) and the ratio of TLS and of the
# Unix socket to TCP (of the medians, and the median of per-round ratios). Each pgbench
# client's backend opens its connection, and its TLS session, once.
#
# Run as root: installs missing Debian packages, builds and installs the extension
# (unless MEETCACHE_SKIP_BUILD=1), then runs as the unprivileged `postgres` user.
# Environment (defaults):
#   BENCH_DURATION=20 BENCH_ROUNDS=3 BENCH_WARMUP=5   seconds per run, rounds, warm-up s
#   BENCH_CLIENTS=4 BENCH_JOBS=2 BENCH_PROTOCOL=prepared   pgbench -c / -j / -M
#   BENCH_HOT=10000 BENCH_PARTICIPANTS=3 BENCH_USERS=5000  data, as in bench/run.sh
#   BENCH_RESULTS=file  also write the results as key=value lines there
#   PGBIN, MEETCACHE_SKIP_BUILD, MEETCACHE_SKIP_APT, KEEP: as in bench/run.sh
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${SELF%/*}/lib.sh"
WORK_PREFIX=meetcache-bench-transport

bench_write_settings
TRANSPORTS="tcp tls unix"

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

use_transport() {
    Q "ALTER DATABASE bench SET meetcache.redis_url = '$(url_of "$1")'" >/dev/null
    [ "$(Q 'SELECT meetcache.cache_ping()')" = PONG ] || die "no PONG over $1"
}

stage_bench() {
    bench_enter "$1" transport_cleanup
    local t_start r t i; t_start=$(date +%s)
    bench_start_servers
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
    Q "ALTER DATABASE bench SET meetcache.redis_tls_ca_file = '$WORK/tls/ca.crt'" >/dev/null
    cat >"$WORK/update.sql" <<EOSQL
\\set n random(1, $HOT)
UPDATE meetings SET title = 'bench ' || :n WHERE id = 'm' || :n;
EOSQL
    if [ "$WARMUP" -gt 0 ]; then
        use_transport tcp
        bench_pgbench warmup -c "$CLIENTS" -j "$JOBS" -T "$WARMUP" -M "$PROTOCOL" -f "$WORK/update.sql"
    fi

    say "Single-row UPDATE, sync delivery, $CLIENTS clients, $DURATION s, $ROUNDS rounds of [$TRANSPORTS]"
    declare -A TPSL RR
    for r in $(seq 1 "$ROUNDS"); do
        declare -A TPSR=()
        for t in $TRANSPORTS; do
            use_transport "$t"
            bench_pgbench "$t-$r" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -M "$PROTOCOL" -f "$WORK/update.sql"
            TPSR[$t]=$TPS
            TPSL[$t]+="$TPS "
            printf '    round %d %-5s %8.0f tps, latency average %s ms\n' "$r" "$t" "$TPS" "$LAT"
        done
        for t in tls unix; do RR[$t]+="$(ratio "${TPSR[$t]}" "${TPSR[tcp]}") "; done
    done
    [ "$(stat_of delivery_failures)" = 0 ] || info "warning: $(stat_of delivery_failures) failed deliveries"

    declare -A MED
    for t in $TRANSPORTS; do MED[$t]=$(tr ' ' '\n' <<<"${TPSL[$t]}" | grep . | median %.1f); done
    say "Results: TPS of sync delivery per transport, as a ratio to TCP in the same run"
    printf '\n  %-10s %12s %16s %22s\n' transport "TPS (median)" "ratio to tcp" "median per-round ratio"
    for t in $TRANSPORTS; do
        if [ "$t" = tcp ]; then
            printf '  %-10s %12.0f %16s %22s\n' "$t" "${MED[$t]}" 1.000 1.000
        else
            printf '  %-10s %12.0f %16s %22s\n' "$t" "${MED[$t]}" "$(ratio "${MED[$t]}" "${MED[tcp]}")" \
                "$(tr ' ' '\n' <<<"${RR[$t]}" | grep . | median)"
        fi
    done
    printf '\n  higher is better; 1.0 means the same throughput as TCP loopback.\n'
    info "total run time $(( $(date +%s) - t_start )) s"
    {
        for t in $TRANSPORTS; do echo "tps_$t=${MED[$t]}"; done
        echo "ratio_tls_tcp=$(ratio "${MED[tls]}" "${MED[tcp]}")"
        echo "ratio_unix_tcp=$(ratio "${MED[unix]}" "${MED[tcp]}")"
    } | bench_results
}

bench_main "$@"
