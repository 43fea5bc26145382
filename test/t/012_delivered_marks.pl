# A drain pass that fails (Redis frozen) must not forget which rows their
# own backend already delivered (sync+queue): after the thaw those rows are
# removed without sending their keys again, and the failed rows are retried
# after the drain's short backoff, not only at the next poll (60 s here).
#
# Participants have no lookup rules: a delivered sync+queue row without
# lookups does not wake a drain (one with lookups would, at once), so the
# row below waits for a drain pass, and the failed pass on the frozen Redis
# is the first to see it.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema poll_sql poll_until stats bg_session bg_query);

my $redis = start_redis();
my $node = new_node('rep', $redis,
	log_statement => 'none',
	conf => "meetcache.poll_interval = '60s'\nmeetcache.commit_timeout = '5s'\n");
setup_schema($node);
$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) VALUES ('u1', 'U', 'u1@x'), ('u2', 'U', 'u2@x');
INSERT INTO meetings (id, title, host_id, invite_code, status)
  VALUES ('m1', 't', 'u1', 'i1', 'ENDED'), ('m2', 't', 'u2', 'i2', 'ENDED');
INSERT INTO participants (id, meeting_id, user_id) VALUES ('p1', 'm1', 'u1');
SET meetcache.delivery = 'queue';
UPDATE meetings SET title = 'x' WHERE id = 'm2';});

my $queue_empty = 'SELECT count(*) FROM meetcache.queue';
ok(poll_sql($node, 'postgres', $queue_empty, '0', 20),
	'queue empty (queue-mode commit woke a drain)');
# that drain lingers for one more pass, which would take the next row's mark too early
ok(poll_sql($node, 'postgres', 'SELECT drains_running FROM meetcache.stats()', '0', 20),
	'the woken drain has exited (poll_interval 60s: no other starts by itself)');
my $s0 = stats($node, 'postgres', qw(queue_rows_skipped keys_sent));
note explain $s0;

# a sync+queue row its backend delivered; it waits for the next drain pass
note $node->safe_psql('postgres', q{
SET meetcache.delivery = 'sync+queue';
UPDATE participants SET left_at = now() WHERE id = 'p1';
SELECT id, delivered FROM meetcache.pending;
SELECT queue_depth FROM meetcache.stats;});

# a queue-mode row wakes a drain, whose pass fails on the frozen Redis
$redis->freeze;
$node->safe_psql('postgres', q{
SET meetcache.delivery = 'queue';
UPDATE meetings SET title = 'b' WHERE id = 'm2';});
ok(poll_until(20, sub { slurp_file($node->logfile) =~ /meetcache drain: .*will retry/ }),
	'a drain pass failed on frozen redis');
my $pending = $node->safe_psql('postgres',
	q{SELECT string_agg(id || ':' || delivered, ' ' ORDER BY id) FROM meetcache.pending});
note "pending after the failed pass: $pending";
like($pending, qr/^\d+:true \d+:false$/,
	'the sync+queue row is still marked delivered after a failed drain pass');

# the failed rows come back after the drain backoff, well before the next poll
$redis->thaw;
ok(poll_sql($node, 'postgres', $queue_empty, '0', 10),
	'queue empty within 10s of the thaw (poll_interval 60s, drain backoff 100ms)');

# wake a drain by hand
$node->safe_psql('postgres', q{
SET meetcache.delivery = 'queue';
UPDATE meetings SET title = 'c' WHERE id = 'm2';});
ok(poll_sql($node, 'postgres', $queue_empty, '0', 20), 'queue empty after a wake');

my $s1 = stats($node, 'postgres', qw(queue_rows_skipped keys_sent));
note explain $s1;
is($s1->{queue_rows_skipped} - $s0->{queue_rows_skipped}, 1,
	'the delivered row was skipped, not sent again');
# While a drain's delete of a skipped row is not committed, the row is visible, and
# still shows delivered: the mark goes with the commit, not before. A deferred
# trigger on the queue holds the drain's commit on an advisory lock.
$node->safe_psql('postgres', q{
CREATE FUNCTION hold_drain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER hold_drain AFTER DELETE ON meetcache.queue
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_drain();});
my $holder = bg_session($node);
bg_query($holder, 'SELECT pg_advisory_lock(4242)');
my $s2 = stats($node, 'postgres', qw(queue_rows_skipped));
$node->safe_psql('postgres', q{
SET meetcache.delivery = 'sync+queue';
UPDATE participants SET left_at = now() WHERE id = 'p1';
SET meetcache.delivery = 'queue';
UPDATE meetings SET title = 'd' WHERE id = 'm2';});
ok(poll_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'meetcache drain' AND wait_event = 'advisory'},
		'1', 20),
	'the drain deleted its rows, Redis acknowledged, and its commit waits');
$pending = $node->safe_psql('postgres',
	q{SELECT string_agg(id || ':' || delivered, ' ' ORDER BY id) FROM meetcache.pending});
note "pending while the drain commits: $pending";
like($pending, qr/^\d+:true \d+:false$/,
	'the skipped row still shows delivered until the drain commits its delete');
is($node->safe_psql('postgres', 'SELECT queue_depth FROM meetcache.stats'), '1',
	'queue_depth counts only the undelivered row meanwhile');
bg_query($holder, 'SELECT pg_advisory_unlock(4242)');
$holder->quit;
ok(poll_sql($node, 'postgres', $queue_empty, '0', 20), 'queue empty once the drain commits');
is(stats($node, 'postgres', qw(queue_rows_skipped))->{queue_rows_skipped} - $s2->{queue_rows_skipped},
	1, 'the delivered row was skipped');
$node->safe_psql('postgres', 'DROP TRIGGER hold_drain ON meetcache.queue; DROP FUNCTION hold_drain()');
done_testing();
