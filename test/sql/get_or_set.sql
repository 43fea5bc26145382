-- get_or_set: cache-aside from SQL, the JSON it stores, and when it must
-- not store (uncommitted data, failures)
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS meetcache;
DROP SCHEMA IF EXISTS t_gos CASCADE;
CREATE SCHEMA t_gos;
SET search_path = t_gos, public;
\i test/fixtures/meet_camel.sql
\i test/fixtures/wait_queue.sql
RESET client_min_messages;
SELECT count(*) FROM meetcache.attach_defaults('t_gos');
SELECT meetcache.cache_del_pattern('*') >= 0 AS flushed;
SELECT substring(current_setting('meetcache.redis_url') from ':(\d+)/') AS redis_port \gset
\setenv REDIS_PORT :redis_port

INSERT INTO users (id, name, email, "createdAt") VALUES
  ('u1', 'Ann', 'ann@example.com', '2024-01-02 03:04:05.678'), ('u2', 'Bob', 'bob@example.com', '2024-01-02 03:04:05');
INSERT INTO meetings (id, title, "hostId", "inviteCode", status) VALUES
  ('m1', 'Standup', 'u1', 'inv1', 'LIVE'), ('m2', 'Planning', 'u1', 'inv2', 'SCHEDULED');
-- (a drain deleting these inserts' keys late must not remove what is filled next)
SELECT wait_queue_empty();

-- several columns: an object of the row, in column order, compact
SELECT meetcache.cache_get_or_set(meetcache.key('user', 'u1'),
  'SELECT id, name, email, "createdAt" FROM users WHERE id = $1', NULL, 'u1');
\! redis-cli -p $REDIS_PORT GET user:u1
SELECT meetcache.cache_ttl('user:u1') BETWEEN 590 AND 600 AS family_ttl;
-- a hit does not run the query again (the row changes behind the cache's back)
UPDATE users SET name = 'changed' WHERE id = 'u1';
SELECT meetcache.cache_set('user:u1', '{"stale": true}', 60);
SELECT meetcache.cache_get_or_set('user:u1', 'SELECT 1/0', 60);
-- one column: that value (a number, a json aggregate)
SELECT meetcache.cache_get_or_set(meetcache.key('user_meeting_count', 'u1'),
  'SELECT json_build_object(''total'', count(*), ''live'', count(*) FILTER (WHERE status = ''LIVE'')) FROM meetings WHERE "hostId" = $1',
  300, 'u1');
\! redis-cli -p $REDIS_PORT GET user:u1:meetings:count
SELECT meetcache.cache_get_or_set(meetcache.key('live_meetings'),
  'SELECT coalesce(json_agg(json_build_object(''id'', id, ''title'', title) ORDER BY id), ''[]'') FROM meetings WHERE status = ''LIVE''');
\! redis-cli -p $REDIS_PORT GET meetings:live
-- parameter types come from the query
SELECT meetcache.cache_get_or_set('calc:1', 'SELECT $1 + 1 AS n', 60, '41');
SELECT meetcache.cache_get_or_set('calc:2', 'SELECT $1::date + $2::int', 60, '2024-02-28', '2');
SELECT meetcache.cache_get_or_set('calc:3', 'SELECT coalesce($1, ''was null'')', 60, NULL);
-- no row: JSON null, cached (negative caching)
SELECT meetcache.cache_get_or_set('user:nobody', 'SELECT id FROM users WHERE id = $1', 60, 'nobody');
\! redis-cli -p $REDIS_PORT GET user:nobody
-- ...and a later INSERT of that user deletes the cached null
INSERT INTO users (id, name, email) VALUES ('nobody', 'Now here', 'n@example.com');
SELECT meetcache.cache_exists('user:nobody') AS negative_entry_left;

-- invalidation by the triggers, then a fresh value
UPDATE meetings SET status = 'ENDED' WHERE id = 'm1';
SELECT meetcache.cache_exists('meetings:live') AS live_left,
       meetcache.cache_exists('user:u1:meetings:count') AS count_left;
SELECT meetcache.cache_get_or_set('meetings:live',
  'SELECT coalesce(json_agg(id), ''[]'') FROM meetings WHERE status = ''LIVE''');

-- never publish uncommitted data: a transaction that wrote computes but does not store
BEGIN;
UPDATE meetings SET title = 'Uncommitted' WHERE id = 'm2';
SELECT meetcache.cache_get_or_set('meeting:m2', 'SELECT title FROM meetings WHERE id = $1', 60, 'm2');
ROLLBACK;
SELECT meetcache.cache_exists('meeting:m2') AS stored_from_writer;
BEGIN;
SELECT txid_current() IS NOT NULL AS has_xid;
SELECT meetcache.cache_get_or_set('meeting:m2', 'SELECT title FROM meetings WHERE id = $1', 60, 'm2');
COMMIT;
SELECT meetcache.cache_exists('meeting:m2') AS stored_with_xid;
SELECT meetcache.cache_get_or_set('meeting:m2', 'SELECT title FROM meetings WHERE id = $1', 60, 'm2');
SELECT meetcache.cache_exists('meeting:m2') AS stored_when_clean;

-- nor from a snapshot that may predate a commit (REPEATABLE READ, SERIALIZABLE)
SELECT meetcache.cache_del('meeting:m2');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT meetcache.cache_get_or_set('meeting:m2', 'SELECT title FROM meetings WHERE id = $1', 60, 'm2');
COMMIT;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT meetcache.cache_get_or_set('meeting:m2', 'SELECT title FROM meetings WHERE id = $1', 60, 'm2');
COMMIT;
SELECT meetcache.cache_exists('meeting:m2') AS stored_from_old_snapshot;

-- the query runs read-only, as the caller
CREATE FUNCTION sneaky() RETURNS int LANGUAGE plpgsql AS $$
BEGIN UPDATE users SET name = 'hacked'; RETURN 1; END $$;
SELECT meetcache.cache_get_or_set('x:1', 'SELECT sneaky()', 60);
SELECT count(*) FROM users WHERE name = 'hacked';
SELECT meetcache.cache_get_or_set('x:2', 'UPDATE users SET name = ''x'' RETURNING 1', 60);
SELECT meetcache.cache_get_or_set('x:3', 'SELECT 1; SELECT 2', 60);
SELECT meetcache.cache_get_or_set('x:4', 'SELECT id FROM users', 60);
SELECT meetcache.cache_get_or_set('x:5', 'SELECT $2', 60, 'a', 'b');
SELECT meetcache.cache_get_or_set('x:6', 'SELECT $1', 60);
SELECT meetcache.cache_get_or_set('x:7', 'SELECT 1/0', 60);
SELECT meetcache.cache_get_or_set('x:8', 'SELEC 1', 60);
SELECT meetcache.cache_get_or_set('x:9', NULL, 60);
SELECT meetcache.cache_get_or_set('x:10', 'SELECT 1', 0);
SELECT meetcache.cache_get_or_set('x:11', 'SELECT 1');
SELECT key FROM meetcache.cache_keys('x:*');
CREATE ROLE mc_reader;
GRANT USAGE ON SCHEMA t_gos TO mc_reader;
GRANT EXECUTE ON FUNCTION meetcache.cache_get_or_set(text, text, integer, text[]) TO mc_reader;
SET ROLE mc_reader;
SELECT meetcache.cache_get_or_set('x:12', 'SELECT count(*) FROM users', 60);
RESET ROLE;
REVOKE ALL ON SCHEMA t_gos FROM mc_reader;
REVOKE EXECUTE ON FUNCTION meetcache.cache_get_or_set(text, text, integer, text[]) FROM mc_reader;
DROP ROLE mc_reader;

-- a dead Redis: the query result comes back, with a WARNING, uncached
SET meetcache.redis_url = 'redis://127.0.0.1:1/0';
SELECT meetcache.cache_get_or_set('user:u2', 'SELECT name FROM users WHERE id = $1', 60, 'u2');
RESET meetcache.redis_url;
SELECT meetcache.cache_exists('user:u2') AS stored_while_down;

-- leases: a miss takes "mc-lease:u:{key}"; another session's lease makes us wait
-- (lease_wait), then compute without storing
SELECT meetcache.cache_del_pattern('*') >= 0 AS flushed;
\! redis-cli -p $REDIS_PORT SET 'mc-lease:u:{meeting:m2}' someone-else PX 10000 > /dev/null
SET meetcache.lease_wait = 100;
SELECT lease_waits AS w0, lease_timeouts AS t0 FROM meetcache.stats \gset
SELECT meetcache.cache_get_or_set('meeting:m2', 'SELECT title FROM meetings WHERE id = $1', 60, 'm2');
SELECT meetcache.cache_exists('meeting:m2') AS stored_under_foreign_lease,
       (SELECT lease_waits - :w0 FROM meetcache.stats) AS waits,
       (SELECT lease_timeouts - :t0 FROM meetcache.stats) AS timeouts;
RESET meetcache.lease_wait;
-- an invalidation cancels the lease with the key (the holder's store would be refused)
UPDATE meetings SET title = 'Planning' WHERE id = 'm2';
\! redis-cli -p $REDIS_PORT EXISTS 'mc-lease:u:{meeting:m2}'
-- so do cache_del, cache_set and cache_del_pattern (including leases of absent keys)
\! redis-cli -p $REDIS_PORT SET 'mc-lease:u:{x:1}' t PX 10000 > /dev/null
\! redis-cli -p $REDIS_PORT SET 'mc-lease:u:{x:2}' t PX 10000 > /dev/null
\! redis-cli -p $REDIS_PORT SET 'mc-lease:u:{x:3}' t PX 10000 > /dev/null
SELECT meetcache.cache_set('x:2', '2', 60);
SELECT meetcache.cache_set('x:1', '1', 60);
SELECT meetcache.cache_del('x:1');
SELECT meetcache.cache_del_pattern('x:*');
\! redis-cli -p $REDIS_PORT --scan --pattern 'mc-lease:*'
-- the lease itself: taken on a miss, gone once the value is stored
SELECT meetcache.cache_get_or_set('meeting:m1', 'SELECT title FROM meetings WHERE id = $1', 60, 'm1');
\! redis-cli -p $REDIS_PORT --scan --pattern '*meeting:m1*'
-- a transaction with pending invalidations does not read the key it is invalidating
SELECT meetcache.cache_set('meeting:m1', '"cached before the update"', 60);
BEGIN;
UPDATE meetings SET title = 'Standup v2' WHERE id = 'm1';
SELECT meetcache.cache_get_or_set('meeting:m1', 'SELECT title FROM meetings WHERE id = $1', 60, 'm1');
COMMIT;
SELECT meetcache.cache_exists('meeting:m1') AS deleted_at_commit;
-- hash-tagged keys get a lease that keeps their tag; an error after the query
-- (here: JSON that jsonb rejects) gives the lease back
SELECT meetcache.cache_get_or_set('{t}:k', 'SELECT ''"\u0000"''::json', 60);
\! redis-cli -p $REDIS_PORT --scan --pattern 'mc-lease:*'
-- the test-only switch: plain GET/SET without a lease
SET meetcache.lease_check = off;
SELECT meetcache.cache_get_or_set('meeting:m2', 'SELECT title FROM meetings WHERE id = $1', 60, 'm2');
RESET meetcache.lease_check;
SELECT meetcache.cache_exists('meeting:m2') AS stored_without_lease;

-- a family can take its TTL from the value: recordings, 30 s while PROCESSING
SELECT ttl_field, ttl_by_value, ttl_seconds FROM meetcache.families WHERE name = 'meeting_recording';
INSERT INTO recordings (id, "meetingId", status) VALUES ('r1', 'm1', 'PROCESSING');
SELECT meetcache.cache_get_or_set(meetcache.key('meeting_recording', 'm1'),
  'SELECT status, "fileUrl" FROM recordings WHERE "meetingId" = $1', NULL, 'm1');
SELECT meetcache.cache_ttl('meeting:m1:recording') BETWEEN 25 AND 30 AS processing_ttl;
UPDATE recordings SET status = 'READY', "fileUrl" = 'https://f/r1.mp4' WHERE id = 'r1';
SELECT meetcache.cache_get_or_set(meetcache.key('meeting_recording', 'm1'),
  'SELECT status, "fileUrl" FROM recordings WHERE "meetingId" = $1', NULL, 'm1');
SELECT meetcache.cache_ttl('meeting:m1:recording') BETWEEN 590 AND 600 AS ready_ttl;
UPDATE meetcache.families SET ttl_by_value = '{"PROCESSING": -1}' WHERE name = 'meeting_recording';
UPDATE meetcache.families SET ttl_by_value = '[30]' WHERE name = 'meeting_recording';

SELECT cache_bypasses > 0 AS bypasses_counted FROM meetcache.stats;
SET client_min_messages = warning;
DROP SCHEMA t_gos CASCADE;
SELECT meetcache.cache_del_pattern('*') >= 0 AS cleaned;
