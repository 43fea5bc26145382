-- meetcache 0.2.0: catalog, default rules (docs/keys.md), functions.
-- This script creates no trigger on user tables: meetcache.attach() does.
\echo Use "CREATE EXTENSION meetcache" to load this file. \quit

------------------------------------------------------------------------
-- Catalog
------------------------------------------------------------------------

CREATE TABLE meetcache.families (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]*$'),
    template    text NOT NULL,
    ttl_seconds integer CHECK (ttl_seconds > 0),
    ttl_field   text,
    ttl_by_value jsonb,
    description text,
    builtin     boolean NOT NULL DEFAULT false,
    CONSTRAINT families_ttl_by_value CHECK ((ttl_field IS NULL) = (ttl_by_value IS NULL)
                                            AND (ttl_by_value IS NULL OR jsonb_typeof(ttl_by_value) = 'object'))
);
COMMENT ON TABLE meetcache.families IS
  'Cache key families: a key template with {column} placeholders and a default TTL.';

CREATE TABLE meetcache.rules (
    id           serial PRIMARY KEY,
    table_name   text NOT NULL,
    family       text NOT NULL REFERENCES meetcache.families (name) ON UPDATE CASCADE,
    args         text[],
    on_insert    boolean NOT NULL DEFAULT true,
    on_update    boolean NOT NULL DEFAULT true,
    on_delete    boolean NOT NULL DEFAULT true,
    when_column  text,
    when_values  text[],
    via_table    text,
    via_column   text,
    match_column text,
    enabled      boolean NOT NULL DEFAULT true,
    description  text,
    builtin      boolean NOT NULL DEFAULT false,
    CONSTRAINT rules_event CHECK (on_insert OR on_update OR on_delete),
    CONSTRAINT rules_when CHECK ((when_column IS NULL) = (when_values IS NULL)),
    CONSTRAINT rules_via CHECK ((via_table IS NULL) = (via_column IS NULL)
                                AND (via_table IS NULL) = (match_column IS NULL))
);
CREATE INDEX ON meetcache.rules (table_name);
COMMENT ON TABLE meetcache.rules IS
  'Which keys a change to a table deletes: a family rendered from the changed row, or from related rows (via_*).';

-- user-added rows are dumped by pg_dump; the builtin rows come from this script
SELECT pg_catalog.pg_extension_config_dump('meetcache.families', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('meetcache.rules', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('meetcache.rules_id_seq', '');

------------------------------------------------------------------------
-- Default key families and invalidation matrix (docs/keys.md)
------------------------------------------------------------------------

INSERT INTO meetcache.families (name, template, ttl_seconds, description, builtin) VALUES
  ('user',                      'user:{id}',                           600, 'profile: id, name, email, image, created_at', true),
  ('user_by_email',             'user:email:{email}',                  600, 'the same profile, looked up by email', true),
  ('user_meetings',             'meetings:user:{host_id}',             300, 'meetings hosted by the user, with host name/image', true),
  ('user_meeting_count',        'user:{host_id}:meetings:count',       300, '{total, live, scheduled, ended} of meetings hosted', true),
  ('user_participations',       'user:{user_id}:participations',       300, 'the user''s participations, with meeting title and status', true),
  ('meeting',                   'meeting:{id}',                        600, 'meeting, host {id, name, image}, counts of participants and chat messages', true),
  ('meeting_by_invite',         'meeting:invite:{invite_code}',        300, 'id, title, status, scheduled_at, host {id, name, image}', true),
  ('live_meetings',             'meetings:live',                        60, 'up to 20 LIVE meetings with host {id, name} and participant count', true),
  ('scheduled_meetings',        'meetings:scheduled',                   60, 'SCHEDULED meetings with host {id, name}', true),
  ('meeting_participants',      'meeting:{meeting_id}:participants',   120, 'participants with user {id, name, email, image}', true),
  ('meeting_participant_count', 'meeting:{meeting_id}:participants:count', 60, 'count of participants with left_at IS NULL', true),
  ('recent_chats',              'meeting:{meeting_id}:chats:recent:50', 30, 'last 50 chat messages with user {id, name, image}', true),
  ('meeting_recording',         'meeting:{meeting_id}:recording',      600, 'recording status, file_url, duration, size (30 s while PROCESSING)', true);
UPDATE meetcache.families SET ttl_field = 'status', ttl_by_value = '{"PROCESSING": 30}'
WHERE name = 'meeting_recording';

INSERT INTO meetcache.rules
  (table_name, family, args, on_insert, on_update, on_delete, when_column, when_values,
   via_table, via_column, match_column, description, builtin) VALUES
  -- users
  ('users', 'user',                 '{id}',    true,  true,  true,  NULL, NULL, NULL, NULL, NULL, 'the profile', true),
  ('users', 'user_by_email',        '{email}', true,  true,  true,  NULL, NULL, NULL, NULL, NULL, 'the profile by email (old and new email)', true),
  ('users', 'meeting',              '{id}',    false, true,  true,  NULL, NULL, 'meetings', 'host_id', 'id', 'meetings hosted embed the host', true),
  ('users', 'meeting_by_invite',    '{invite_code}', false, true, true, NULL, NULL, 'meetings', 'host_id', 'id', 'invite lookups of hosted meetings embed the host', true),
  ('users', 'user_meetings',        '{host_id}', false, true, true, NULL, NULL, 'meetings', 'host_id', 'id', 'hosted meetings list embeds the host', true),
  ('users', 'live_meetings',        '{}',      false, true,  true,  NULL, NULL, 'meetings', 'host_id', 'id', 'live list embeds hosts', true),
  ('users', 'scheduled_meetings',   '{}',      false, true,  true,  NULL, NULL, 'meetings', 'host_id', 'id', 'scheduled list embeds hosts', true),
  ('users', 'meeting_participants', '{meeting_id}', false, true, true, NULL, NULL, 'participants', 'user_id', 'id', 'participant lists embed the user', true),
  ('users', 'recent_chats',         '{meeting_id}', false, true, true, NULL, NULL, 'chat_messages', 'user_id', 'id', 'recent chats embed the author', true),
  -- meetings
  ('meetings', 'meeting',            '{id}',          true, true, true, NULL, NULL, NULL, NULL, NULL, 'the meeting', true),
  ('meetings', 'meeting_by_invite',  '{invite_code}', true, true, true, NULL, NULL, NULL, NULL, NULL, 'the meeting by invite code (old and new code)', true),
  ('meetings', 'user_meetings',      '{host_id}',     true, true, true, NULL, NULL, NULL, NULL, NULL, 'the host''s list (old and new host)', true),
  ('meetings', 'user_meeting_count', '{host_id}',     true, true, true, NULL, NULL, NULL, NULL, NULL, 'the host''s counts (old and new host)', true),
  ('meetings', 'live_meetings',      '{}',            true, true, true, 'status', '{LIVE}', NULL, NULL, NULL, 'when the old or new row is LIVE', true),
  ('meetings', 'scheduled_meetings', '{}',            true, true, true, 'status', '{SCHEDULED}', NULL, NULL, NULL, 'when the old or new row is SCHEDULED', true),
  ('meetings', 'user_participations','{user_id}',     false, true, true, NULL, NULL, 'participants', 'meeting_id', 'id', 'participations embed the meeting title and status', true),
  ('meetings', 'meeting_participants',      '{id}', false, false, true, NULL, NULL, NULL, NULL, NULL, 'gone with the meeting', true),
  ('meetings', 'meeting_participant_count', '{id}', false, false, true, NULL, NULL, NULL, NULL, NULL, 'gone with the meeting', true),
  ('meetings', 'recent_chats',              '{id}', false, false, true, NULL, NULL, NULL, NULL, NULL, 'gone with the meeting', true),
  ('meetings', 'meeting_recording',         '{id}', false, false, true, NULL, NULL, NULL, NULL, NULL, 'gone with the meeting', true),
  -- participants
  ('participants', 'meeting_participants',      '{meeting_id}', true, true, true, NULL, NULL, NULL, NULL, NULL, NULL, true),
  ('participants', 'meeting_participant_count', '{meeting_id}', true, true, true, NULL, NULL, NULL, NULL, NULL, NULL, true),
  ('participants', 'meeting',                   '{meeting_id}', true, true, true, NULL, NULL, NULL, NULL, NULL, 'the meeting embeds a participant count', true),
  ('participants', 'user_participations',       '{user_id}',    true, true, true, NULL, NULL, NULL, NULL, NULL, NULL, true),
  ('participants', 'live_meetings',             '{}',           true, true, true, NULL, NULL, NULL, NULL, NULL, 'the live list embeds participant counts', true),
  -- chat_messages
  ('chat_messages', 'recent_chats', '{meeting_id}', true, true, true, NULL, NULL, NULL, NULL, NULL, NULL, true),
  ('chat_messages', 'meeting',      '{meeting_id}', true, true, true, NULL, NULL, NULL, NULL, NULL, 'the meeting embeds a chat count', true),
  -- recordings
  ('recordings', 'meeting_recording', '{meeting_id}', true, true, true, NULL, NULL, NULL, NULL, NULL, NULL, true);

------------------------------------------------------------------------
-- C functions
------------------------------------------------------------------------

CREATE FUNCTION meetcache.invalidate_trigger() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_invalidate_trigger';
COMMENT ON FUNCTION meetcache.invalidate_trigger() IS
  'Statement trigger: records the keys a change affects; they are deleted after commit.';

CREATE FUNCTION meetcache._check_table(regclass, text) RETURNS integer
  LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'meetcache_check_table';

CREATE FUNCTION meetcache._rules_changed() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_rules_changed';

CREATE FUNCTION meetcache._affected_keys(regclass, jsonb, jsonb,
    OUT key text, OUT family text, OUT rule_id integer)
  RETURNS SETOF record LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_affected_keys';

CREATE FUNCTION meetcache.key(family text, VARIADIC args text[] DEFAULT '{}')
  RETURNS text LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'meetcache_key';
COMMENT ON FUNCTION meetcache.key(text, text[]) IS
  'Render a key of a family, e.g. key(''meeting'', ''m1'') = ''meeting:m1'' (without key_prefix).';

CREATE FUNCTION meetcache.cache_get(key text) RETURNS jsonb
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_cache_get';
COMMENT ON FUNCTION meetcache.cache_get(text) IS 'GET a JSON value; NULL on a miss.';

CREATE FUNCTION meetcache.cache_set(key text, value jsonb, ttl_seconds integer DEFAULT NULL)
  RETURNS void LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_cache_set';
COMMENT ON FUNCTION meetcache.cache_set(text, jsonb, integer) IS
  'SET a JSON value (compact text) with a TTL; without a TTL, the TTL of the key''s family.';

CREATE FUNCTION meetcache.cache_del(VARIADIC keys text[]) RETURNS bigint
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_cache_del';
COMMENT ON FUNCTION meetcache.cache_del(text[]) IS 'UNLINK keys now; returns how many existed.';

CREATE FUNCTION meetcache.cache_del_pattern(pattern text) RETURNS bigint
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_cache_del_pattern';
COMMENT ON FUNCTION meetcache.cache_del_pattern(text) IS
  'SCAN + UNLINK every key matching a Redis glob (never KEYS); returns how many were deleted.';

CREATE FUNCTION meetcache.cache_exists(key text) RETURNS boolean
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_cache_exists';

CREATE FUNCTION meetcache.cache_ttl(key text) RETURNS bigint
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_cache_ttl';
COMMENT ON FUNCTION meetcache.cache_ttl(text) IS
  'Seconds to live; -1 without expiry; NULL when the key does not exist.';

CREATE FUNCTION meetcache.cache_keys(pattern text DEFAULT '*', max_keys integer DEFAULT 1000,
    OUT key text, OUT type text, OUT ttl bigint, OUT size_bytes bigint)
  RETURNS SETOF record LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_cache_keys';
COMMENT ON FUNCTION meetcache.cache_keys(text, integer) IS
  'Keys matching a glob (SCAN), with type, TTL and memory usage, for inspection.';

CREATE FUNCTION meetcache.cache_ping() RETURNS text
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_cache_ping';

CREATE FUNCTION meetcache.cache_get_or_set(key text, query text, ttl_seconds integer DEFAULT NULL,
    VARIADIC params text[] DEFAULT '{}')
  RETURNS jsonb LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_cache_get_or_set';
COMMENT ON FUNCTION meetcache.cache_get_or_set(text, text, integer, text[]) IS
  'GET, or on a miss run the query (read-only, as the caller, $n bound to params) and SET its JSON.';

CREATE FUNCTION meetcache.stats(
    OUT scope text,
    OUT keys_queued bigint, OUT patterns_queued bigint, OUT overflows bigint,
    OUT xacts_delivered bigint, OUT keys_sent bigint, OUT keys_deleted bigint,
    OUT commands bigint, OUT delivery_failures bigint, OUT redis_errors bigint,
    OUT cache_hits bigint, OUT cache_misses bigint, OUT cache_bypasses bigint,
    OUT lease_waits bigint, OUT lease_refused bigint, OUT lease_timeouts bigint,
    OUT queue_rows_written bigint, OUT queue_rows_done bigint, OUT queue_rows_skipped bigint,
    OUT queue_keys_sent bigint, OUT handoffs bigint, OUT retries bigint,
    OUT retry_overflows bigint, OUT family_flushes bigint, OUT worker_failures bigint,
    OUT breaker_trips bigint,
    OUT last_error text, OUT last_error_at timestamptz, OUT stats_reset timestamptz,
    OUT worker_state text, OUT launcher_pid integer, OUT drains_running integer,
    OUT redis_state text, OUT redis_down_since timestamptz,
    OUT retry_queue_entries bigint, OUT retry_queue_bytes bigint, OUT retry_queue_size bigint)
  RETURNS record LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_stats';

-- the Redis Cluster's columns (same C function: it fills the columns its
-- declaration names); a function of their own, so that the stats view only
-- gains columns at its end
CREATE FUNCTION meetcache.cluster_stats(
    OUT moved_redirects bigint, OUT ask_redirects bigint, OUT slot_map_loads bigint,
    OUT cluster_nodes integer, OUT cluster_topology text, OUT slot_map_loaded_at timestamptz)
  RETURNS record LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_stats';
COMMENT ON FUNCTION meetcache.cluster_stats() IS
  'Redis Cluster: redirects followed, slot map loads, and the masters and their slots in the last slot map loaded for this session''s redis_url.';
-- the lookups' second resolution (README, "Lookups after commit"): the same
-- C function again, appended to the stats view after the cluster's columns
CREATE FUNCTION meetcache.lookup_stats(
    OUT lookups_settled bigint, OUT lookup_handoffs bigint)
  RETURNS record LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_stats';
COMMENT ON FUNCTION meetcache.lookup_stats() IS
  'Sync transactions whose lookups needed no second resolution after commit, and those whose lookups went to the drain through shared memory.';

CREATE FUNCTION meetcache.stats_reset() RETURNS void
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_stats_reset';

------------------------------------------------------------------------
-- The durable queue: one row per committed (or prepared) transaction
------------------------------------------------------------------------

CREATE TABLE meetcache.queue (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  keys        text[] NOT NULL,
  patterns    text[],
  -- lookups to resolve again after commit: "relid:rule_id:family:prefix-length:prefix value"
  lookups     text[]
) WITH (
  -- rows live for milliseconds: vacuum often, never throttled
  autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_vacuum_insert_scale_factor = 0,
  autovacuum_vacuum_insert_threshold = 10000,
  autovacuum_analyze_scale_factor = 0,
  autovacuum_analyze_threshold = 10000,
  autovacuum_vacuum_cost_delay = 0
);
COMMENT ON TABLE meetcache.queue IS
  'Keys (already prefixed), SCAN patterns and lookups to resolve again of committed transactions, waiting for a drain worker.';

CREATE FUNCTION meetcache._queue_row_delivered(row_xmin xid) RETURNS boolean
  LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'meetcache_queue_row_delivered';

CREATE VIEW meetcache.pending AS
  SELECT q.id, q.enqueued_at, clock_timestamp() - q.enqueued_at AS age,
         cardinality(q.keys) AS nkeys, coalesce(cardinality(q.patterns), 0) AS npatterns,
         meetcache._queue_row_delivered(q.xmin) AS delivered,
         q.keys, q.patterns,
         coalesce(cardinality(q.lookups), 0) AS nlookups, q.lookups
  FROM meetcache.queue q
  ORDER BY q.id;
COMMENT ON VIEW meetcache.pending IS
  'Queue rows a drain worker has not removed yet, oldest first; delivered: the committing backend already deleted the keys (sync+queue); lookups are resolved again by the drain in any case.';

CREATE VIEW meetcache.stats AS
  SELECT s.*, q.queue_depth, q.oldest_pending_age, c.*, l.*
  FROM meetcache.stats() s,
       LATERAL (SELECT count(*) AS queue_depth,
                       clock_timestamp() - min(p.enqueued_at) AS oldest_pending_age
                FROM meetcache.pending p WHERE NOT p.delivered) q,
       meetcache.cluster_stats() c,
       meetcache.lookup_stats() l;
COMMENT ON VIEW meetcache.stats IS
  'Counters (cluster-wide when preloaded), worker and Redis state, and this database''s undelivered queue rows.';

CREATE FUNCTION meetcache.invalidate_all() RETURNS void
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_invalidate_all';
COMMENT ON FUNCTION meetcache.invalidate_all() IS
  'Delete every key under meetcache.key_prefix when this transaction commits (after writes made without triggers).';

------------------------------------------------------------------------
-- Catalog validation: bad rules are refused when written
------------------------------------------------------------------------

-- the placeholder names of a template, from the parser the rules are compiled with
CREATE FUNCTION meetcache._placeholders(template text) RETURNS text[]
  LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'meetcache_template_placeholders';

-- templates and ttl_by_value, checked by the code that loads them
CREATE FUNCTION meetcache._check_family() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_check_family';

CREATE FUNCTION meetcache._check_rule() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  tmpl text;
  n integer;
BEGIN
  SELECT template INTO tmpl FROM meetcache.families WHERE name = NEW.family;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown cache key family "%"', NEW.family
      USING ERRCODE = 'undefined_object',
            HINT = 'Add it to meetcache.families first.';
  END IF;
  n := cardinality(meetcache._placeholders(tmpl));
  IF NEW.args IS NOT NULL AND cardinality(NEW.args) <> n THEN
    RAISE EXCEPTION 'rule for table "%" gives % arguments, family "%" takes %',
        NEW.table_name, cardinality(NEW.args), NEW.family, n
      USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('The template is "%s"; args name one column per placeholder, in order.', tmpl);
  END IF;
  IF NEW.args IS NOT NULL AND array_position(NEW.args, NULL) IS NOT NULL THEN
    RAISE EXCEPTION 'rule args must not contain NULL' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF NEW.when_values IS NOT NULL AND cardinality(NEW.when_values) = 0 THEN
    RAISE EXCEPTION 'when_values must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN NEW;
END $$;

-- after any change, every attached table must still compile against the rules
CREATE FUNCTION meetcache._check_attached() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  a record;
BEGIN
  FOR a IN SELECT relation, table_name FROM meetcache.attached LOOP
    PERFORM meetcache._check_table(a.relation, a.table_name);
  END LOOP;
  RETURN NULL;
END $$;

CREATE TRIGGER check_family BEFORE INSERT OR UPDATE ON meetcache.families
  FOR EACH ROW EXECUTE FUNCTION meetcache._check_family();
CREATE TRIGGER check_rule BEFORE INSERT OR UPDATE ON meetcache.rules
  FOR EACH ROW EXECUTE FUNCTION meetcache._check_rule();
CREATE TRIGGER rules_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON meetcache.rules
  FOR EACH STATEMENT EXECUTE FUNCTION meetcache._rules_changed();
CREATE TRIGGER families_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON meetcache.families
  FOR EACH STATEMENT EXECUTE FUNCTION meetcache._rules_changed();
-- checked at COMMIT, so that the rules and the tables can change together
-- in one transaction (rename a column and the rules that name it)
CREATE CONSTRAINT TRIGGER check_attached AFTER INSERT OR UPDATE OR DELETE ON meetcache.rules
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION meetcache._check_attached();
CREATE CONSTRAINT TRIGGER check_attached AFTER INSERT OR UPDATE OR DELETE ON meetcache.families
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION meetcache._check_attached();
-- the checks hold under session_replication_role = replica too
ALTER TABLE meetcache.families ENABLE ALWAYS TRIGGER check_family,
  ENABLE ALWAYS TRIGGER families_changed, ENABLE ALWAYS TRIGGER check_attached;
ALTER TABLE meetcache.rules ENABLE ALWAYS TRIGGER check_rule,
  ENABLE ALWAYS TRIGGER rules_changed, ENABLE ALWAYS TRIGGER check_attached;

------------------------------------------------------------------------
-- Attaching tables
------------------------------------------------------------------------

CREATE VIEW meetcache.attached AS
  SELECT t.tgrelid::regclass AS relation,
         convert_from(split_part(encode(t.tgargs, 'escape'), '\000', 1)::bytea, 'UTF8') AS table_name,
         count(*)::integer AS triggers,
         bool_and(t.tgenabled = 'A') AS enabled_always
  FROM pg_catalog.pg_trigger t
  WHERE t.tgfoid = 'meetcache.invalidate_trigger()'::regprocedure
  GROUP BY 1, 2;
COMMENT ON VIEW meetcache.attached IS
  'Tables with meetcache triggers and the rule table name they use.';

CREATE FUNCTION meetcache.detach(tbl regclass) RETURNS void
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_detach';
COMMENT ON FUNCTION meetcache.detach(regclass) IS
  'Drop the meetcache triggers of a table and of its partitions and children (caller must own them).';

CREATE FUNCTION meetcache.attach(tbl regclass, table_name text DEFAULT NULL) RETURNS void
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_attach';
COMMENT ON FUNCTION meetcache.attach(regclass, text) IS
  'Create the invalidation triggers (ENABLE ALWAYS) on a table and its partitions and children (caller must own it); rules are those of table_name (default: the table''s name).';

CREATE FUNCTION meetcache.attach_defaults(schema_name name DEFAULT current_schema())
  RETURNS SETOF regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  t text;
  rel regclass;
BEGIN
  FOREACH t IN ARRAY ARRAY['users', 'meetings', 'participants', 'chat_messages', 'recordings'] LOOP
    rel := to_regclass(format('%I.%I', schema_name, t));
    IF rel IS NULL THEN
      RAISE EXCEPTION 'table %.% does not exist', schema_name, t
        USING ERRCODE = 'undefined_table',
              HINT = 'attach_defaults() attaches users, meetings, participants, chat_messages and recordings of one schema.';
    END IF;
  END LOOP;
  FOREACH t IN ARRAY ARRAY['users', 'meetings', 'participants', 'chat_messages', 'recordings'] LOOP
    rel := format('%I.%I', schema_name, t)::regclass;
    PERFORM meetcache.attach(rel);
    RETURN NEXT rel;
  END LOOP;
END $$;
COMMENT ON FUNCTION meetcache.attach_defaults(name) IS
  'Attach the five tables of the default key scheme in one schema.';

CREATE FUNCTION meetcache.affected_keys(tbl regclass, old_row jsonb, new_row jsonb)
  RETURNS TABLE (key text, family text, rule_id integer)
  LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  bad text;
BEGIN
  IF tbl IS NULL THEN
    RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  FOR bad IN
    SELECT k FROM (SELECT jsonb_object_keys(coalesce(old_row, '{}') || coalesce(new_row, '{}')) AS k) s
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = tbl AND a.attname = s.k AND a.attnum > 0 AND NOT a.attisdropped)
  LOOP
    RAISE EXCEPTION 'column "%" of table "%" does not exist', bad, tbl::text
      USING ERRCODE = 'undefined_column';
  END LOOP;
  RETURN QUERY
    SELECT DISTINCT ON (k.key, k.rule_id) k.key, k.family, k.rule_id
    FROM meetcache._affected_keys(tbl, old_row, new_row) k
    ORDER BY k.key, k.rule_id;
END $$;
COMMENT ON FUNCTION meetcache.affected_keys(regclass, jsonb, jsonb) IS
  'Dry run: the keys (without key_prefix) that changing old_row into new_row would delete. NULL old_row = INSERT, NULL new_row = DELETE.';

------------------------------------------------------------------------
-- Privileges: reading, writing and deleting cache data is not for PUBLIC
------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA meetcache FROM PUBLIC;
GRANT USAGE ON SCHEMA meetcache TO PUBLIC;
GRANT SELECT ON meetcache.families, meetcache.rules, meetcache.attached TO PUBLIC;
REVOKE EXECUTE ON FUNCTION
  meetcache.cache_get(text), meetcache.cache_set(text, jsonb, integer),
  meetcache.cache_del(text[]), meetcache.cache_del_pattern(text),
  meetcache.cache_exists(text), meetcache.cache_ttl(text),
  meetcache.cache_keys(text, integer), meetcache.cache_get_or_set(text, text, integer, text[]),
  meetcache.stats_reset(), meetcache.attach(regclass, text), meetcache.detach(regclass),
  meetcache.attach_defaults(name), meetcache.affected_keys(regclass, jsonb, jsonb),
  meetcache._affected_keys(regclass, jsonb, jsonb), meetcache._check_table(regclass, text),
  meetcache.invalidate_all(),
  -- only attach() (as the bootstrap superuser) creates triggers calling it
  meetcache.invalidate_trigger(),
  meetcache._placeholders(text), meetcache._queue_row_delivered(xid)
  FROM PUBLIC;
-- stats() itself admits pg_read_all_stats members; so does its view
GRANT SELECT ON meetcache.stats TO pg_read_all_stats;

------------------------------------------------------------------------
-- The guard: nobody but a superuser switches invalidation off.  Created
-- last: it fires for every DDL command that follows.
------------------------------------------------------------------------

CREATE FUNCTION meetcache._guard_start() RETURNS event_trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_guard_start';
CREATE FUNCTION meetcache._guard_end() RETURNS event_trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_guard_end';
CREATE FUNCTION meetcache._guard_rewrite() RETURNS event_trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_guard_rewrite';

CREATE EVENT TRIGGER meetcache_guard_start ON ddl_command_start
  EXECUTE FUNCTION meetcache._guard_start();
CREATE EVENT TRIGGER meetcache_guard_end ON ddl_command_end
  EXECUTE FUNCTION meetcache._guard_end();
CREATE EVENT TRIGGER meetcache_guard_rewrite ON table_rewrite
  EXECUTE FUNCTION meetcache._guard_rewrite();
-- event triggers are skipped under session_replication_role = replica
-- unless enabled ALWAYS, like the table triggers themselves
ALTER EVENT TRIGGER meetcache_guard_start ENABLE ALWAYS;
ALTER EVENT TRIGGER meetcache_guard_end ENABLE ALWAYS;
ALTER EVENT TRIGGER meetcache_guard_rewrite ENABLE ALWAYS;
