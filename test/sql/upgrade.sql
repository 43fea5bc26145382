-- upgrade: ALTER EXTENSION meetcache UPDATE from every released version
-- gives the same objects as a fresh CREATE EXTENSION, and keeps attached
-- tables invalidating.
\set VERBOSITY terse
SET client_min_messages = warning;
CREATE DATABASE mc_upgrade_fresh;
CREATE DATABASE mc_upgrade_010;

\c mc_upgrade_fresh
SET client_min_messages = warning;
CREATE EXTENSION meetcache;
SELECT extversion FROM pg_extension WHERE extname = 'meetcache';
\i test/sql/upgrade_listing.inc
SELECT current_setting('data_directory') || '/meetcache_fresh_listing.txt' AS listing_file \gset
COPY (SELECT * FROM public.mc_listing()) TO :'listing_file';

\c mc_upgrade_010
SET client_min_messages = warning;
CREATE EXTENSION meetcache VERSION '0.1.0';
-- tables attached under 0.1.0 keep invalidating across the update
\i test/fixtures/meet_snake.sql
SELECT count(*) FROM meetcache.attach_defaults('public');
-- until the update, the 0.2.0 library serves the 0.1.0 objects: its queue
-- has no lookups column, so lookups run at statement time as in 0.1.0
\i test/fixtures/wait_queue.sql
INSERT INTO users (id, name, email) VALUES ('h1', 'Old', 'h1@x');
INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES ('hm1', 't', 'h1', 'hinv1', 'ENDED');
SELECT meetcache.cache_set('meeting:hm1', '1', 600);
SET meetcache.delivery = 'queue';
UPDATE users SET name = 'New' WHERE id = 'h1';
RESET meetcache.delivery;
SELECT wait_queue_empty();
SELECT meetcache.cache_exists('meeting:hm1') AS hosted_meeting_cached_before_update;
-- the 0.2.0 library fills the 0.1.0 declaration of stats(); a grant made
-- on its view and a view built on it survive the update
SELECT scope IS NOT NULL AS stats_of_010, breaker_trips >= 0 AS counters_of_010 FROM meetcache.stats;
CREATE ROLE mc_upgrade_monitor;
GRANT SELECT ON meetcache.stats TO mc_upgrade_monitor;
CREATE VIEW mc_upgrade_watch AS SELECT scope, keys_deleted FROM meetcache.stats;
-- a family and a rule users added, and a queue row still waiting (the
-- drains of this database talk to a Redis that is not there) survive it
INSERT INTO meetcache.families (name, template, ttl_seconds) VALUES ('note', 'note:{id}', 60);
INSERT INTO meetcache.rules (table_name, family, args) VALUES ('notes', 'note', '{id}');
CREATE TABLE notes (id int PRIMARY KEY, body text);
SELECT meetcache.attach('notes');
INSERT INTO notes VALUES (1, 'a');
SELECT meetcache.cache_set('note:1', '1', 600);
-- (no drain may still be running with the good URL once the bad one is set: a drain
-- reads the database's settings when it connects, and the launcher polls every second)
SELECT wait_queue_empty();
ALTER DATABASE mc_upgrade_010 SET meetcache.redis_url = 'redis://127.0.0.1:1/0';
DO $$ BEGIN
  FOR i IN 1..600 LOOP
    EXIT WHEN (SELECT drains_running FROM meetcache.stats()) = 0;
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
SET meetcache.delivery = 'queue';
UPDATE notes SET body = 'b' WHERE id = 1;
RESET meetcache.delivery;
SELECT count(*) AS waiting_rows FROM meetcache.queue;
ALTER EXTENSION meetcache UPDATE;
SELECT count(*) AS rows_after_update FROM meetcache.queue;
SELECT has_table_privilege('mc_upgrade_monitor', 'meetcache.stats', 'SELECT') AS stats_grant_kept;
SELECT scope IS NOT NULL AS dependent_view_works FROM mc_upgrade_watch;
DROP VIEW mc_upgrade_watch;
REVOKE SELECT ON meetcache.stats FROM mc_upgrade_monitor;
DROP ROLE mc_upgrade_monitor;
-- the Redis Cluster columns: on a single server, no topology
SELECT moved_redirects, ask_redirects, slot_map_loads, cluster_nodes, cluster_topology,
       slot_map_loaded_at FROM meetcache.stats;
ALTER DATABASE mc_upgrade_010 RESET meetcache.redis_url;
SELECT wait_queue_empty();
SELECT meetcache.cache_exists('note:1') AS note_cached_after_drain;
SELECT f.name, r.table_name, r.args FROM meetcache.families f JOIN meetcache.rules r ON r.family = f.name
WHERE NOT f.builtin;
DROP TABLE notes;
DELETE FROM meetcache.rules WHERE NOT builtin;
DELETE FROM meetcache.families WHERE NOT builtin;
DROP FUNCTION wait_queue_empty();
SELECT extversion FROM pg_extension WHERE extname = 'meetcache';
\i test/sql/upgrade_listing.inc
CREATE TEMP TABLE fresh (l text);
COPY fresh FROM :'listing_file';
-- no difference either way
(SELECT 'only after UPDATE' AS side, l FROM public.mc_listing() l EXCEPT SELECT 'only after UPDATE', l FROM fresh)
UNION ALL
(SELECT 'only in a fresh install', l FROM fresh EXCEPT SELECT 'only in a fresh install', l FROM public.mc_listing() l)
ORDER BY 1, 2;
SELECT count(*) > 50 AS listed FROM fresh;
SELECT relation, table_name, triggers, enabled_always FROM meetcache.attached ORDER BY relation::text;
SELECT meetcache.cache_set('user:u1', '1', 600);
INSERT INTO users (id, name, email) VALUES ('u1', 'A', 'a@x');
SELECT meetcache.cache_exists('user:u1') AS cached_after_insert;
-- the 0.2.0 guard is in place
ALTER TABLE users DISABLE TRIGGER meetcache_upd;
CREATE ROLE mc_upgrade_role;
SET ROLE mc_upgrade_role;
SELECT meetcache.attach('users');
RESET ROLE;
DROP ROLE mc_upgrade_role;

\c contrib_regression
DROP DATABASE mc_upgrade_fresh;
DROP DATABASE mc_upgrade_010;
