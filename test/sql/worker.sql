-- worker: the durable queue, the delivery modes, the guard against
-- switching invalidation off, invalidate_all() and the SQL views.
-- (Fault scenarios with real process failures are in test/t/008_*.)
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS meetcache;
DROP SCHEMA IF EXISTS t_wk CASCADE;
CREATE SCHEMA t_wk;
SET search_path = t_wk, public;
\i test/fixtures/meet_snake.sql
RESET client_min_messages;
SELECT count(*) FROM meetcache.attach_defaults('t_wk');
INSERT INTO users VALUES ('u1', 'Ann', 'ann@example.com', NULL), ('u2', 'Bob', 'bob@example.com', NULL);
INSERT INTO meetings (id, title, host_id, invite_code, status)
VALUES ('m1', 'One', 'u1', 'inv1', 'LIVE'), ('m2', 'Two', 'u2', 'inv2', 'SCHEDULED');

\i test/fixtures/wait_queue.sql
-- keys are filled once the drains have resolved earlier lookups again
CREATE FUNCTION fill() RETURNS void LANGUAGE sql AS $$
  SELECT wait_queue_empty();
  SELECT meetcache.cache_set(k, '1', 600)
  FROM unnest(ARRAY['meeting:m1', 'meeting:m2', 'meetings:live', 'user:u1', 'unrelated:key']) k;
$$;
CREATE FUNCTION gone() RETURNS text LANGUAGE sql AS $$
  SELECT coalesce(string_agg(k, ' ' ORDER BY k), '(none)')
  FROM unnest(ARRAY['meeting:m1', 'meeting:m2', 'meetings:live', 'user:u1', 'unrelated:key']) k
  WHERE NOT meetcache.cache_exists(k);
$$;
SELECT wait_queue_empty();

-- the modes
SHOW meetcache.delivery;
SET meetcache.delivery = 'queue';
SET meetcache.delivery = 'sync+queue';
SET meetcache.delivery = 'sync';
SET meetcache.delivery = 'later';
RESET meetcache.delivery;

-- queue: one row per transaction, deduplicated keys, deleted by the worker
SELECT fill();
SELECT queue_rows_written AS w0 FROM meetcache.stats \gset
SET meetcache.delivery = 'queue';
BEGIN;
UPDATE meetings SET title = 'a' WHERE id = 'm1';
UPDATE meetings SET title = 'b' WHERE id = 'm1';
-- invisible to others until commit; nothing in this transaction's view yet
SELECT count(*) AS rows_before_commit FROM meetcache.queue;
COMMIT;
RESET meetcache.delivery;
SELECT wait_queue_empty();
SELECT gone() AS after_queue;
SELECT queue_rows_written - :w0 AS rows_written FROM meetcache.stats;

-- a prepared transaction's row appears only at COMMIT PREPARED: rolled
-- back, it leaves nothing
BEGIN;
UPDATE meetings SET title = 'c' WHERE id = 'm1';
UPDATE meetings SET title = 'd' WHERE id = 'm1';
UPDATE users SET name = 'Ann2' WHERE id = 'u1';
PREPARE TRANSACTION 'wk1';
SELECT gid FROM pg_prepared_xacts WHERE gid = 'wk1';
ROLLBACK PREPARED 'wk1';
SELECT count(*) AS rows_after_rollback_prepared FROM meetcache.queue;

-- a rolled-back transaction writes no row
SET meetcache.delivery = 'queue';
BEGIN;
UPDATE meetings SET title = 'e' WHERE id = 'm1';
ROLLBACK;
RESET meetcache.delivery;
SELECT count(*) AS rows_after_rollback FROM meetcache.queue;

-- a savepoint rolled back takes its keys out of the row
SELECT fill();
SET meetcache.delivery = 'queue';
BEGIN;
UPDATE meetings SET title = 'f' WHERE id = 'm2';
SAVEPOINT s;
UPDATE meetings SET title = 'g' WHERE id = 'm1';
ROLLBACK TO s;
COMMIT;
RESET meetcache.delivery;
SELECT wait_queue_empty();
SELECT gone() AS after_savepoint;

-- sync+queue (the default): the backend deletes at once, the drain
-- removes the row without sending it again
SELECT fill();
SELECT queue_rows_skipped AS s0 FROM meetcache.stats \gset
UPDATE meetings SET title = 'h' WHERE id = 'm1';
SELECT gone() AS right_after_commit;
SELECT wait_queue_empty();
SELECT queue_rows_skipped - :s0 >= 0 AS skipped_counted FROM meetcache.stats;

-- read-only transactions write nothing
BEGIN READ ONLY;
SELECT count(*) FROM meetings;
COMMIT;

-- invalidate_all(): every key under the prefix, when the transaction commits
SELECT fill();
SET meetcache.key_prefix = 'wk:';
SELECT meetcache.cache_set('meeting:m1', '1', 600);
SELECT meetcache.cache_set('anything:at:all', '1', 600);
BEGIN;
SELECT meetcache.invalidate_all();
SELECT meetcache.cache_exists('anything:at:all') AS before_commit;
COMMIT;
SELECT wait_queue_empty();
SELECT meetcache.cache_exists('anything:at:all') AS prefixed_after,
       meetcache.cache_exists('meeting:m1') AS prefixed_family_after;
RESET meetcache.key_prefix;
SELECT gone() AS unprefixed_untouched;
BEGIN;
SELECT meetcache.invalidate_all();
ROLLBACK;
SELECT gone() AS after_rolled_back_invalidate_all;

-- the views
SELECT count(*) AS pending_rows FROM meetcache.pending;
SELECT scope, worker_state, redis_state, queue_depth, retry_queue_entries,
       retry_queue_size > 0 AS has_retry_queue
FROM meetcache.stats;
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'meetcache' AND table_name = 'pending' ORDER BY ordinal_position;

-- nobody switches invalidation off by accident
ALTER TABLE meetings DISABLE TRIGGER meetcache_upd;
ALTER TABLE meetings DISABLE TRIGGER ALL;
ALTER TABLE meetings DISABLE TRIGGER USER;
ALTER TABLE meetings ENABLE TRIGGER meetcache_upd;
ALTER TABLE meetings ENABLE REPLICA TRIGGER meetcache_upd;
DROP TRIGGER meetcache_upd ON meetings;
ALTER TRIGGER meetcache_upd ON meetings RENAME TO not_meetcache;
CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE OR REPLACE TRIGGER meetcache_ins AFTER INSERT ON meetings
  FOR EACH STATEMENT EXECUTE FUNCTION noop();
-- a function of the caller's search_path never runs inside the guard
CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$;
ALTER TABLE meetings DISABLE TRIGGER meetcache_upd;
DROP FUNCTION public.quote_ident(name);
SET session_replication_role = replica;
ALTER TABLE meetings DISABLE TRIGGER meetcache_upd;
DROP TRIGGER meetcache_del ON meetings;
-- under replica, the ALWAYS triggers still fire
SELECT fill();
UPDATE meetings SET title = 'r' WHERE id = 'm1';
SELECT wait_queue_empty();
SELECT gone() AS under_replica;
RESET session_replication_role;
SELECT relation, triggers, enabled_always FROM meetcache.attached WHERE relation = 'meetings'::regclass;
-- unrelated ALTER TABLE and re-enabling ALWAYS pass
ALTER TABLE meetings ADD COLUMN note text;
ALTER TABLE meetings DROP COLUMN note;
ALTER TABLE meetings ENABLE ALWAYS TRIGGER meetcache_upd;
-- pg_dump's order: CREATE TRIGGER (ORIGIN), then ENABLE ALWAYS one by one
CREATE TABLE dumped (LIKE users);
CREATE TRIGGER meetcache_ins AFTER INSERT ON dumped REFERENCING NEW TABLE AS meetcache_new
  FOR EACH STATEMENT EXECUTE FUNCTION meetcache.invalidate_trigger('users');
CREATE TRIGGER meetcache_del AFTER DELETE ON dumped REFERENCING OLD TABLE AS meetcache_old
  FOR EACH STATEMENT EXECUTE FUNCTION meetcache.invalidate_trigger('users');
ALTER TABLE dumped ENABLE ALWAYS TRIGGER meetcache_ins;
ALTER TABLE dumped ENABLE ALWAYS TRIGGER meetcache_del;
-- detach() and attach() may, and so may DROP TABLE
SELECT meetcache.detach('dumped');
SELECT meetcache.attach('dumped', 'users');
DROP TABLE dumped;
SELECT meetcache.detach('meetings');
SELECT count(*) AS meetings_triggers FROM meetcache.attached WHERE relation = 'meetings'::regclass;
SELECT meetcache.attach('meetings');
SELECT relation, triggers, enabled_always FROM meetcache.attached WHERE relation = 'meetings'::regclass;
-- non-superusers cannot detach without EXECUTE, nor invalidate_all
CREATE ROLE wk_user;
SET ROLE wk_user;
SELECT meetcache.detach('pg_class');
SELECT meetcache.invalidate_all();
RESET ROLE;
DROP ROLE wk_user;

SELECT wait_queue_empty();
DROP SCHEMA t_wk CASCADE;
