# shellcheck shell=bash
# scripts/throwaway-servers.sh: the shell code that demo/run-demo.sh and the benchmarks
# (bench/*.sh, through bench/lib.sh, which sources this file and adds what only they share)
# share; scripts/with-redis.sh and test/package.sh use its stage 2 functions. Sourced,
# never run: it only defines functions (tw_*, RCLI, and say/info/die);
# sourcing it sets no variable, runs no command and installs no trap.
#
# The demo and the benchmarks work in two stages:
#   1. As root: install the missing Debian packages (apt-get), make && make install the
#      extension, create the user postgres, copy the script, this file and
#      test/fixtures/meet_snake.sql into a fresh directory ROOT_WORK owned by postgres,
#      and re-run the script from there as postgres (runuser) with a stage argument.
#   2. Unprivileged, in a work directory WORK (ROOT_WORK, or a new mktemp -d when not
#      started as root): start a throwaway redis-server on a free 127.0.0.1 port and a
#      throwaway PostgreSQL 15 (initdb in WORK/pgdata, unix socket in WORK only), do the
#      script's own work, and stop both from the EXIT trap.
#
# A script (bench/lib.sh likewise) sources this file relative to its own location: the copy
# next to it (stage 2 re-run from ROOT_WORK) if there is one, else the one in the repository:
#   SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
#   if [ -f "${SELF%/*}/throwaway-servers.sh" ]; then . "${SELF%/*}/throwaway-servers.sh"
#   else . "${SELF%/*}/../scripts/throwaway-servers.sh"; fi
#
# The caller sets PGBIN (PostgreSQL 15 bin directory), or leaves it empty and calls tw_pgbin
# (once the packages are installed) for the bindir of PG_CONFIG (default: pg_config). Progress and errors go through
# say, info (progress lines) and die (message to stderr, exit 1): this file defines plain
# ones (those of the benchmarks); a script redefines them after sourcing it for its own
# output (the demo does, in colour).
#
# Stage 1 (root):
#   tw_main STAGE_ARG ROOT_FN USER_FN "$@"   entry point: "$@" = STAGE_ARG DIR (the re-run)
#                               calls USER_FN DIR; as root ROOT_FN; else USER_FN ""
#   tw_repo_dir SCRIPT          prints the repository a script (demo/x.sh, bench/x.sh) is in
#   tw_apt_missing ANNOUNCE TEXT PKG...
#                               installs (apt-get) those PKGs not installed, and make and gcc
#                               if missing; runs `ANNOUNCE "TEXT <missing>"` first
#   tw_pgbin                    PGBIN, if empty, from `${PG_CONFIG:-pg_config} --bindir`
#   tw_make_install REPO        say ...; make && make install in REPO (PG_CONFIG from PGBIN)
#   tw_ensure_postgres_user [CMD...]  creates the system user postgres if absent (runs CMD,
#                               e.g. a say, first)
#   tw_root_workdir SCRIPT PREFIX [FILE...]
#                               ROOT_WORK=$(mktemp -d /tmp/PREFIX.XXXXXX), removed by an
#                               EXIT trap; copies SCRIPT (as ROOT_SCRIPT), this file, the
#                               fixture and the FILEs (e.g. bench/lib.sh) there, chown
#                               postgres, cd there
#   tw_env_matching REGEX       TW_ENV=(NAME=value ...) of the shell variables matching REGEX
#   tw_run_as_postgres STAGE_ARG [NAME=value...]
#                               runs ROOT_SCRIPT STAGE_ARG ROOT_WORK as postgres with that
#                               environment; returns its status
#   tw_root_keep                KEEP=1: drops the EXIT trap (ROOT_WORK stays), succeeds;
#                               else fails
#   (the benchmarks' whole root stage: bench_root_stage in bench/lib.sh)
# Stage 2 (unprivileged):
#   tw_enter_work DIR PREFIX CLEANUP_FN
#                               WORK=DIR (UNDER_ROOT=1) or a new mktemp -d ${TMPDIR:-/tmp}/PREFIX.XXXXXX;
#                               copies the fixture there if missing; traps CLEANUP_FN on
#                               EXIT, exit 130 / 143 on INT / TERM; cd WORK
#   tw_extension_installed      true if meetcache is installed for $PGBIN/pg_config
#   tw_free_port                prints a free TCP port of 127.0.0.1 (20000-59999)
#   RCLI ARGS...                redis-cli to the throwaway redis-server
#   tw_launch_redis NAME [ARG...]  a redis-server on a free port (WORK/NAME.pid, NAME.log,
#                               plus ARGs), answering PING; sets TW_PORT; fails after 5 ports
#   tw_start_redis [--log-on-failure]   tw_launch_redis redis; sets REDIS_PORT;
#                               --log-on-failure: print redis.log to stderr before dying
#                               when it cannot start
#   tw_redis_pid                prints the redis-server's pid (WORK/redis.pid); fails if none
#   tw_kill_pidfile FILE [-SIGNAL]  kill [-SIGNAL] the pid in FILE, if any; never fails
#   tw_kill_redis [-SIGNAL]     the same for WORK/redis.pid
#   tw_start_redis_cluster N [ARG...]  a Redis Cluster of N masters, no replicas, on free
#                               ports of 127.0.0.1 (nodes WORK/cluster-<i>.*), waited for
#                               until cluster_state:ok; sets CLUSTER_PORTS ("p1 p2 ...")
#   tw_kill_redis_cluster [-SIGNAL]  kill [-SIGNAL] every cluster node; never fails
#   tw_init_pg                  sets PGPORT; initdb WORK/pgdata, appends listen_addresses,
#                               unix_socket_directories and port to its postgresql.conf
#                               (the caller appends its own settings after that)
#   tw_start_pg                 pg_ctl start; PG_STARTED=1; exports PGHOST PGPORT PGUSER
#   tw_stop_servers RC HEADER   stops PostgreSQL, redis-server and the cluster's nodes; if
#                               RC != 0, prints HEADER and the last 30 lines of the
#                               PostgreSQL log to stderr
#   (the benchmarks' EXIT trap: bench_cleanup in bench/lib.sh)

say()  { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

###########################################################################################
# Stage 1 (root)
###########################################################################################
tw_main() {
    local stage_arg=$1 root_fn=$2 user_fn=$3
    shift 3
    if [ "${1:-}" = "$stage_arg" ]; then
        "$user_fn" "${2:-}"
    elif [ "$(id -u)" = 0 ]; then
        "$root_fn"
    else
        "$user_fn" ""
    fi
}

tw_repo_dir() { (cd "$(dirname "$1")/.." && pwd); }

tw_pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

tw_apt_missing() {
    local announce=$1 text=$2 need=() p
    shift 2
    for p in "$@"; do
        tw_pkg_installed "$p" || need+=("$p")
    done
    command -v make >/dev/null || need+=(make)
    command -v gcc  >/dev/null || need+=(gcc)
    if [ ${#need[@]} -gt 0 ]; then
        "$announce" "$text ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

# tw_apt_build_deps ANNOUNCE TEXT [PACKAGE...]: tw_apt_missing for what building the
# extension (hiredis, OpenSSL, c-ares) and running its servers needs, plus PACKAGEs
tw_apt_build_deps() {
    local announce=$1 text=$2
    shift 2
    tw_apt_missing "$announce" "$text" postgresql-15 postgresql-server-dev-15 libhiredis-dev \
        libssl-dev libc-ares-dev redis-server "$@"
}

tw_pgbin() {
    [ -n "${PGBIN:-}" ] && return 0
    PGBIN=$("${PG_CONFIG:-pg_config}" --bindir 2>/dev/null) && [ -n "$PGBIN" ] ||
        die "${PG_CONFIG:-pg_config} not found: install postgresql-server-dev-15, or set PG_CONFIG or PGBIN"
}

tw_make_install() {
    say "Building and installing meetcache (make && make install in $1)"
    make -C "$1" -s PG_CONFIG="$PGBIN/pg_config" >/dev/null
    make -C "$1" -s PG_CONFIG="$PGBIN/pg_config" install >/dev/null
}

tw_ensure_postgres_user() {
    if ! id postgres >/dev/null 2>&1; then
        if [ $# -gt 0 ]; then "$@"; fi
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

# Copy what the unprivileged stage needs into a directory it owns (the repo may not be
# readable by postgres, e.g. under /root).
tw_root_workdir() {
    local script=$1 repo f
    repo=$(tw_repo_dir "$script")
    ROOT_WORK=$(mktemp -d "/tmp/$2.XXXXXX")
    trap 'cd /; rm -rf "$ROOT_WORK"' EXIT
    shift 2
    ROOT_SCRIPT=$ROOT_WORK/$(basename "$script")
    install -m 0755 "$script" "$ROOT_SCRIPT"
    install -m 0644 "${BASH_SOURCE[0]}" "$ROOT_WORK/throwaway-servers.sh"
    install -m 0644 "$repo/test/fixtures/meet_snake.sql" "$ROOT_WORK/meet_snake.sql"
    for f in "$@"; do install -m 0644 "$f" "$ROOT_WORK/$(basename "$f")"; done
    chown -R postgres: "$ROOT_WORK"
    cd "$ROOT_WORK"
}

tw_env_matching() {
    local v
    TW_ENV=()
    for v in $(compgen -v | grep -E "$1"); do TW_ENV+=("$v=${!v}"); done
}

tw_run_as_postgres() {
    local stage_arg=$1
    shift
    runuser -u postgres -- env "$@" bash "$ROOT_SCRIPT" "$stage_arg" "$ROOT_WORK"
}

tw_root_keep() {
    [ "${KEEP:-0}" = 1 ] || return 1
    trap - EXIT
}

###########################################################################################
# Stage 2 (unprivileged): the throwaway servers
###########################################################################################
tw_enter_work() {
    WORK=$1
    # shellcheck disable=SC2034  # UNDER_ROOT: read by the benchmarks (bench/lib.sh)
    if [ -n "$WORK" ]; then UNDER_ROOT=1; else WORK=$(mktemp -d "${TMPDIR:-/tmp}/$2.XXXXXX"); fi
    [ -f "$WORK/meet_snake.sql" ] ||
        cp "$(dirname "${BASH_SOURCE[0]}")/../test/fixtures/meet_snake.sql" "$WORK/meet_snake.sql"
    # shellcheck disable=SC2064  # the handler name is expanded now, on purpose
    trap "$3" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    cd "$WORK"
}

tw_extension_installed() { [ -f "$("$PGBIN/pg_config" --sharedir)/extension/meetcache.control" ]; }

tw_port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
tw_free_port() {
    local p i
    for i in $(seq 1 500); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
        tw_port_in_use "$p" || { echo "$p"; return 0; }
    done
    return 1
}

RCLI() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# tw_launch_redis NAME [ARG...]: a daemonized redis-server on a free 127.0.0.1 port, no
# persistence, pid file WORK/NAME.pid, log WORK/NAME.log, plus the ARGs; waits for its
# PONG; sets TW_PORT. Tries 5 ports (a lost race for one), then fails.
tw_launch_redis() {
    local name=$1 try i
    shift
    for try in 1 2 3 4 5; do
        TW_PORT=$(tw_free_port) || return 1
        redis-server --port "$TW_PORT" --bind 127.0.0.1 --protected-mode yes \
            --save '' --appendonly no --daemonize yes \
            --pidfile "$WORK/$name.pid" --logfile "$WORK/$name.log" --dir "$WORK" "$@" >/dev/null
        for i in $(seq 1 50); do
            [ "$(redis-cli -h 127.0.0.1 -p "$TW_PORT" ping 2>/dev/null)" = PONG ] && return 0
            sleep 0.1
        done
        # Lost a race for the port (or something else): clean up and try another port.
        tw_kill_pidfile "$WORK/$name.pid"
        rm -f "$WORK/$name.pid"
    done
    return 1
}

tw_start_redis() {
    if tw_launch_redis redis; then REDIS_PORT=$TW_PORT; return 0; fi
    if [ "${1:-}" = --log-on-failure ]; then cat "$WORK/redis.log" >&2 || true; fi
    die "could not start redis-server"
}

tw_redis_pid() {
    local pid
    pid=$(cat "$WORK/redis.pid" 2>/dev/null) && [ -n "$pid" ] && echo "$pid"
}

# tw_kill_pidfile FILE [-SIGNAL]: kill [-SIGNAL] the pid in FILE, if any; never fails
tw_kill_pidfile() {
    local pid f=$1
    shift
    pid=$(cat "$f" 2>/dev/null) && [ -n "$pid" ] && kill "$@" "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2120  # bench/drain.sh passes a signal
tw_kill_redis() { tw_kill_pidfile "$WORK/redis.pid" "$@"; }

tw_stop_redis() {
    [ -n "${REDIS_PORT:-}" ] || return 0
    RCLI shutdown nosave >/dev/null 2>&1 || true
    tw_kill_redis
}

# tw_start_redis_cluster N [ARG...]: N (>= 3) redis-servers in cluster mode (tw_launch_redis
# cluster-<i>: WORK/cluster-<i>.pid, .log, cluster-<i>-nodes.conf; the bus on a free port
# of its own, --cluster-port, since port + 10000 may exceed 65535; plus the ARGs), made
# N masters without replicas by redis-cli --cluster create; waits (60 s) until every node
# says cluster_state:ok. Sets CLUSTER_PORTS ("p1 p2 ...").
tw_start_redis_cluster() {
    local n=$1 i p ok addrs=()
    shift
    CLUSTER_PORTS=
    for i in $(seq 1 "$n"); do
        p=$(tw_free_port) || die "no free port"
        tw_launch_redis "cluster-$i" --cluster-enabled yes --cluster-config-file "cluster-$i-nodes.conf" \
            --cluster-port "$p" "$@" \
            || { cat "$WORK/cluster-$i.log" >&2 || true; die "could not start redis-server (cluster node $i)"; }
        CLUSTER_PORTS+="${CLUSTER_PORTS:+ }$TW_PORT"
        addrs+=("127.0.0.1:$TW_PORT")
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$WORK/cluster-create.log" 2>&1 \
        || { cat "$WORK/cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
    for i in $(seq 1 600); do
        ok=1
        for p in $CLUSTER_PORTS; do
            redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || { ok=0; break; }
        done
        [ "$ok" = 0 ] || return 0
        sleep 0.1
    done
    die "the redis cluster ($CLUSTER_PORTS) did not reach cluster_state:ok within 60 s"
}

# tw_kill_redis_cluster [-SIGNAL]: kill [-SIGNAL] every cluster node; never fails
tw_kill_redis_cluster() {
    local f
    for f in "$WORK"/cluster-*.pid; do tw_kill_pidfile "$f" "$@"; done
}

tw_stop_redis_cluster() {
    local p
    [ -n "${CLUSTER_PORTS:-}" ] || return 0
    for p in ${CLUSTER_PORTS:-}; do redis-cli -h 127.0.0.1 -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
    tw_kill_redis_cluster
}

tw_init_pg() {
    PGPORT=$(tw_free_port) || die "no free port"
    "$PGBIN/initdb" -D "$WORK/pgdata" -U postgres --auth=trust -E UTF8 --no-locale >"$WORK/initdb.log" 2>&1 \
        || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
    {
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$WORK'"
        echo "port = $PGPORT"
    } >>"$WORK/pgdata/postgresql.conf"
}

tw_start_pg() {
    "$PGBIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w -t 60 start >/dev/null \
        || { cat "$WORK/postgres.log" >&2; die "PostgreSQL did not start"; }
    PG_STARTED=1
    export PGHOST="$WORK" PGPORT PGUSER=postgres
}

# tw_start_preloaded [LINE...]: a redis-server, then a PostgreSQL with meetcache preloaded
# and meetcache.redis_url pointing at it, plus the given postgresql.conf LINEs
tw_start_preloaded() {
    local line
    tw_start_redis --log-on-failure
    tw_init_pg
    {
        echo "shared_preload_libraries = 'meetcache'"
        echo "meetcache.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'"
        for line in "$@"; do echo "$line"; done
    } >>"$WORK/pgdata/postgresql.conf"
    tw_start_pg
}

tw_stop_pg() {
    [ "${PG_STARTED:-0}" = 1 ] || return 0
    "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m fast -w -t 30 stop >/dev/null 2>&1 \
        || "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
}

tw_stop_servers() {
    tw_stop_pg
    tw_stop_redis
    tw_stop_redis_cluster
    if [ "$1" != 0 ] && [ -f "$WORK/postgres.log" ]; then
        printf '%s\n' "$2" >&2
        tail -n 30 "$WORK/postgres.log" >&2 || true
    fi
}
