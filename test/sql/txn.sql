-- txn: keys are deleted after commit only, exactly once, and never for
-- work that rolls back; bulk writes stay bounded; nothing can skip it.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS meetcache;
DROP SCHEMA IF EXISTS t_txn CASCADE;
CREATE SCHEMA t_txn;
SET search_path = t_txn, public;
\i test/fixtures/meet_snake.sql
RESET client_min_messages;
SELECT count(*) FROM meetcache.attach_defaults('t_txn');
SELECT meetcache.cache_del_pattern('*') >= 0 AS flushed;

CREATE TABLE t_txn_untracked (i int);
INSERT INTO users VALUES ('u1', 'Ann', 'ann@example.com', NULL), ('u2', 'Bob', 'bob@example.com', NULL);
INSERT INTO meetings (id, title, host_id, invite_code, status)
VALUES ('m1', 'One', 'u1', 'inv1', 'LIVE'), ('m2', 'Two', 'u2', 'inv2', 'SCHEDULED');

-- helpers: fill a few keys (once the drains have resolved earlier lookups
-- again), and list which of them are gone
\i test/fixtures/wait_queue.sql
CREATE FUNCTION fill() RETURNS void LANGUAGE sql AS $$
  SELECT wait_queue_empty();
  SELECT meetcache.cache_set(k, '1', 600)
  FROM unnest(ARRAY['meeting:m1', 'meeting:m2', 'meeting:invite:inv1', 'meetings:live',
                    'meetings:scheduled', 'user:u1', 'unrelated:key']) k;
$$;
CREATE FUNCTION gone() RETURNS text LANGUAGE sql AS $$
  SELECT coalesce(string_agg(k, ' ' ORDER BY k), '(none)')
  FROM unnest(ARRAY['meeting:m1', 'meeting:m2', 'meeting:invite:inv1', 'meetings:live',
                    'meetings:scheduled', 'user:u1', 'unrelated:key']) k
  WHERE NOT meetcache.cache_exists(k);
$$;

-- deleted after COMMIT, not before
SELECT fill();
BEGIN;
UPDATE meetings SET title = 'One!' WHERE id = 'm1';
SELECT gone() AS before_commit;
COMMIT;
SELECT gone() AS after_commit;

-- nothing for a rollback
SELECT fill();
BEGIN;
UPDATE meetings SET title = 'x' WHERE id = 'm1';
ROLLBACK;
SELECT gone() AS after_rollback;

-- a rolled-back savepoint contributes nothing; a released one does
SELECT fill();
BEGIN;
UPDATE meetings SET title = 'a' WHERE id = 'm2';
SAVEPOINT s1;
UPDATE meetings SET title = 'b' WHERE id = 'm1';
SAVEPOINT s2;
UPDATE users SET name = 'Annie' WHERE id = 'u1';
ROLLBACK TO SAVEPOINT s1;
SAVEPOINT s3;
UPDATE users SET image = 'i.png' WHERE id = 'u2';
RELEASE SAVEPOINT s3;
COMMIT;
SELECT gone() AS savepoints;

-- the same key first recorded inside a savepoint that rolls back, then again
SELECT fill();
BEGIN;
SAVEPOINT s1;
UPDATE meetings SET title = 'c' WHERE id = 'm1';
ROLLBACK TO SAVEPOINT s1;
UPDATE meetings SET title = 'd' WHERE id = 'm1';
COMMIT;
SELECT gone() AS rerecorded;

-- PL/pgSQL exception blocks are subtransactions too
SELECT fill();
DO $$
BEGIN
  BEGIN
    UPDATE meetings SET title = 'e' WHERE id = 'm2';
    RAISE EXCEPTION 'boom';
  EXCEPTION WHEN raise_exception THEN NULL;
  END;
END $$;
SELECT gone() AS exception_block;

-- session_replication_role = replica cannot skip ENABLE ALWAYS triggers
SELECT fill();
SET session_replication_role = replica;
UPDATE meetings SET title = 'f' WHERE id = 'm1';
RESET session_replication_role;
SELECT gone() AS replica_role;

-- COPY fires the triggers like INSERT
SELECT fill();
COPY meetings (id, title, host_id, invite_code, status) FROM stdin;
m3	Three	u1	inv3	LIVE
\.
SELECT gone() AS after_copy;

-- keys are deduplicated per transaction
SELECT keys_queued AS q0 FROM meetcache.stats \gset
INSERT INTO users SELECT 'b' || g, 'n', 'b' || g || '@example.com', NULL FROM generate_series(1, 10000) g;
SELECT keys_queued - :q0 AS distinct_keys_for_10000_users FROM meetcache.stats;
SELECT keys_queued AS q0 FROM meetcache.stats \gset
BEGIN;
INSERT INTO participants (id, meeting_id, user_id)
SELECT 'p' || g, 'm1', 'b' || g FROM generate_series(1, 10000) g;
UPDATE participants SET left_at = now() WHERE meeting_id = 'm1';
COMMIT;
-- meeting:m1:participants, ...:count, meeting:m1, meetings:live once; one participations key per user
SELECT keys_queued - :q0 AS distinct_keys_for_10000_joins FROM meetcache.stats;

-- past meetcache.max_keys, whole families are deleted instead (never stale)
SELECT fill();
SELECT meetcache.cache_set('user:b5', '1', 600), meetcache.cache_set('user:email:b5@example.com', '1', 600);
SET meetcache.max_keys = 50;
SET client_min_messages = notice;
UPDATE users SET name = 'bulk' WHERE id LIKE 'b%';
RESET client_min_messages;
RESET meetcache.max_keys;
SELECT gone() AS overflow,
       meetcache.cache_exists('user:b5') AS b5_left,
       meetcache.cache_exists('user:email:b5@example.com') AS b5_email_left;

-- a family replaced by its pattern inside a savepoint that rolls back is
-- covered no more: later writes record its exact keys again (and the
-- rolled-back pattern deletes nothing)
SELECT fill();
SELECT meetcache.cache_set('user:b5', '1', 600);
BEGIN;
SET LOCAL meetcache.max_keys = 50;
SET LOCAL client_min_messages = warning;
SAVEPOINT s1;
UPDATE users SET name = 'bulk2' WHERE id LIKE 'b%';
ROLLBACK TO SAVEPOINT s1;
UPDATE users SET name = 'Ann2' WHERE id = 'u1';
COMMIT;
SELECT gone() AS overflow_rolled_back, meetcache.cache_exists('user:b5') AS b5_left;

-- covered under one key prefix only: keys under another are still recorded
SET meetcache.key_prefix = 'p2:';
SELECT meetcache.cache_set('user:u1', '1', 600);
RESET meetcache.key_prefix;
BEGIN;
SET LOCAL meetcache.max_keys = 50;
SET LOCAL client_min_messages = warning;
UPDATE users SET name = 'bulk3' WHERE id LIKE 'b%';
SET LOCAL meetcache.key_prefix = 'p2:';
UPDATE users SET name = 'Ann3' WHERE id = 'u1';
COMMIT;
SET meetcache.key_prefix = 'p2:';
SELECT meetcache.cache_exists('user:u1') AS p2_u1_left;
RESET meetcache.key_prefix;

-- a 100k-row bulk UPDATE
INSERT INTO meetings (id, title, host_id, invite_code, status)
SELECT 'bm' || g, 't', 'u2', 'binv' || g, 'ENDED' FROM generate_series(1, 100000) g;
SELECT fill();
SELECT meetcache.cache_set('meeting:bm77777', '1', 600), meetcache.cache_set('meeting:invite:binv5', '1', 600);
SET client_min_messages = warning;
UPDATE meetings SET title = 'bulk' WHERE id LIKE 'bm%';
RESET client_min_messages;
SELECT gone() AS bulk_update,
       meetcache.cache_exists('meeting:bm77777') AS bm_left,
       meetcache.cache_exists('meeting:invite:binv5') AS binv_left;

-- TRUNCATE deletes every key the table's rules could have produced
SELECT fill();
SELECT meetcache.cache_set('meeting:zz:recording', '1', 600),
       meetcache.cache_set('meeting:zz:participants', '1', 600),
       meetcache.cache_set('user:zz:participations', '1', 600);
TRUNCATE recordings;
SELECT meetcache.cache_exists('meeting:zz:recording') AS recording_left,
       meetcache.cache_exists('meeting:zz:participants') AS participants_left;
TRUNCATE participants;
SELECT meetcache.cache_exists('meeting:zz:participants') AS participants_left,
       meetcache.cache_exists('user:zz:participations') AS participations_left,
       gone() AS truncate_participants;

-- the same with a key prefix: every family of the table goes, not only the first
SET meetcache.key_prefix = 'p[1]*:';
SELECT meetcache.cache_set(k, '1', 600)
FROM unnest(ARRAY['meeting:zz:participants', 'meeting:zz:participants:count', 'meeting:zz',
                  'user:zz:participations', 'meetings:live', 'meetings:scheduled']) k;
TRUNCATE participants;
SELECT k, meetcache.cache_exists(k) AS still_there
FROM unnest(ARRAY['meeting:zz:participants', 'meeting:zz:participants:count', 'meeting:zz',
                  'user:zz:participations', 'meetings:live', 'meetings:scheduled']) k;
RESET meetcache.key_prefix;

-- two-phase commit: the keys are queued at PREPARE, in every mode, and
-- deleted by the worker after COMMIT PREPARED, never after ROLLBACK PREPARED
SELECT wait_queue_empty();
SELECT fill();
SET meetcache.delivery = 'sync';
BEGIN;
UPDATE meetings SET title = 'g' WHERE id = 'm1';
PREPARE TRANSACTION 'mc1';
RESET meetcache.delivery;
SELECT count(*) AS rows_visible_while_prepared FROM meetcache.queue;
SELECT gone() AS after_prepare;
ROLLBACK PREPARED 'mc1';
SELECT count(*) AS rows_after_rollback FROM meetcache.queue;
SELECT title FROM meetings WHERE id = 'm1';
BEGIN;
UPDATE meetings SET title = 'g' WHERE id = 'm1';
PREPARE TRANSACTION 'mc1';
SELECT gone() AS still_prepared;
COMMIT PREPARED 'mc1';
SELECT wait_queue_empty();
SELECT gone() AS after_commit_prepared;
SELECT title FROM meetings WHERE id = 'm1';
-- a transaction without pending keys prepares without a queue row
BEGIN;
INSERT INTO t_txn_untracked VALUES (1);
PREPARE TRANSACTION 'mc2';
COMMIT PREPARED 'mc2';
SELECT count(*) FROM t_txn_untracked;
SELECT count(*) AS rows_for_untracked FROM meetcache.queue;

-- a dead Redis never fails the transaction: WARNING, commit kept, counted
-- (sync, and a Redis the worker does not serve: nothing retries these keys;
-- the drain only resolves the change's lookups again)
SELECT fill();
SELECT delivery_failures AS f0 FROM meetcache.stats \gset
SET meetcache.delivery = 'sync';
SET meetcache.redis_url = 'redis://127.0.0.1:1/0';
UPDATE meetings SET title = 'committed anyway' WHERE id = 'm1';
RESET meetcache.redis_url;
RESET meetcache.delivery;
SELECT title FROM meetings WHERE id = 'm1';
SELECT delivery_failures - :f0 AS failures FROM meetcache.stats;
SELECT wait_queue_empty();
SELECT gone() AS with_dead_redis;

-- read-only transactions need nothing
BEGIN READ ONLY;
SELECT count(*) FROM meetings WHERE id = 'm1';
COMMIT;

-- detach: writes no longer invalidate
SELECT meetcache.detach('meetings');
SELECT fill();
UPDATE meetings SET title = 'h' WHERE id = 'm1';
SELECT gone() AS detached;
SELECT relation FROM meetcache.attached WHERE relation::text LIKE '%meetings';

SET client_min_messages = warning;
DROP SCHEMA t_txn CASCADE;
SELECT meetcache.cache_del_pattern('*') >= 0 AS cleaned;
