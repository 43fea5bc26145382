-- Invalidation matrix of docs/keys.md on the snake_case reference schema (test/fixtures/meet_snake.sql).
-- Cases: test/sql/matrix_body.inc (shared with the other schema's suite).
-- Oracle: test/matrix_expected.md. Paths are relative to the repository top level.
SET client_min_messages = warning;
\set ECHO none
SELECT NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'meetcache') AS mx_own_extension \gset
CREATE EXTENSION IF NOT EXISTS meetcache;
\i test/fixtures/meet_snake.sql
\set ECHO all
SELECT r::text AS attached FROM meetcache.attach_defaults() r ORDER BY 1;
SELECT relation::text, table_name, triggers FROM meetcache.attached ORDER BY 1;
-- Physical column names used by the shared body.
\set data_file test/fixtures/data_snake.sql
\set host_id host_id
\set invite_code invite_code
\set meeting_id meeting_id
\set user_id user_id
\set left_at left_at
\set started_at started_at
\set ended_at ended_at
\set file_url file_url
\set duration_seconds duration_seconds
\i test/sql/matrix_body.inc
-- Clean up (the extension only if this suite created it).
\set ECHO none
DROP VIEW deleted_keys, truncate_check;
DROP FUNCTION wait_queue_empty();
DROP TABLE universe, truncate_families;
DROP TABLE recordings, chat_messages, participants, meetings, users;

\if :mx_own_extension
DROP EXTENSION meetcache;
\endif
