#!/usr/bin/env bash
# meetcache demo: bash demo/run-demo.sh
#
# Run as root on a Debian 12 machine: installs what is missing (apt-get), builds and
# installs the extension (make && make install), then runs the demo as the unprivileged
# `postgres` user (created if absent) against a throwaway PostgreSQL 15 (unix socket only,
# in a temporary directory) and a throwaway redis-server on a free 127.0.0.1 port. Both
# are stopped, and the temporary directory removed, when the script exits.
#
# Run as any other (non-root) user, it skips installing and building and uses the
# extension already installed.
#
# Environment:
#   PGBIN                   PostgreSQL 15 bin directory (default: `pg_config --bindir`)
#   PG_CONFIG               the pg_config that gives it (default pg_config)
#   MEETCACHE_SKIP_BUILD=1  as root: do not run make / make install (use the installed build)
#   MEETCACHE_SKIP_APT=1    as root: do not install missing Debian packages
#   MEETCACHE_PRELOAD=0     do not preload meetcache (default 1: shared_preload_libraries,
#                           so meetcache.stats() counts across sessions)
#   MEETCACHE_SKIP_NODE=1   skip the last step (a Prisma write, then a TypeScript read, with
#                           examples/meet-app and clients/node; as root it runs `npm ci` in
#                           copies of both, from the npm registry; it needs Node.js 20 and npm)
#   KEEP=1                  keep the temporary directory (logs, data) after exit
set -euo pipefail

PGBIN=${PGBIN:-}   # empty: tw_pgbin, once the packages are installed
STAGE_ARG=--as-demo-user

# The shared root stage and throwaway servers (tw_*, scripts/throwaway-servers.sh): next
# to this script when it runs from its temporary copy, else in the repository.
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
if [ -f "${SELF%/*}/throwaway-servers.sh" ]; then . "${SELF%/*}/throwaway-servers.sh"; else . "${SELF%/*}/../scripts/throwaway-servers.sh"; fi

if [ -t 1 ]; then B=$'\e[1m'; G=$'\e[32m'; R=$'\e[31m'; D=$'\e[2m'; N=$'\e[0m'; else B= G= R= D= N=; fi
say()  { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
info() { printf '    %s\n' "$*"; }
ok()   { printf '    %sOK%s  %s\n' "$G" "$N" "$*"; }
die()  { printf '%sERROR:%s %s\n' "$R" "$N" "$*" >&2; exit 1; }

###########################################################################################
# Stage 1 (root): dependencies, build, install, then re-run this script as `postgres`.
###########################################################################################
stage_root() {
    local repo; repo=$(tw_repo_dir "$SELF")

    if [ "${MEETCACHE_SKIP_APT:-0}" != 1 ]; then
        say "Checking Debian packages"
        tw_apt_build_deps info "installing:"
        ok "postgresql-15 postgresql-server-dev-15 libhiredis-dev libssl-dev libc-ares-dev redis-server present"
    fi
    tw_pgbin
    [ -x "$PGBIN/initdb" ] || die "PostgreSQL 15 binaries not found in $PGBIN"

    if [ "${MEETCACHE_SKIP_BUILD:-0}" != 1 ]; then
        tw_make_install "$repo"
        ok "installed into $("$PGBIN/pg_config" --pkglibdir)"
    fi

    tw_ensure_postgres_user say "Creating the unprivileged user postgres"

    tw_root_workdir "$SELF" meetcache-demo
    if [ "${MEETCACHE_SKIP_NODE:-0}" != 1 ]; then node_app_root "$repo"; fi
    local rc=0
    tw_run_as_postgres "$STAGE_ARG" PGBIN="$PGBIN" KEEP="${KEEP:-0}" MEETCACHE_PRELOAD="${MEETCACHE_PRELOAD:-1}" \
        TERM="${TERM:-dumb}" || rc=$?
    if tw_root_keep; then info "kept $ROOT_WORK"; fi
    return $rc
}

# The TypeScript step's files, in ROOT_WORK/repo (owned by postgres): clients/node and
# examples/meet-app with their npm packages (npm ci), the Prisma client generated.
node_app_root() {
    if ! command -v npm >/dev/null 2>&1; then info "npm not found: the TypeScript step will be skipped"; return 0; fi
    say "Installing the npm packages of clients/node and examples/meet-app (npm ci)"
    mkdir -p "$ROOT_WORK/repo"
    tar -C "$1" --exclude=node_modules -cf - lua clients/node examples/meet-app test/fixtures/meet_camel.sql | tar -C "$ROOT_WORK/repo" -xf -
    export NPM_CONFIG_UPDATE_NOTIFIER=false
    (cd "$ROOT_WORK/repo/clients/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) &&
        (cd "$ROOT_WORK/repo/examples/meet-app" && npm ci --no-audit --no-fund --loglevel=error >/dev/null &&
            sh scripts/prisma-generate.sh >/dev/null) ||
        { info "npm ci failed: the TypeScript step will be skipped"; rm -rf "$ROOT_WORK/repo"; }
    chown -R postgres: "$ROOT_WORK"
}

###########################################################################################
# Helpers for the unprivileged stage
###########################################################################################
start_pg() {
    tw_init_pg
    {
        echo "meetcache.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'"
        if [ "${MEETCACHE_PRELOAD:-1}" = 1 ]; then echo "shared_preload_libraries = 'meetcache'"; fi
    } >>"$WORK/pgdata/postgresql.conf"
    tw_start_pg
}

cleanup() {
    local rc=$?
    tw_stop_servers "$rc" $'\n'"$D--- last lines of the PostgreSQL log ---$N"
    if [ "${KEEP:-0}" != 1 ]; then cd /; rm -rf "$WORK"; else echo "kept $WORK" >&2; fi
    exit "$rc"
}

PSQL() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -P pager=off -d demo "$@"; }
# show_sql TEXT: print an SQL statement, indented, then run it with psql (table output).
run_sql() {
    printf '%s' "$1" | sed 's/^/    sql> /'; echo
    PSQL -c "$1" | sed 's/^/    /'
}
# sql_lines TEXT: run, unaligned tuples only (for checks).
sql_lines() { PSQL -A -t -c "$1"; }

###########################################################################################
# Stage 2 (unprivileged): throwaway servers and the demo itself
###########################################################################################

SAMPLE_DATA=$(cat <<'SQL'
INSERT INTO users (id, name, email, image) VALUES
  ('u1', 'Alice', 'alice@example.com', 'https://img.example.com/alice.png'),
  ('u2', 'Bob',   'bob@example.com',   NULL),
  ('u3', 'Carol', 'carol@example.com', 'https://img.example.com/carol.png'),
  ('u4', 'Dave',  'dave@example.com',  NULL),
  ('u5', 'Erin',  'erin@example.com',  NULL);
-- m1 and m12 on purpose: the pattern meeting:m1* would also match meeting:m12.
INSERT INTO meetings (id, title, host_id, invite_code, status, scheduled_at, started_at, ended_at) VALUES
  ('m1',  'Weekly sync',        'u1', 'inv-m1',  'LIVE',      now() - interval '1 hour', now() - interval '10 minutes', NULL),
  ('m2',  'Design review',      'u1', 'inv-m2',  'SCHEDULED', now() + interval '1 day',  NULL, NULL),
  ('m3',  'Quarterly planning', 'u2', 'inv-m3',  'ENDED',     now() - interval '2 days', now() - interval '2 days', now() - interval '47 hours'),
  ('m12', 'Hiring panel',       'u2', 'inv-m12', 'SCHEDULED', now() + interval '2 days', NULL, NULL),
  ('m13', 'Standup',            'u3', 'inv-m13', 'LIVE',      now() - interval '5 minutes', now() - interval '5 minutes', NULL);
INSERT INTO participants (id, meeting_id, user_id, joined_at, left_at) VALUES
  ('p1', 'm1',  'u1', now() - interval '10 minutes', NULL),
  ('p2', 'm1',  'u2', now() - interval '9 minutes',  NULL),
  ('p3', 'm1',  'u3', now() - interval '8 minutes',  now() - interval '2 minutes'),
  ('p4', 'm3',  'u2', now() - interval '2 days',     now() - interval '47 hours'),
  ('p5', 'm3',  'u4', now() - interval '2 days',     now() - interval '47 hours'),
  ('p6', 'm13', 'u3', now() - interval '5 minutes',  NULL),
  ('p7', 'm13', 'u5', now() - interval '4 minutes',  NULL);
INSERT INTO chat_messages (id, meeting_id, user_id, message, sent_at) VALUES
  ('c1', 'm1',  'u1', 'Hi all!',                   now() - interval '9 minutes'),
  ('c2', 'm1',  'u2', 'Hello',                     now() - interval '8 minutes'),
  ('c3', 'm1',  'u3', 'Sorry, have to drop early', now() - interval '3 minutes'),
  ('c4', 'm3',  'u4', 'Slides are in the drive',   now() - interval '2 days'),
  ('c5', 'm13', 'u5', 'Morning',                   now() - interval '4 minutes');
INSERT INTO recordings (id, meeting_id, status, file_url, duration_seconds, file_size_bytes) VALUES
  ('r1', 'm3', 'READY', 'https://files.example.com/r1.mp4', 3540, 734003200);
SQL
)

MEETING_QUERY=$(cat <<'SQL'
SELECT json_build_object(
         'id', m.id, 'title', m.title, 'status', m.status,
         'host', json_build_object('id', u.id, 'name', u.name, 'image', u.image),
         'participants', (SELECT count(*) FROM participants p WHERE p.meeting_id = m.id),
         'chat_messages', (SELECT count(*) FROM chat_messages c WHERE c.meeting_id = m.id))
       FROM meetings m JOIN users u ON u.id = m.host_id WHERE m.id = $1
SQL
)

# One Prisma write, then a TypeScript read (examples/meet-app/scripts/demo.ts), in a
# database of its own with the camelCase schema and meetcache.key_prefix = 'app:'.
node_app_step() {
    [ "${MEETCACHE_SKIP_NODE:-0}" = 1 ] && return 0
    local app=$WORK/repo/examples/meet-app
    [ -d "$app" ] || app=$(tw_repo_dir "$SELF")/examples/meet-app
    say "The application side: a Prisma write, then a TypeScript read (examples/meet-app)"
    if ! command -v node >/dev/null 2>&1 || [ ! -d "$app/node_modules" ] || [ ! -d "$app/src/generated" ]; then
        info "skipped: needs Node.js 20 and, in $app, npm ci and npm run generate"
        return 0
    fi
    "$PGBIN/createdb" demo_app
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d demo_app -f "$app/../../test/fixtures/meet_camel.sql"
    run_sql "ALTER DATABASE demo_app SET meetcache.key_prefix = 'app:';"
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d demo_app -c "CREATE EXTENSION meetcache" -c "SELECT meetcache.attach_defaults()" >/dev/null
    info "database demo_app: the camelCase schema (Prisma's), CREATE EXTENSION meetcache, attach_defaults()"
    (cd "$app" && DATABASE_URL="postgresql://postgres@localhost/demo_app?host=$WORK&port=$PGPORT" \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" MEETCACHE_KEY_PREFIX=app: \
        NPM_CONFIG_UPDATE_NOTIFIER=false npx --no-install tsx scripts/demo.ts) || die "the TypeScript step failed"
    ok "the read after the Prisma write is fresh, and the write handler has no cache code"
}

stage_demo() {
    tw_enter_work "$1" meetcache-demo cleanup
    tw_pgbin

    local sharedir; sharedir=$("$PGBIN/pg_config" --sharedir)
    [ -f "$sharedir/extension/meetcache.control" ] \
        || die "meetcache is not installed ($sharedir/extension/meetcache.control missing); run this script as root, or make install"

    say "Starting a throwaway redis-server and PostgreSQL 15 (as $(id -un))"
    tw_start_redis --log-on-failure
    ok "redis-server on 127.0.0.1:$REDIS_PORT"
    start_pg
    ok "PostgreSQL on unix socket $WORK (port $PGPORT), data in $WORK/pgdata"
    info "postgresql.conf: meetcache.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'"
    "$PGBIN/createdb" demo

    say "Loading the snake_case reference schema and sample data"
    PSQL -f "$WORK/meet_snake.sql" >/dev/null
    PSQL -c "$SAMPLE_DATA" >/dev/null
    run_sql "SELECT m.id, m.title, m.status, m.host_id, m.invite_code,
       (SELECT count(*) FROM participants p WHERE p.meeting_id = m.id) AS participants
FROM meetings m ORDER BY m.id;"

    say "Installing the extension and attaching the default rules"
    run_sql "CREATE EXTENSION meetcache;"
    run_sql "SELECT meetcache.attach_defaults();"
    run_sql "SELECT * FROM meetcache.attached ORDER BY 1;"
    run_sql "SELECT meetcache.cache_ping();"

    say "Filling the cache the way the application does (cache-aside, get-or-set)"
    info "miss: runs the query, stores compact JSON with the TTL, returns it"
    run_sql "SELECT meetcache.cache_get_or_set(meetcache.key('meeting', 'm1'),
       \$q\$$MEETING_QUERY\$q\$,
       600, 'm1') AS \"meeting:m1\";"
    run_sql "SELECT meetcache.cache_get_or_set(meetcache.key('meeting', 'm12'),
       \$q\$$MEETING_QUERY\$q\$,
       600, 'm12') AS \"meeting:m12\";"
    info "and a few other keys (a NULL TTL takes the TTL of the key's family):"
    run_sql "SELECT k.key, meetcache.cache_get_or_set(k.key, k.query, NULL, VARIADIC k.params) AS value
FROM (VALUES
  (meetcache.key('meeting_by_invite', 'inv-m1'),
     'SELECT m.id, m.title, m.status FROM meetings m WHERE m.invite_code = \$1', ARRAY['inv-m1']),
  (meetcache.key('meeting_by_invite', 'inv-m12'),
     'SELECT m.id, m.title, m.status FROM meetings m WHERE m.invite_code = \$1', ARRAY['inv-m12']),
  (meetcache.key('user_meetings', 'u1'),
     'SELECT coalesce(json_agg(json_build_object(''id'', id, ''title'', title) ORDER BY id), ''[]'') FROM meetings WHERE host_id = \$1', ARRAY['u1']),
  (meetcache.key('user_meeting_count', 'u1'),
     'SELECT count(*) AS total, count(*) FILTER (WHERE status = ''LIVE'') AS live, count(*) FILTER (WHERE status = ''SCHEDULED'') AS scheduled, count(*) FILTER (WHERE status = ''ENDED'') AS ended FROM meetings WHERE host_id = \$1', ARRAY['u1']),
  (meetcache.key('user_participations', 'u2'),
     'SELECT coalesce(json_agg(json_build_object(''meeting'', m.id, ''title'', m.title, ''status'', m.status) ORDER BY m.id), ''[]'') FROM participants p JOIN meetings m ON m.id = p.meeting_id WHERE p.user_id = \$1', ARRAY['u2']),
  (meetcache.key('user_participations', 'u5'),
     'SELECT coalesce(json_agg(json_build_object(''meeting'', m.id, ''title'', m.title, ''status'', m.status) ORDER BY m.id), ''[]'') FROM participants p JOIN meetings m ON m.id = p.meeting_id WHERE p.user_id = \$1', ARRAY['u5']),
  (meetcache.key('live_meetings'),
     'SELECT coalesce(json_agg(json_build_object(''id'', id, ''title'', title) ORDER BY id), ''[]'') FROM (SELECT * FROM meetings WHERE status = ''LIVE'' ORDER BY id LIMIT 20) s', '{}'::text[]),
  (meetcache.key('meeting_participants', 'm1'),
     'SELECT coalesce(json_agg(json_build_object(''user'', u.name, ''left_at'', p.left_at) ORDER BY p.id), ''[]'') FROM participants p JOIN users u ON u.id = p.user_id WHERE p.meeting_id = \$1', ARRAY['m1']),
  (meetcache.key('recent_chats', 'm1'),
     'SELECT coalesce(json_agg(json_build_object(''user'', user_id, ''message'', message) ORDER BY sent_at DESC), ''[]'') FROM (SELECT * FROM chat_messages WHERE meeting_id = \$1 ORDER BY sent_at DESC LIMIT 50) c', ARRAY['m1']),
  (meetcache.key('meeting_recording', 'm3'),
     'SELECT status, file_url, duration_seconds, file_size_bytes FROM recordings WHERE meeting_id = \$1', ARRAY['m3']),
  (meetcache.key('user', 'u1'),
     'SELECT id, name, email, image FROM users WHERE id = \$1', ARRAY['u1'])
) AS k(key, query, params)
ORDER BY k.key;"
    info "meeting:m1 is now in Redis (compact JSON, TTL 600 s); a second get-or-set would not run the query:"
    run_sql "SELECT meetcache.cache_get('meeting:m1')->>'title' AS cached_title, meetcache.cache_ttl('meeting:m1') AS ttl_s;"

    say "What is in Redis now"
    run_sql "SELECT * FROM meetcache.cache_keys('*') ORDER BY key;"
    sql_lines "SELECT key FROM meetcache.cache_keys('*', 100000) ORDER BY key;" | LC_ALL=C sort >"$WORK/keys-before"
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan | LC_ALL=C sort >"$WORK/redis-before"
    cmp -s "$WORK/keys-before" "$WORK/redis-before" \
        || die "meetcache.cache_keys('*') and redis-cli --scan disagree: $(diff "$WORK/keys-before" "$WORK/redis-before" | tr '\n' ' ')"
    ok "$(wc -l <"$WORK/keys-before") keys; redis-cli --scan shows the same list"

    local newtitle='Weekly sync (moved to Thursday)'
    say "Dry run: which keys would an UPDATE of meeting m1's title delete?"
    local dry="SELECT a.key, a.family, a.rule_id
FROM meetings m,
     meetcache.affected_keys('meetings', to_jsonb(m),
                             jsonb_set(to_jsonb(m), '{title}', to_jsonb('$newtitle'::text))) AS a
WHERE m.id = 'm1'
ORDER BY a.key, a.rule_id;"
    run_sql "$dry"
    sql_lines "SELECT DISTINCT key FROM (${dry%;}) s;" | LC_ALL=C sort -u >"$WORK/affected"
    grep -qx 'meeting:m1' "$WORK/affected"  || die "affected_keys does not name meeting:m1"
    grep -qx 'meeting:m12' "$WORK/affected" && die "affected_keys names meeting:m12 (another meeting)"
    ok "names meeting:m1 and not meeting:m12 (no prefix patterns on the write path)"

    say "The application updates the meeting (plain SQL from psql, autocommit)"
    run_sql "UPDATE meetings SET title = '$newtitle' WHERE id = 'm1';"

    say "Keys after the commit"
    run_sql "SELECT * FROM meetcache.cache_keys('*') ORDER BY key;"
    sql_lines "SELECT key FROM meetcache.cache_keys('*', 100000) ORDER BY key;" | LC_ALL=C sort >"$WORK/keys-after"
    LC_ALL=C comm -23 "$WORK/keys-before" "$WORK/keys-after" >"$WORK/gone"
    LC_ALL=C comm -12 "$WORK/keys-before" "$WORK/affected" >"$WORK/expected-gone"
    LC_ALL=C comm -13 "$WORK/keys-before" "$WORK/keys-after" >"$WORK/appeared"
    info "deleted:   $(tr '\n' ' ' <"$WORK/gone")"
    info "remaining: $(tr '\n' ' ' <"$WORK/keys-after")"
    if ! cmp -s "$WORK/gone" "$WORK/expected-gone"; then
        info "expected deleted (cached keys named by affected_keys): $(tr '\n' ' ' <"$WORK/expected-gone")"
        die "the keys deleted by the UPDATE differ from the keys affected_keys() announced"
    fi
    [ -s "$WORK/appeared" ] && die "keys appeared: $(tr '\n' ' ' <"$WORK/appeared")"
    grep -qx 'meeting:m1' "$WORK/gone" || die "meeting:m1 survived the UPDATE"
    grep -qx 'meeting:m12' "$WORK/keys-after" || die "meeting:m12 was deleted, it should remain"
    ok "exactly the cached keys named by affected_keys() are gone: $(wc -l <"$WORK/gone") deleted, $(wc -l <"$WORK/keys-after") remain (meeting:m12 included)"

    say "Next read is a miss and caches the fresh row"
    run_sql "SELECT meetcache.cache_get_or_set(meetcache.key('meeting', 'm1'),
       \$q\$$MEETING_QUERY\$q\$,
       600, 'm1')->>'title' AS title;"

    say "Nothing is deleted for work that rolls back"
    run_sql "BEGIN; UPDATE meetings SET title = 'never committed' WHERE id = 'm12'; ROLLBACK;"
    [ "$(sql_lines "SELECT meetcache.cache_exists('meeting:m12');")" = t ] || die "meeting:m12 deleted by a rolled-back UPDATE"
    ok "meeting:m12 is still cached"
    run_sql "UPDATE meetings SET title = 'Hiring panel (2 seats)' WHERE id = 'm12';"
    [ "$(sql_lines "SELECT meetcache.cache_exists('meeting:m12');")" = f ] || die "meeting:m12 survived a committed UPDATE"
    ok "after a committed UPDATE of m12, meeting:m12 is gone"

    if [ "${MEETCACHE_PRELOAD:-1}" = 1 ]; then
        say "Redis stalls: the commit does not wait, the durable queue delivers afterwards"
        run_sql "SELECT meetcache.cache_set('meeting:m1', '{\"title\": \"cached\"}', 600);"
        info "redis-cli CLIENT PAUSE 3000 WRITE: Redis refuses to run writes (UNLINK too) for 3 s"
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" CLIENT PAUSE 3000 WRITE >/dev/null
        local t0 t1
        t0=$(date +%s%N)
        run_sql "SET meetcache.delivery = 'queue'; UPDATE meetings SET title = 'Weekly sync' WHERE id = 'm1';"
        t1=$(date +%s%N)
        ok "COMMIT returned after $(( (t1 - t0) / 1000000 )) ms (psql start-up included)"
        run_sql "SELECT id, nkeys, delivered, keys FROM meetcache.pending;"
        local i
        for i in $(seq 1 100); do
            [ "$(sql_lines "SELECT count(*) FROM meetcache.queue;")" = 0 ] && break
            sleep 0.1
        done
        [ "$(sql_lines "SELECT meetcache.cache_exists('meeting:m1');")" = f ] || die "meeting:m1 survived the stall"
        ok "once Redis ran writes again, the drain worker deleted meeting:m1 and removed the row"
        run_sql "SELECT worker_state, redis_state, queue_depth, queue_rows_written, queue_rows_done FROM meetcache.stats;"
    fi

    node_app_step

    say "Counters"
    printf '    sql> SELECT * FROM meetcache.stats;   (expanded display)\n'
    if ! PSQL -x -c "SELECT * FROM meetcache.stats;" 2>&1 | sed 's/^/    /'; then info "(meetcache.stats not available)"; fi

    say "${G}Demo finished successfully${N}${B}; stopping the throwaway servers"
}

tw_main "$STAGE_ARG" stage_root stage_demo "$@"
