# A drain pass that fails (Redis frozen) must not forget which rows their
# own backend already delivered (sync+queue): after the thaw those rows are
# removed without sending their keys again, and the failed rows are retried
# after the drain's short backoff, not only at the next poll (60 s here).

use strict; use warnings;
use PostgreSQL::Test::Utils; use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema poll_sql poll_until stats);
my $redis = start_redis();
my $node = new_node('rep', $redis, log_statement => 'none',
  conf => "meetcache.poll_interval = '60s'\nmeetcache.commit_timeout = '500ms'\n");
setup_schema($node);
$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) VALUES ('u1','U','u1@x'),('u2','U','u2@x');
INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES ('m1','t','u1','i1','ENDED'),('m2','t','u2','i2','ENDED');
INSERT INTO participants (id, meeting_id, user_id) VALUES ('p1','m1','u1');
SET meetcache.delivery = 'queue'; UPDATE meetings SET title = 'x' WHERE id = 'm2';});
ok(poll_sql($node, 'postgres', 'SELECT count(*) FROM meetcache.queue', '0', 20), 'queue empty (queue-mode commit woke a drain)');
my $s0 = stats($node, 'postgres', qw(queue_rows_skipped keys_sent));
note explain $s0;
# participants have no lookup rules: a delivered row with no lookups waits
# for the next poll (one with lookups wakes the drain at once)
note $node->safe_psql('postgres', q{SET meetcache.delivery = 'sync+queue'; UPDATE participants SET left_at = now() WHERE id = 'p1';
SELECT id, delivered FROM meetcache.pending; SELECT queue_depth FROM meetcache.stats;});
$redis->freeze;
$node->safe_psql('postgres', q{SET meetcache.delivery = 'queue'; UPDATE meetings SET title = 'b' WHERE id = 'm2';});
ok(poll_until(20, sub { slurp_file($node->logfile) =~ /meetcache drain: .*will retry/ }), 'a drain pass failed on frozen redis');
my $out = $node->safe_psql('postgres', q{SELECT string_agg(id || ':' || delivered, ' ' ORDER BY id) FROM meetcache.pending});
note "pending after the failed pass: $out";
like($out, qr/^\d+:true \d+:false$/, 'the sync+queue row is still marked delivered after a failed drain pass');
$redis->thaw;
# the failed rows come back after the drain backoff, well before the next poll
ok(poll_sql($node, 'postgres', 'SELECT count(*) FROM meetcache.queue', '0', 10), 'queue empty within 10s of the thaw (poll_interval 60s, drain backoff 100ms)');
# wake a drain by hand
$node->safe_psql('postgres', q{SET meetcache.delivery = 'queue'; UPDATE meetings SET title = 'c' WHERE id = 'm2';});
ok(poll_sql($node, 'postgres', 'SELECT count(*) FROM meetcache.queue', '0', 20), 'queue empty after a wake');
my $s1 = stats($node, 'postgres', qw(queue_rows_skipped keys_sent));
note explain $s1;
is($s1->{queue_rows_skipped} - $s0->{queue_rows_skipped}, 1, 'the delivered row was skipped, not sent again');
done_testing();
