-- rules: the catalog, its validation, attaching tables, custom rules,
-- affected_keys() and key_prefix through the triggers
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS meetcache;
DROP SCHEMA IF EXISTS t_rules CASCADE;
CREATE SCHEMA t_rules;
SET search_path = t_rules, public;
\i test/fixtures/meet_snake.sql
RESET client_min_messages;
SELECT meetcache.cache_del_pattern('*') >= 0 AS flushed;

-- the defaults implement docs/keys.md
SELECT name, template, ttl_seconds FROM meetcache.families ORDER BY name;
SELECT table_name, count(*) AS rules FROM meetcache.rules GROUP BY 1 ORDER BY 1;

-- bad families and rules are refused when written
INSERT INTO meetcache.families (name, template) VALUES ('bad1', 'x:{');
INSERT INTO meetcache.families (name, template) VALUES ('bad2', 'x:{a b}');
INSERT INTO meetcache.families (name, template) VALUES ('Bad', 'x:{id}');
INSERT INTO meetcache.families (name, template, ttl_seconds) VALUES ('bad3', 'x:{id}', 0);
INSERT INTO meetcache.rules (table_name, family) VALUES ('widgets', 'nosuch');
INSERT INTO meetcache.rules (table_name, family, args) VALUES ('widgets', 'meeting', '{a,b}');
INSERT INTO meetcache.rules (table_name, family, on_insert, on_update, on_delete) VALUES ('widgets', 'meeting', false, false, false);
INSERT INTO meetcache.rules (table_name, family, when_column) VALUES ('widgets', 'meeting', 'status');
INSERT INTO meetcache.rules (table_name, family, via_table) VALUES ('widgets', 'meeting', 'meetings');

-- attach: clear errors for tables the rules do not fit
CREATE TABLE notes (id int PRIMARY KEY, body text);
SELECT meetcache.attach('notes');
CREATE TABLE meetings_lite (id text PRIMARY KEY, title text);
SELECT meetcache.attach('meetings_lite', 'meetings');
SELECT meetcache.attach(NULL);
CREATE VIEW v AS SELECT 1 AS id;
SELECT meetcache.attach('v');
SELECT meetcache.attach_defaults('no_such_schema');
-- a partitioned table is attached together with its partitions
CREATE TABLE pmeetings (LIKE meetings) PARTITION BY LIST (status);
SELECT meetcache.attach('pmeetings', 'meetings');

-- attach the defaults; the catalog then refuses rules that break them
SELECT meetcache.attach_defaults('t_rules');
SELECT relation, table_name, triggers, enabled_always FROM meetcache.attached a
JOIN pg_class c ON c.oid = a.relation WHERE c.relnamespace = 't_rules'::regnamespace ORDER BY 1;
SELECT tgname, tgenabled FROM pg_trigger
WHERE tgrelid = 't_rules.meetings'::regclass AND tgname LIKE 'meetcache%' ORDER BY 1;
INSERT INTO meetcache.rules (table_name, family, args) VALUES ('meetings', 'meeting', '{no_such_column}');
-- re-attaching is idempotent
SELECT meetcache.attach('meetings');
SELECT count(*) FROM pg_trigger WHERE tgrelid = 't_rules.meetings'::regclass AND tgname LIKE 'meetcache%';

-- a user's own table and keys, without recompiling: a template over
-- old/new values, a condition, and a lookup through a related table
CREATE TABLE widgets (id int PRIMARY KEY, owner_id text REFERENCES users (id), kind text, "shelfId" int);
INSERT INTO meetcache.families (name, template, ttl_seconds) VALUES
  ('widget', 'widget:{id}', 120),
  ('owner_widgets', 'user:{owner_id}:widgets', 120),
  ('gadgets', 'widgets:gadgets', 60),
  ('shelf', 'shelf:{shelf_id}', 60);
INSERT INTO meetcache.rules (table_name, family, args, when_column, when_values, via_table, via_column, match_column, on_insert) VALUES
  ('widgets', 'widget', NULL, NULL, NULL, NULL, NULL, NULL, true),
  ('widgets', 'owner_widgets', NULL, NULL, NULL, NULL, NULL, NULL, true),
  ('widgets', 'gadgets', '{}', 'kind', '{gadget}', NULL, NULL, NULL, true),
  ('widgets', 'shelf', NULL, NULL, NULL, NULL, NULL, NULL, true),
  ('users', 'widget', '{id}', NULL, NULL, 'widgets', 'owner_id', 'id', false);
SELECT meetcache.attach('widgets');
INSERT INTO users VALUES ('u1', 'Ann', 'ann@example.com', NULL), ('u2', 'Bob', 'bob@example.com', NULL);
INSERT INTO widgets VALUES (1, 'u1', 'gadget', 7), (2, 'u1', 'gizmo', 8), (3, 'u2', 'gizmo', 8);

\i test/fixtures/wait_queue.sql
-- keys are filled once the drains have resolved earlier lookups again
CREATE FUNCTION fill() RETURNS void LANGUAGE sql AS $$
  SELECT wait_queue_empty();
  SELECT meetcache.cache_set(k, '1', 600)
  FROM unnest(ARRAY['widget:1', 'widget:2', 'widget:3', 'user:u1:widgets', 'user:u2:widgets',
                    'widgets:gadgets', 'shelf:7', 'shelf:8', 'user:u1', 'user:u2']) k;
$$;
CREATE FUNCTION gone() RETURNS text LANGUAGE sql AS $$
  SELECT coalesce(string_agg(k, ' ' ORDER BY k), '(none)')
  FROM unnest(ARRAY['widget:1', 'widget:2', 'widget:3', 'user:u1:widgets', 'user:u2:widgets',
                    'widgets:gadgets', 'shelf:7', 'shelf:8', 'user:u1', 'user:u2']) k
  WHERE NOT meetcache.cache_exists(k);
$$;
-- a camelCase column ("shelfId") is found from the rule's shelf_id
SELECT fill();
UPDATE widgets SET owner_id = 'u2' WHERE id = 2;
SELECT gone() AS owner_moved;
SELECT fill();
UPDATE widgets SET kind = 'gadget' WHERE id = 3;
SELECT gone() AS became_gadget;
SELECT fill();
UPDATE users SET name = 'Bobby' WHERE id = 'u2';
SELECT gone() AS owner_renamed;

-- affected_keys: the dry run shows the same keys, unprefixed
SELECT * FROM meetcache.affected_keys('widgets', NULL, '{"id": 9, "owner_id": "u1", "kind": "gadget", "shelfId": 3}');
SELECT * FROM meetcache.affected_keys('widgets', '{"id": 9, "owner_id": "u1", "kind": "gizmo", "shelfId": 3}',
                                                  '{"id": 9, "owner_id": "u2", "kind": "gizmo", "shelfId": 4}');
SELECT * FROM meetcache.affected_keys('users', '{"id": "u2", "email": "bob@example.com"}', NULL);
SELECT * FROM meetcache.affected_keys('meetings',
  '{"id": "m1", "host_id": "u1", "invite_code": "i1", "status": "SCHEDULED"}',
  '{"id": "m1", "host_id": "u2", "invite_code": "i1", "status": "LIVE"}');
SELECT * FROM meetcache.affected_keys('widgets', '{"id": 1, "no_such": 2}', NULL);
SELECT * FROM meetcache.affected_keys('widgets', NULL, NULL);
SELECT * FROM meetcache.affected_keys('notes', '{"id": 1}', NULL);

-- a rule edit takes effect at once (the catalog cache is invalidated)
UPDATE meetcache.rules SET enabled = false WHERE table_name = 'widgets' AND family = 'shelf';
SELECT fill();
UPDATE widgets SET kind = 'gizmo' WHERE id = 2;
SELECT gone() AS shelf_rule_disabled;
UPDATE meetcache.rules SET enabled = true WHERE table_name = 'widgets' AND family = 'shelf';

-- key_prefix applies to trigger deletes too
SET meetcache.key_prefix = 'app2:';
SELECT fill();
RESET meetcache.key_prefix;
SELECT fill();
SET meetcache.key_prefix = 'app2:';
UPDATE widgets SET kind = 'gizmo' WHERE id = 1;
SELECT gone() AS prefixed_gone;
RESET meetcache.key_prefix;
SELECT gone() AS unprefixed_gone;

-- a column a rule needs cannot be dropped while the table is attached
ALTER TABLE widgets DROP COLUMN "shelfId";
UPDATE widgets SET kind = 'x' WHERE id = 1;
SELECT meetcache.detach('widgets');
UPDATE widgets SET kind = 'x' WHERE id = 1;
DELETE FROM meetcache.rules WHERE table_name = 'widgets' OR family IN ('widget', 'owner_widgets', 'gadgets', 'shelf');
DELETE FROM meetcache.families WHERE name IN ('widget', 'owner_widgets', 'gadgets', 'shelf');

-- the function is only usable as a statement trigger
SELECT meetcache.invalidate_trigger();
CREATE TRIGGER bad AFTER INSERT ON notes FOR EACH ROW EXECUTE FUNCTION meetcache.invalidate_trigger('notes');
INSERT INTO notes VALUES (1, 'x');

SET client_min_messages = warning;
DROP SCHEMA t_rules CASCADE;
SELECT meetcache.cache_del_pattern('*') >= 0 AS cleaned;
