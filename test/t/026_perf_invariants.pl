# The write path's shortcuts keep every guarantee:
#  - a backend's cache of meetcache.queue (OID, identity sequence, primary
#    key, "plain") follows the table while warm, in the same session: a
#    trigger added to it, ALTER EXTENSION UPDATE from 0.1.0 adding the
#    lookups column, DROP and CREATE EXTENSION;
#  - drains commit with synchronous_commit = off: a crash that loses a
#    drain's delete brings its rows back, and they are delivered again
#    (keys, family patterns and lookups alike); nothing is lost;
#  - the commit path parses UNLINK's integer replies in place: an error
#    reply among them (here -NOPERM) is still reported and counted, the
#    other commands of the pipeline still delete their keys, and the
#    connection stays in step for the session's next transaction.
# (The bulk shortcut, families covered by their pattern across savepoints,
# is in the txn regress suite.)
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema poll_sql poll_until wait_queue_empty
  run_sql stats);

my $redis = start_redis();
my $node = new_node('perf', $redis, log_statement => 'none',
	conf => "autovacuum = off\nrestart_after_crash = on\nmeetcache.commit_timeout = '500ms'\n");
setup_schema($node);
$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) VALUES ('u1', 'U', 'u1@x');
INSERT INTO meetings (id, title, host_id, invite_code, status)
  VALUES ('m1', 't', 'u1', 'i1', 'ENDED');
CREATE TABLE public.queue_audit (id bigint);
CREATE FUNCTION public.queue_audit_fn() RETURNS trigger LANGUAGE plpgsql
  AS $$BEGIN INSERT INTO public.queue_audit VALUES (NEW.id); RETURN NEW; END$$;});

sub gone { my ($key) = @_; return poll_until(20, sub { $redis->cli('EXISTS', $key) eq '0' }); }

# ---- a trigger added to the queue while the session's cache is warm ----
$redis->cli('SET', 'meeting:m1', '1');
note $node->safe_psql('postgres', q{
SET meetcache.delivery = 'queue';
UPDATE meetings SET title = 'warm' WHERE id = 'm1';
CREATE TRIGGER audit AFTER INSERT ON meetcache.queue
  FOR EACH ROW EXECUTE FUNCTION public.queue_audit_fn();
UPDATE meetings SET title = 'audited' WHERE id = 'm1';
DROP TRIGGER audit ON meetcache.queue;
UPDATE meetings SET title = 'plain again' WHERE id = 'm1';});
is($node->safe_psql('postgres', 'SELECT count(*) FROM public.queue_audit'), '1',
	'a trigger added to the queue in the same session fires for the next row, and only while it exists');
ok(gone('meeting:m1'), 'the rows written meanwhile were drained');
ok(wait_queue_empty($node), 'queue empty');

# ---- DROP and CREATE EXTENSION in the same session ----
$redis->cli('SET', 'meeting:m1', '1');
note $node->safe_psql('postgres', q{
SET meetcache.delivery = 'queue';
SET client_min_messages = warning;
UPDATE meetings SET title = 'warm' WHERE id = 'm1';
DROP EXTENSION meetcache CASCADE;
CREATE EXTENSION meetcache;
SELECT meetcache.attach_defaults();
UPDATE meetings SET title = 'new queue' WHERE id = 'm1';
SELECT count(*) FROM meetcache.queue;});
ok(gone('meeting:m1'), 're-created extension: the row went to the new queue and was drained');

# ---- ALTER EXTENSION UPDATE from 0.1.0 in the same session ----
$node->safe_psql('postgres', 'CREATE DATABASE up');
$node->safe_psql('up', MeetcacheTest::schema_sql());
$node->safe_psql('up', q{
CREATE EXTENSION meetcache VERSION '0.1.0';
SELECT meetcache.attach_defaults('public');
INSERT INTO users (id, name, email) VALUES ('u1', 'U', 'u1@x');
INSERT INTO meetings (id, title, host_id, invite_code, status)
  VALUES ('m1', 't', 'u1', 'i1', 'ENDED');});
# the drains cannot deliver while Redis is frozen: the rows stay to be read
$redis->freeze;
my $lookups = $node->safe_psql('up', q{
SET meetcache.delivery = 'queue';
UPDATE users SET name = 'warm' WHERE id = 'u1';
SET client_min_messages = warning;
ALTER EXTENSION meetcache UPDATE;
UPDATE users SET name = 'updated' WHERE id = 'u1';
SELECT coalesce(pg_catalog.array_length(lookups, 1), 0) FROM meetcache.queue ORDER BY id DESC LIMIT 1;});
$redis->thaw;
cmp_ok($lookups, '>', 0,
	'after ALTER EXTENSION UPDATE in the same session the queue row keeps its lookups');
ok(wait_queue_empty($node, 'up', 30), 'queue of the updated database empty');

# ---- a 0.1.0 queue whose shape a DBA changed (a column added, then dropped) ----
# It still has no lookups column: the triggers run the lookups at statement time,
# and rows go in by name (the table is not as the extension made it).
$node->safe_psql('postgres', 'CREATE DATABASE legacy');
$node->safe_psql('legacy', MeetcacheTest::schema_sql());
$node->safe_psql('legacy', q{
CREATE EXTENSION meetcache VERSION '0.1.0';
SELECT meetcache.attach_defaults('public');
ALTER TABLE meetcache.queue ADD COLUMN note text;
ALTER TABLE meetcache.queue DROP COLUMN note;
INSERT INTO users (id, name, email) VALUES ('u7', 'U', 'u7@x');
INSERT INTO meetings (id, title, host_id, invite_code, status)
  VALUES ('m7', 't', 'u7', 'i7', 'ENDED');});
my $legacy_empty = 'SELECT count(*) FROM meetcache.queue';
ok(poll_sql($node, 'legacy', $legacy_empty, '0', 30), 'legacy queue: setup drained');
# two renames in one session: the second one's backend knows the queue already
my $ls = MeetcacheTest::bg_session($node, 'legacy');
MeetcacheTest::bg_query($ls, "SET meetcache.delivery = 'queue'");
for my $name (qw(renamed again))
{
	$redis->cli('SET', 'meeting:m7', '1');
	MeetcacheTest::bg_query($ls, "UPDATE users SET name = '$name' WHERE id = 'u7'");
	ok(gone('meeting:m7'),
		"legacy queue with a dropped column: a host's rename ($name) reaches the meeting's key");
}
$ls->quit;
ok(poll_sql($node, 'legacy', $legacy_empty, '0', 30), 'legacy queue empty');

# ---- an error reply among the commit path's UNLINK integers ----
# A Redis user that may not touch meetings:* keys.  One transaction: 150
# chat messages (only meeting:* keys, the first UNLINKs of 100 keys each),
# then an UPDATE of the 150 meetings (their hosts' meetings:* keys): one
# pipeline whose replies are integers, then -NOPERM, then integers.
$redis->cli('ACL', 'SETUSER', 'mc', 'on', 'nopass', '~meeting:*', '~user:*', '~mc-lease:*',
	'+@all');
$node->safe_psql('postgres', q{
INSERT INTO meetings (id, title, host_id, invite_code, status)
  SELECT 'p' || i, 't', 'u1', 'ip' || i, 'ENDED' FROM generate_series(1, 150) i;});
my @allowed = map { ("meeting:p$_", "meeting:invite:ip$_", "meeting:p$_:chats:recent:50") } 1 .. 150;
$redis->set_many(@allowed, 'meetings:user:u1');
my $failures = stats($node)->{delivery_failures};
my $port = $redis->port;
my ($rc, $out, $err) = run_sql($node, 'postgres', qq{
BEGIN;
INSERT INTO chat_messages (id, meeting_id, user_id, message)
  SELECT 'c' || i, 'p' || i, 'u1', 'hi' FROM generate_series(1, 150) i;
UPDATE meetings SET title = 'denied' WHERE id LIKE 'p%';
COMMIT;
\\! redis-cli -h 127.0.0.1 -p $port SET meeting:p1:chats:recent:50 1 >/dev/null
INSERT INTO chat_messages (id, meeting_id, user_id, message) VALUES ('c0', 'p1', 'u1', 'hi');},
	delivery => 'sync', redis_url => $redis->url(user => 'mc', password => undef));
is($rc, 0, 'an UNLINK refused in the middle of the pipeline: the commits stand');
like($err, qr/WARNING:  meetcache: could not delete \d+ cache keys after commit: redis at \S+ refused UNLINK: NOPERM/,
	'the error reply is reported');
is(() = $err =~ /WARNING/g, 1, 'once: the next transaction of the session is not refused');
is(stats($node)->{delivery_failures}, $failures + 1, 'the failure is counted');
is($redis->cli('EXISTS', 'meeting:p2:chats:recent:50'), '0',
	'the UNLINK answered with an integer before the error deleted its keys');
my @left = $redis->existing_many(@allowed);
cmp_ok(scalar @left, '<', 150, 'so did those after it (' . scalar(@left) . ' keys left)');
is($redis->cli('EXISTS', 'meetings:user:u1'), '1', 'the refused key stays');
is($redis->cli('EXISTS', 'meeting:p1:chats:recent:50'), '0',
	'the connection stayed in step: the next transaction deleted its key');

# ---- a drain's delete lost in a crash: its rows come back, delivered again ----
# The WAL writer is stopped, so nothing flushes the drain's commit record
# (with synchronous_commit = off the drain does not flush it itself); the
# writers' commits flush their own.  Killing it crashes the cluster.
$node->safe_psql('postgres', q{
INSERT INTO participants (id, meeting_id, user_id) VALUES ('p1', 'm1', 'u1');
CREATE TABLE public.flag (id int);});
ok(wait_queue_empty($node), 'queue empty before the crash');
my $walwriter = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'});
ok($walwriter =~ /^\d+$/, "walwriter pid $walwriter");
kill 'STOP', $walwriter;
# keys, a family pattern (TRUNCATE) and lookups (a rename reaches the
# participant lists the user is on), in one row: one transaction, so that
# no later writer's commit flushes the drain's commit record with its own
$node->safe_psql('postgres', q{
SET meetcache.delivery = 'queue';
BEGIN;
UPDATE meetings SET title = 'crash' WHERE id = 'm1';
TRUNCATE recordings;
UPDATE users SET name = 'crash' WHERE id = 'u1';
COMMIT;});
ok(poll_sql($node, 'postgres', 'SELECT count(*) FROM meetcache.queue', '0', 20),
	'the drain deleted the rows (commit not flushed)');
# what a reader fills in again after the first delivery
$redis->cli('SET', 'meeting:m1', '1');
$redis->cli('SET', 'meeting:m1:recording', '1');
$redis->cli('SET', 'meeting:m1:participants', '1');
kill 'KILL', $walwriter;
ok( poll_until(60, sub {
			my ($out, $err) = ('', '');
			$node->psql('postgres', 'SELECT 1', stdout => \$out, stderr => \$err);
			return $out eq '1';
		}),
	'the cluster is back after the crash');
# (the counters start again from zero with the new shared memory; the
# families flushed after a crash delete the keys too: the row is the proof)
ok(poll_sql($node, 'postgres', 'SELECT queue_rows_done >= 1 FROM meetcache.stats', 't', 30),
	'the row whose delete was lost came back and was drained again');
ok(gone('meeting:m1'), 'nothing lost: its key');
ok(gone('meeting:m1:recording'), 'nothing lost: its family pattern');
ok(gone('meeting:m1:participants'), 'nothing lost: its lookup');
ok(wait_queue_empty($node, 'postgres', 30), 'queue empty after recovery');
like(slurp_file($node->logfile), qr/database system was interrupted|redo starts/,
	'the server went through crash recovery');

done_testing();
