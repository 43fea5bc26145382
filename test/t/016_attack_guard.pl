# Attacks on the write path, the catalog and the guard, by roles without
# superuser (issue 8, items 1-4, 6, 8 and 9):
#
#   mallory   LOGIN only
#   owner     owns the application's tables, has CREATE on public and on
#             the database, and EXECUTE on attach()/detach()
#
#   1. nobody but attach() creates a meetcache trigger; attach() wants the
#      table's owner; lookups read tables only, as the owner of the table
#      they read (a temp view of mallory's never runs as a superuser);
#   2. a shadowing public.array_agg(text) never runs inside meetcache's own
#      queries (catalog load), so the owner does not become superuser;
#   3. the guard holds against the owner: nested DDL re-taking the
#      snapshot, DEPENDS ON EXTENSION + DROP EXTENSION, ATTACH PARTITION /
#      INHERIT of an attached table under an unattached one, table rewrites
#      (which invalidate the families), renames and drops a rule needs
#      (refused, unless the rules change in the same transaction);
#   4. partitioned tables: writes through the parent and straight into a
#      partition invalidate, for partitions created or attached later too,
#      and so do INHERITS children;
#   6. the catalog refuses what the rule compiler refuses (65 placeholders,
#      bad ttl_by_value) on INSERT, accepts 30.0, and a superuser bypassing
#      the checks cannot make a write fail;
#   8. a column value too long for a key deletes its family instead, and
#      never reaches the queue;
#   9. keys do not depend on DateStyle or TimeZone.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema poll_sql run_sql refused
  all_always);

my $redis = start_redis();
my $node = new_node('attack', $redis, log_statement => 'none');
setup_schema($node);
$node->safe_psql('postgres', q{
CREATE ROLE mallory LOGIN;
CREATE ROLE owner LOGIN;
GRANT CREATE ON SCHEMA public TO owner;
GRANT CREATE ON DATABASE postgres TO owner;
GRANT EXECUTE ON FUNCTION meetcache.attach(regclass, text), meetcache.detach(regclass) TO owner;
ALTER TABLE users OWNER TO owner;
ALTER TABLE meetings OWNER TO owner;
ALTER TABLE participants OWNER TO owner;
ALTER TABLE chat_messages OWNER TO owner;
ALTER TABLE recordings OWNER TO owner;
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1@x');
INSERT INTO meetings (id, title, host_id, invite_code, status)
  VALUES ('m1', 't0', 'u1', 'inv-m1', 'ENDED');
-- a family and rule of our own, for the partition and rewrite cases
INSERT INTO meetcache.families (name, template, ttl_seconds) VALUES ('note', 'note:{id}', 60);
INSERT INTO meetcache.rules (table_name, family, args) VALUES ('notes', 'note', '{id}');
CREATE TABLE notes (id int PRIMARY KEY, body text);
ALTER TABLE notes OWNER TO owner;
SELECT meetcache.attach('notes');
INSERT INTO notes VALUES (1, 'a');
});

# psql as $user (verbose errors): one assertion, it succeeds; returns stdout
sub ok_sql
{
	my ($user, $sql, $name) = @_;
	my ($rc, $out, $err) = run_sql($node, 'postgres', $sql, user => $user, verbose => 1);
	is($rc, 0, $name) or diag($err);
	return $out;
}

sub superuser { return $node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = '$_[0]'"); }
sub cached { return $redis->cli('EXISTS', $_[0]) eq '1' ? 1 : 0; }

# ---- 1. the trigger function, attach(), lookups ----
refused($node, 'postgres', q{
CREATE TEMP TABLE users (id text, name text, email text);
CREATE TRIGGER meetcache_upd AFTER UPDATE ON pg_temp.users
  REFERENCING OLD TABLE AS meetcache_old NEW TABLE AS meetcache_new
  FOR EACH STATEMENT EXECUTE FUNCTION meetcache.invalidate_trigger('users');},
	'42501', 'LOGIN role: CREATE TRIGGER with meetcache.invalidate_trigger', user => 'mallory');
# the 0.1.0 exploit end to end: a temp view standing in for the lookup table
run_sql($node, 'postgres', q{
CREATE FUNCTION pg_temp.mallory_up() RETURNS text LANGUAGE plpgsql AS
  $$BEGIN ALTER ROLE mallory SUPERUSER; RETURN 'x'; END$$;
CREATE TEMP TABLE users (id text, name text, email text);
CREATE TEMP VIEW meetings AS SELECT pg_temp.mallory_up() AS id, 'u1'::text AS host_id,
  'i'::text AS invite_code;
CREATE TEMP TABLE participants (user_id text, meeting_id text);
CREATE TEMP TABLE chat_messages (user_id text, meeting_id text);
CREATE TRIGGER meetcache_upd AFTER UPDATE ON pg_temp.users
  REFERENCING OLD TABLE AS meetcache_old NEW TABLE AS meetcache_new
  FOR EACH STATEMENT EXECUTE FUNCTION meetcache.invalidate_trigger('users');
INSERT INTO pg_temp.users VALUES ('u1', 'a', 'b');
UPDATE pg_temp.users SET name = 'c';}, user => 'mallory', verbose => 1);
is(superuser('mallory'), 'f', 'LOGIN role: a temp view as lookup table does not make it superuser');
refused($node, 'postgres', q{SELECT meetcache.attach('users');}, '42501',
	'LOGIN role: attach() without EXECUTE', user => 'mallory');
refused($node, 'postgres', q{CREATE TABLE public.mine (id text); }, '42501',
	'LOGIN role: no CREATE on public (setup check)', user => 'mallory');
$node->safe_psql('postgres', q{CREATE TABLE mallory_notes (id int, body text); ALTER TABLE mallory_notes OWNER TO mallory;});
refused($node, 'postgres', q{SELECT meetcache.attach('mallory_notes', 'notes');}, '42501',
	'owner: attach() of a table it does not own', user => 'owner');
refused($node, 'postgres', q{CREATE TEMP TABLE tnotes (id int, body text); SELECT meetcache.attach('tnotes', 'notes');},
	'0A000', 'owner: attach() of a temporary table', user => 'owner');
refused($node, 'postgres', q{
BEGIN;
CREATE VIEW note_view AS SELECT 1 AS id, 1 AS note_id;
INSERT INTO meetcache.rules (table_name, family, args, via_table, via_column, match_column, on_insert)
  VALUES ('notes', 'note', '{id}', 'note_view', 'note_id', 'id', false);
COMMIT;}, '42809', 'a rule whose via_table is a view', user => 'postgres');

# ---- 2. search_path: a shadowing aggregate never runs in meetcache's queries ----
ok_sql('owner', q{
CREATE FUNCTION public.owner_up(text[], text) RETURNS text[] LANGUAGE plpgsql AS
  $$BEGIN ALTER ROLE owner SUPERUSER; RETURN $1 || $2; END$$;
CREATE AGGREGATE public.array_agg(text) (sfunc = public.owner_up, stype = text[]);
CREATE FUNCTION public.jsonb_each(jsonb) RETURNS TABLE (key text, value jsonb) LANGUAGE plpgsql AS
  $$BEGIN ALTER ROLE owner SUPERUSER; RETURN; END$$;}, 'owner: shadowing array_agg(text), jsonb_each(jsonb) in public');
# a superuser's write makes the backend load the catalog
ok_sql('postgres', q{UPDATE meetcache.families SET ttl_seconds = 61 WHERE name = 'note';
UPDATE meetings SET title = 't1' WHERE id = 'm1';}, 'superuser: a write after a catalog change');
is(superuser('owner'), 'f', 'owner: shadowing functions in public do not run as superuser');
$node->safe_psql('postgres', q{DROP AGGREGATE public.array_agg(text); DROP FUNCTION public.owner_up(text[], text); DROP FUNCTION public.jsonb_each(jsonb);});

# ---- 3. the guard, against the table owner ----
ok_sql('owner', q{
CREATE FUNCTION public.nested(text) RETURNS boolean LANGUAGE plpgsql AS
  $$BEGIN CREATE TEMP TABLE IF NOT EXISTS scratch (x int); RETURN true; END$$;}, 'owner: a function running DDL');
refused($node, 'postgres', q{ALTER TABLE meetings DISABLE TRIGGER USER, ADD CONSTRAINT c CHECK (public.nested(id));},
	'55000', 'owner: DISABLE TRIGGER USER with nested DDL in a CHECK', user => 'owner');
is(all_always($node, 'meetings'), 't', 'nested DDL: the triggers are still ENABLE ALWAYS');

my $hstore = $node->safe_psql('postgres',
	"SELECT count(*) FROM pg_available_extensions WHERE name = 'hstore'");
SKIP:
{
	skip 'no trusted extension (hstore) installed', 3 unless $hstore;
	ok_sql('owner', 'CREATE EXTENSION hstore;', 'owner: CREATE EXTENSION hstore (trusted)');
	refused($node, 'postgres', 'ALTER TRIGGER meetcache_upd ON meetings DEPENDS ON EXTENSION hstore;',
		'55000', 'owner: ALTER TRIGGER ... DEPENDS ON EXTENSION', user => 'owner');
	run_sql($node, 'postgres', 'DROP EXTENSION hstore;', user => 'owner', verbose => 1);
}
is(all_always($node, 'meetings'), 't', 'DEPENDS ON EXTENSION: the triggers are still there');

refused($node, 'postgres', q{
CREATE TABLE pnotes (id int, body text) PARTITION BY RANGE (id);
ALTER TABLE pnotes ATTACH PARTITION notes FOR VALUES FROM (0) TO (1000);},
	'55000', 'owner: ATTACH PARTITION of an attached table to an unattached parent', user => 'owner');
refused($node, 'postgres', q{
CREATE TABLE note_base (id int, body text);
ALTER TABLE notes INHERIT note_base;}, '55000', 'owner: INHERIT of an attached table from an unattached one', user => 'owner');

# a rewrite deletes the table's families, as TRUNCATE does
$redis->set_keys('note:1', 'note:2');
ok_sql('owner', q{ALTER TABLE notes ALTER COLUMN body TYPE text USING upper(body);},
	'owner: ALTER COLUMN TYPE ... USING (a rewrite)');
ok(poll_sql($node, 'postgres', q{SELECT count(*) = 0 FROM meetcache.pending}), 'rewrite: queue drained');
is(cached('note:1') + cached('note:2'), 0, 'rewrite: the family of the table is deleted');

my $err = refused($node, 'postgres', q{ALTER TABLE meetings RENAME COLUMN host_id TO owner_id;}, '42703',
	'owner: RENAME COLUMN a rule needs', user => 'owner');
like($err, qr/HINT:  .*same transaction/, 'rename: the hint says how');
refused($node, 'postgres', q{ALTER TABLE notes DROP COLUMN id CASCADE;}, '42703', 'owner: DROP COLUMN a rule needs', user => 'owner');
refused($node, 'postgres', q{
INSERT INTO meetcache.rules (table_name, family, args, via_table, via_column, match_column, on_insert)
  VALUES ('notes', 'user', '{id}', 'note_owners', 'note_id', 'id', false);},
	'42P01', 'a rule whose via_table does not exist', user => 'postgres');
ok_sql('postgres', q{
CREATE TABLE note_owners (note_id int, id text);
ALTER TABLE note_owners OWNER TO owner;
INSERT INTO meetcache.rules (table_name, family, args, via_table, via_column, match_column, on_insert)
  VALUES ('notes', 'user', '{id}', 'note_owners', 'note_id', 'id', false);}, 'a lookup rule over note_owners');
refused($node, 'postgres', q{DROP TABLE note_owners;}, '42P01', 'owner: DROP TABLE of a via_table', user => 'owner');
refused($node, 'postgres', q{ALTER TABLE note_owners RENAME TO note_owners2;}, '42P01', 'owner: RENAME of a via_table', user => 'owner');
ok_sql('postgres', q{
BEGIN;
UPDATE meetcache.rules SET args = array_replace(args, 'host_id', 'host_id2'),
  via_column = CASE WHEN via_column = 'host_id' THEN 'host_id2' ELSE via_column END
WHERE table_name = 'meetings' OR via_table = 'meetings';
ALTER TABLE meetings RENAME COLUMN host_id TO host_id2;
COMMIT;}, 'rename together with the rules, in one transaction');
refused($node, 'postgres', q{
BEGIN;
UPDATE meetcache.rules SET args = '{nope}' WHERE family = 'user_meeting_count';
COMMIT;}, '42703', 'a rule change that breaks an attached table fails at COMMIT', user => 'postgres');

# ---- 4. partitioned tables and children ----
ok_sql('owner', q{
CREATE TABLE pnotes2 (id int, body text) PARTITION BY RANGE (id);
CREATE TABLE pnotes2_a PARTITION OF pnotes2 FOR VALUES FROM (0) TO (100);
SELECT meetcache.attach('pnotes2', 'notes');
CREATE TABLE pnotes2_b PARTITION OF pnotes2 FOR VALUES FROM (100) TO (200);
CREATE TABLE pnotes2_c (id int, body text);
ALTER TABLE pnotes2 ATTACH PARTITION pnotes2_c FOR VALUES FROM (200) TO (300);
CREATE TABLE notes_child (extra int) INHERITS (notes);}, 'owner: partitions before and after attach, a child');
for my $rel ('pnotes2', 'pnotes2_a', 'pnotes2_b', 'pnotes2_c', 'notes_child')
{
	is(all_always($node, $rel), 't', "$rel: attached");
}
$redis->set_keys(map { "note:$_" } 1, 101, 201, 7, 8, 9, 50);
ok_sql('owner', q{
INSERT INTO pnotes2 VALUES (1, 'a'), (101, 'b'), (201, 'c');
INSERT INTO pnotes2_a VALUES (7, 'd');
INSERT INTO pnotes2_c VALUES (250, 'e');
UPDATE pnotes2_b SET body = 'x' WHERE id = 101;
INSERT INTO notes_child VALUES (8, 'f', 1);
UPDATE notes SET body = 'g' WHERE id = 8;
INSERT INTO notes_child VALUES (9, 'h', 1);}, 'writes through the parent, into partitions and the child');
is(join(',', map { cached("note:$_") } 1, 101, 201, 7, 8, 9), '0,0,0,0,0,0',
	'every written note key is deleted');
is(cached('note:50'), 1, 'an untouched note key stays');

# rows that arrive in or leave an attached table without a write
$redis->set_keys('note:990', 'note:991', 'note:992');
ok_sql('owner', q{
CREATE TABLE pnotes2_d (id int, body text);
INSERT INTO pnotes2_d VALUES (350, 'arrives');
ALTER TABLE pnotes2 ATTACH PARTITION pnotes2_d FOR VALUES FROM (300) TO (400);},
	'owner: ATTACH PARTITION of a table with rows');
is(cached('note:990'), 0, 'ATTACH PARTITION: the parent\'s families are deleted');
ok_sql('owner', q{ALTER TABLE pnotes2 DETACH PARTITION pnotes2_a;}, 'owner: DETACH PARTITION');
is(cached('note:991'), 0, 'DETACH PARTITION: the parent\'s families are deleted');
ok_sql('owner', q{DROP TABLE notes_child;}, 'owner: DROP TABLE of an attached child');
is(cached('note:992'), 0, 'DROP TABLE: the families are deleted');
# the order pg_dump restores in: partitions attached first, triggers later
ok_sql('postgres', q{
BEGIN;
CREATE TABLE rp (id int, body text) PARTITION BY RANGE (id);
CREATE TABLE rp1 (id int, body text);
ALTER TABLE ONLY rp ATTACH PARTITION rp1 FOR VALUES FROM (0) TO (10);
CREATE TRIGGER meetcache_ins AFTER INSERT ON rp REFERENCING NEW TABLE AS meetcache_new
  FOR EACH STATEMENT EXECUTE FUNCTION meetcache.invalidate_trigger('notes');
ALTER TABLE rp ENABLE ALWAYS TRIGGER meetcache_ins;
CREATE TRIGGER meetcache_ins AFTER INSERT ON rp1 REFERENCING NEW TABLE AS meetcache_new
  FOR EACH STATEMENT EXECUTE FUNCTION meetcache.invalidate_trigger('notes');
ALTER TABLE rp1 ENABLE ALWAYS TRIGGER meetcache_ins;
COMMIT;}, 'restore order: ATTACH PARTITION, then the triggers of parent and partition');
ok_sql('owner', q{
CREATE TABLE up (id int, body text) PARTITION BY RANGE (id);
CREATE TABLE up1 PARTITION OF up FOR VALUES FROM (0) TO (10);
SELECT meetcache.attach('up1', 'notes');}, 'attach() of a partition of an unattached parent (the 0.1.0 way)');
refused($node, 'postgres', q{CREATE TEMP TABLE tchild () INHERITS (notes);}, '0A000',
	'owner: a temporary child of an attached table', user => 'owner');
# a lookup that fails never fails the write: the via_table's owner revokes its own SELECT
$redis->set_keys('user:zz');
{
	my ($rc, $out, $err) = run_sql($node, 'postgres', q{
REVOKE SELECT ON note_owners FROM owner;
UPDATE notes SET body = 'r' WHERE id = 1;}, user => 'owner', verbose => 1);
	is($rc, 0, 'a failing lookup: the write succeeds') or diag($err);
	like($err, qr/WARNING:  42501: meetcache: lookup in table "note_owners" failed/,
		'a failing lookup: a WARNING says so');
	is(cached('user:zz'), 0, 'a failing lookup: the families of its rules are deleted');
	$node->safe_psql('postgres', 'GRANT SELECT ON note_owners TO owner');
}

# ---- 6. the catalog accepts what the compiler accepts ----
refused($node, 'postgres', q{INSERT INTO meetcache.families (name, template) VALUES ('wide', '} .
	  join(':', map { "{a$_}" } 1 .. 65) . q{');}, '22023', 'a family with 65 placeholders', user => 'postgres');
ok_sql('postgres', q{INSERT INTO meetcache.families (name, template, ttl_seconds, ttl_field, ttl_by_value)
  VALUES ('whole', 'whole:{id}', 60, 'status', '{"X": 30.0}');}, 'ttl_by_value 30.0 is accepted');
refused($node, 'postgres', q{INSERT INTO meetcache.families (name, template, ttl_seconds, ttl_field, ttl_by_value)
  VALUES ('frac', 'frac:{id}', 60, 'status', '{"X": 30.5}');}, '22023', 'ttl_by_value 30.5', user => 'postgres');
ok_sql('owner', q{UPDATE notes SET body = 'w' WHERE id = 1;}, 'writes still work after those');
{
	my ($rc, $out, $err) = run_sql($node, 'postgres', q{
ALTER TABLE meetcache.families DISABLE TRIGGER check_family;
INSERT INTO meetcache.families (name, template) VALUES ('wide', '} . join(':', map { "{a$_}" } 1 .. 65) . q{');
ALTER TABLE meetcache.families ENABLE ALWAYS TRIGGER check_family;
UPDATE notes SET body = 'v' WHERE id = 1;}, user => 'postgres', verbose => 1);
	is($rc, 0, 'a superuser bypassing the checks: writes still succeed') or diag($err);
	like($err, qr/WARNING:  22023: meetcache: ignoring cache key family "wide"/, 'and a WARNING names the family');
	$node->safe_psql('postgres', q{DELETE FROM meetcache.families WHERE name = 'wide';});
}

# ---- 8. a key longer than the limit: the family, never the value ----
$redis->set_keys('note:2', 'note:3');
{
	$node->safe_psql('postgres', q{
INSERT INTO meetcache.families (name, template, ttl_seconds) VALUES ('note_body', 'note:body:{body}', 60);
INSERT INTO meetcache.rules (table_name, family, args) VALUES ('notes', 'note_body', '{body}');});
	$redis->set_keys('note:body:short');
	$redis->freeze;
	ok_sql('postgres', "SET meetcache.delivery = 'queue'; UPDATE notes SET body = repeat('x', 2000000) WHERE id = 1;",
		'a 2 MB value in a key column: the write succeeds');
	is($node->safe_psql('postgres',
			q{SELECT max(length(k)) < 2000 AND bool_or(p = 'note:body:*') FROM meetcache.pending, unnest(keys) k, unnest(patterns) p}),
		't', 'the queue row holds the family pattern, not the 2 MB key');
	$redis->thaw;
	ok(poll_sql($node, 'postgres', q{SELECT count(*) = 0 FROM meetcache.pending}), 'long key: queue drained');
	is(cached('note:body:short'), 0, 'long key: the family is deleted');
}

# ---- 9. keys do not follow the writer's DateStyle or TimeZone ----
$node->safe_psql('postgres', q{
INSERT INTO meetcache.families (name, template, ttl_seconds) VALUES
  ('ev_day', 'ev:day:{d}', 60), ('ev_at', 'ev:at:{ts}', 60);
INSERT INTO meetcache.rules (table_name, family, args) VALUES ('events', 'ev_day', '{d}'), ('events', 'ev_at', '{ts}');
CREATE TABLE events (id int PRIMARY KEY, d date, ts timestamptz);
ALTER TABLE events OWNER TO owner;
SELECT meetcache.attach('events');
INSERT INTO events VALUES (1, '2024-01-02', '2024-01-02 03:04:05+00');});
$redis->set_keys('ev:day:2024-01-02', 'ev:at:2024-01-02 03:04:05+00');
ok_sql('owner', q{SET DateStyle = 'German'; SET TimeZone = 'America/New_York'; SET IntervalStyle = 'sql_standard';
UPDATE events SET id = 2 WHERE id = 1;}, 'a write under DateStyle German, TimeZone New York');
is(cached('ev:day:2024-01-02') + cached('ev:at:2024-01-02 03:04:05+00'), 0,
	'the ISO date and the UTC timestamp keys are deleted');

done_testing();
