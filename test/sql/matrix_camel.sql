-- Invalidation matrix of docs/keys.md on the camelCase (Prisma default) reference schema (test/fixtures/meet_camel.sql):
-- quoted camelCase columns, enum status types, timestamp(3).
-- Cases: test/sql/matrix_body.inc (shared with the other schema's suite).
-- Oracle: test/matrix_expected.md. Paths are relative to the repository top level.
SET client_min_messages = warning;
\set ECHO none
SELECT NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'meetcache') AS mx_own_extension \gset
CREATE EXTENSION IF NOT EXISTS meetcache;
\i test/fixtures/meet_camel.sql
\set ECHO all
SELECT r::text AS attached FROM meetcache.attach_defaults() r ORDER BY 1;
SELECT relation::text, table_name, triggers FROM meetcache.attached ORDER BY 1;
-- Physical column names used by the shared body.
\set data_file test/fixtures/data_camel.sql
\set host_id '"hostId"'
\set invite_code '"inviteCode"'
\set meeting_id '"meetingId"'
\set user_id '"userId"'
\set left_at '"leftAt"'
\set started_at '"startedAt"'
\set ended_at '"endedAt"'
\set file_url '"fileUrl"'
\set duration_seconds '"durationSeconds"'
\i test/sql/matrix_body.inc
-- Clean up (the extension only if this suite created it).
\set ECHO none
DROP VIEW deleted_keys, truncate_check;
DROP FUNCTION wait_queue_empty();
DROP TABLE universe, truncate_families;
DROP TABLE recordings, chat_messages, participants, meetings, users;
DROP TYPE "MeetingStatus", "RecordingStatus";
\if :mx_own_extension
DROP EXTENSION meetcache;
\endif
