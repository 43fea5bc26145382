-- meetcache 0.1.0 -> 0.2.0: safe to install in a shared database.
\echo Use "ALTER EXTENSION meetcache UPDATE TO '0.2.0'" to load this file. \quit

-- The 0.1.0 guard goes first: it compared a single snapshot and could be
-- defeated by a table owner.
DROP EVENT TRIGGER meetcache_guard_snapshot;
DROP EVENT TRIGGER meetcache_guard_check;
DROP FUNCTION meetcache._guard_check();
DROP FUNCTION meetcache._guard_snapshot();
DROP FUNCTION meetcache._guard_before();
DROP FUNCTION meetcache._trigger_ddl_allowed(oid);

-- attach() and detach() create and drop the triggers themselves, for the
-- table's owner; nothing else may (the trigger function is revoked below)
CREATE OR REPLACE FUNCTION meetcache.detach(tbl regclass) RETURNS void
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_detach';
COMMENT ON FUNCTION meetcache.detach(regclass) IS
  'Drop the meetcache triggers of a table and of its partitions and children (caller must own them).';
CREATE OR REPLACE FUNCTION meetcache.attach(tbl regclass, table_name text DEFAULT NULL) RETURNS void
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_attach';
COMMENT ON FUNCTION meetcache.attach(regclass, text) IS
  'Create the invalidation triggers (ENABLE ALWAYS) on a table and its partitions and children (caller must own it); rules are those of table_name (default: the table''s name).';
DROP FUNCTION meetcache._allow_trigger_ddl(regclass);

-- the catalog accepts exactly what the C rule compiler accepts
CREATE OR REPLACE FUNCTION meetcache._placeholders(template text) RETURNS text[]
  LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'meetcache_template_placeholders';
CREATE OR REPLACE FUNCTION meetcache._check_family() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'meetcache_check_family';
DROP TRIGGER check_attached ON meetcache.rules;
DROP TRIGGER check_attached ON meetcache.families;
CREATE CONSTRAINT TRIGGER check_attached AFTER INSERT OR UPDATE OR DELETE ON meetcache.rules
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION meetcache._check_attached();
CREATE CONSTRAINT TRIGGER check_attached AFTER INSERT OR UPDATE OR DELETE ON meetcache.families
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION meetcache._check_attached();
ALTER TABLE meetcache.families ENABLE ALWAYS TRIGGER check_family,
  ENABLE ALWAYS TRIGGER families_changed, ENABLE ALWAYS TRIGGER check_attached;
ALTER TABLE meetcache.rules ENABLE ALWAYS TRIGGER check_rule,
  ENABLE ALWAYS TRIGGER rules_changed, ENABLE ALWAYS TRIGGER check_attached;

-- lookups travel in the queue row, to be resolved again after commit
ALTER TABLE meetcache.queue ADD COLUMN lookups text[];
COMMENT ON TABLE meetcache.queue IS
  'Keys (already prefixed), SCAN patterns and lookups to resolve again of committed transactions, waiting for a drain worker.';
CREATE OR REPLACE VIEW meetcache.pending AS
  SELECT q.id, q.enqueued_at, clock_timestamp() - q.enqueued_at AS age,
         cardinality(q.keys) AS nkeys, coalesce(cardinality(q.patterns), 0) AS npatterns,
         meetcache._queue_row_delivered(q.xmin) AS delivered,
         q.keys, q.patterns,
         coalesce(cardinality(q.lookups), 0) AS nlookups, q.lookups
  FROM meetcache.queue q
  ORDER BY q.id;
COMMENT ON VIEW meetcache.pending IS
  'Queue rows a drain worker has not removed yet, oldest first; delivered: the committing backend already deleted the keys (sync+queue); lookups are resolved again by the drain in any case.';

-- the Redis Cluster's columns: a function of their own (the same C
-- function as stats()), appended to the stats view, whose columns, grants
-- and dependent objects stay as they are
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
CREATE OR REPLACE VIEW meetcache.stats AS
  SELECT s.*, q.queue_depth, q.oldest_pending_age, c.*, l.*
  FROM meetcache.stats() s,
       LATERAL (SELECT count(*) AS queue_depth,
                       clock_timestamp() - min(p.enqueued_at) AS oldest_pending_age
                FROM meetcache.pending p WHERE NOT p.delivered) q,
       meetcache.cluster_stats() c,
       meetcache.lookup_stats() l;

REVOKE EXECUTE ON FUNCTION
  meetcache.invalidate_trigger(), meetcache._placeholders(text), meetcache._queue_row_delivered(xid)
  FROM PUBLIC;
-- stats() itself admits pg_read_all_stats members; so does its view
GRANT SELECT ON meetcache.stats TO pg_read_all_stats;

-- the 0.2.0 guard, last
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
ALTER EVENT TRIGGER meetcache_guard_start ENABLE ALWAYS;
ALTER EVENT TRIGGER meetcache_guard_end ENABLE ALWAYS;
ALTER EVENT TRIGGER meetcache_guard_rewrite ENABLE ALWAYS;
