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
# ratio of TLS and of the Unix socket to TCP (of the medians, and the median and range of
# the per-round ratios; bench_target_rounds of bench/lib.sh). Each pgbench client's backend, and each drain, opens its connection, and its
# TLS session, once.
#
# Run as root: installs missing Debian packages, builds and installs the extension
# (unless MEETCACHE_SKIP_BUILD=1), then runs as the unprivileged `postgres` user.
# Environment (defaults):
#   BENCH_MODES="sync queue sync+queue"   meetcache.delivery modes measured
#   BENCH_DURATION=20 BENCH_ROUNDS=3 BENCH_WARMUP=5   seconds per run, rounds, warm-up s per mode and transport
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
transport_cleanup() { tw_kill_pidfile "$WORK/transport.pid"; }

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

stage_bench() {
    bench_enter "$1" transport_cleanup
    local t_start pg=(); t_start=$(date +%s)
    # shellcheck disable=SC2086  # word splitting of the mode list is intended
    check_modes BENCH_MODES $MODES
    # shellcheck disable=SC2086
    bench_preload_for $MODES
    [ "$PRELOAD" = 0 ] || pg=(--preload)
    bench_start_servers "${pg[@]}"
    make_certs
    TR_TLS_PORT=$(tw_free_port)
    tw_launch_redis transport --unixsocket "$WORK/redis.sock" --unixsocketperm 700 \
        --tls-port "$TR_TLS_PORT" --tls-cert-file "$WORK/tls/srv.crt" --tls-key-file "$WORK/tls/srv.key" \
        --tls-ca-cert-file "$WORK/tls/ca.crt" --tls-auth-clients no \
        || { cat "$WORK/transport.log" >&2; die "could not start the transports' redis-server"; }
    TR_PORT=$TW_PORT
    TR_PID=$(cat "$WORK/transport.pid")
    info "transports: redis-server pid $TR_PID, TCP 127.0.0.1:$TR_PORT, TLS 127.0.0.1:$TR_TLS_PORT, unix $WORK/redis.sock"

    say "Loading data: $NUSERS users, $HOT meetings with $NPART participants each"
    bench_load_data "$NUSERS" "$HOT" "$HOT" "$NPART" </dev/null
    Q "SELECT meetcache.attach_defaults()" >/dev/null
    [ "$PRELOAD" = 0 ] || launcher_running || die "meetcache is preloaded but its launcher is not running"
    Q "ALTER DATABASE bench SET meetcache.redis_tls_ca_file = '$WORK/tls/ca.crt'" >/dev/null
    bench_update_sql
    # shellcheck disable=SC2086  # word splitting of the transport list is intended
    bench_target_rounds $TRANSPORTS
    info "total run time $(( $(date +%s) - t_start )) s"
    bench_results <"$WORK/rounds.env"
}

bench_main "$@"
