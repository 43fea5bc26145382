# Keys are deleted on commit, and a backend whose Redis connection broke
# (redis-server restarted or down) reconnects: later commits still delete.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema bg_session bg_query
  elapsed wait_redis_state wait_queue_empty);

my $redis = start_redis();
my $node = new_node('restart', $redis);
setup_schema($node);
$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1@x'), ('u2', 'U2', 'u2@x');
INSERT INTO meetings (id, title, host_id, invite_code, status)
  VALUES ('m1', 't0', 'u1', 'inv-m1', 'ENDED'), ('m2', 't0', 'u2', 'inv-m2', 'ENDED');
});

my @m1 = qw(meeting:m1 meeting:invite:inv-m1 meetings:user:u1 user:u1:meetings:count);
my @keep = qw(meeting:m12 meeting:m2 meeting:invite:inv-m2 unrelated:key);

is($node->safe_psql('postgres', "SELECT meetcache.key('meeting', 'm1')"),
	'meeting:m1', "key('meeting', 'm1')");
is($node->safe_psql('postgres', 'SELECT meetcache.cache_ping()'),
	'PONG', 'cache_ping');

# One long-lived session: the same backend before and after the restarts.
my $s = bg_session($node);
is(bg_query($s, 'SELECT meetcache.cache_ping()'), 'PONG', 'session connected');
my $pid = bg_query($s, 'SELECT pg_backend_pid()');

$redis->set_keys(@m1, @keep);
my ($out, $err) = bg_query($s, "UPDATE meetings SET title = 't1' WHERE id = 'm1'");
is($err, '', 'commit: no warning');
is_deeply([ $redis->existing(@m1) ], [], 'commit deleted the keys of m1');
is_deeply([ $redis->existing(@keep) ], \@keep, 'unrelated keys kept');

$redis->set_keys(@m1);
bg_query($s, "BEGIN; UPDATE meetings SET title = 't2' WHERE id = 'm1'; ROLLBACK;");
is_deeply([ $redis->existing(@m1) ], \@m1, 'rollback deleted nothing');

# Redis restarted (data lost) between two transactions.
$redis->restart;
$redis->set_keys(@m1, @keep);
($out, $err) = bg_query($s, "UPDATE meetings SET title = 't3' WHERE id = 'm1'");
note "stderr of the first commit after the restart: $err";
is_deeply([ $redis->existing(@m1) ], [],
	'after a redis restart the same backend deletes the keys at the next commit');
is_deeply([ $redis->existing(@keep) ], \@keep, 'unrelated keys kept');
is(bg_query($s, 'SELECT pg_backend_pid()'), $pid, 'still the same backend');

$redis->set_keys(@m1);
($out, $err) = bg_query($s, "UPDATE meetings SET title = 't4' WHERE id = 'm1'");
is($err, '', 'second commit after the restart: no warning');
is_deeply([ $redis->existing(@m1) ], [], 'second commit after the restart deletes');

# Redis restarted in the middle of an open transaction.
bg_query($s, "BEGIN; UPDATE meetings SET title = 't4b' WHERE id = 'm1';");
$redis->restart;
$redis->set_keys(@m1, @keep);
($out, $err) = bg_query($s, 'COMMIT');
note "stderr: $err";
is_deeply([ $redis->existing(@m1) ], [],
	'redis restarted inside the transaction: its commit still deletes');
is_deeply([ $redis->existing(@keep) ], \@keep, 'unrelated keys kept');

# (the drains have resolved those commits' lookups again: no drain is
# talking to Redis when it restarts or stops below)
ok(wait_queue_empty($node), 'the drains are done');

# SQL cache functions across a restart that keeps the data.
bg_query($s, q{SELECT meetcache.cache_set('c:1', '{"a": 1}'::jsonb, 600)});
is($redis->cli('GET', 'c:1'), '{"a":1}', 'cache_set stores compact JSON');
$redis->restart(keep_data => 1);
($out, $err) = bg_query($s, q{SELECT meetcache.cache_get('c:1')});
is($out, '{"a": 1}', 'cache_get after a restart, same backend');
is($err, '', 'cache_get after a restart: no error');
is(bg_query($s, q{SELECT meetcache.cache_exists('c:1')}), 't', 'cache_exists');

# Redis down: commit still commits (with a WARNING); SQL functions error.
$redis->stop;
($out, $err) = bg_query($s, "UPDATE meetings SET title = 't5' WHERE id = 'm1'");
like($err, qr/WARNING/, 'commit with redis down: WARNING');
unlike($err, qr/ERROR|FATAL|PANIC/, 'commit with redis down: no error');
is($node->safe_psql('postgres', "SELECT title FROM meetings WHERE id = 'm1'"),
	't5', 'commit with redis down committed');
($out, $err) = bg_query($s, q{SELECT meetcache.cache_get('c:1')});
like($err, qr/ERROR/, 'cache_get with redis down: ERROR');

# That failure opened the circuit breaker: until the launcher's PING
# succeeds, commits hand their keys to the worker instead of waiting.
is($node->safe_psql('postgres', 'SELECT redis_state FROM meetcache.stats'),
	'down', 'redis down after a failed commit: redis_state down');

# Redis back (empty): the next commit's keys are deleted -- by the backend
# or, while the breaker is still open, by the worker -- without an error.
$redis->start;
$redis->set_keys(@m1, @keep);
my $t;
($t, $out, $err) =
  elapsed(sub { bg_query($s, "UPDATE meetings SET title = 't6' WHERE id = 'm1'") });
note sprintf('first commit with redis back took %.3fs; stderr: %s', $t, $err);
unlike($err, qr/ERROR|FATAL|PANIC/, 'redis back: commit, no error');
cmp_ok($t, '<', 5, 'redis back: commit bounded');
ok(MeetcacheTest::poll_until(20, sub { !$redis->existing(@m1) }),
	'redis back: the keys of the next commit are deleted (within 20s)');
ok(wait_redis_state($node, 'up'), 'redis back: the launcher sees it up');
ok(wait_queue_empty($node), 'redis back: nothing left for the worker');

# Breaker closed: the same backend deletes at commit again.
$redis->set_keys(@m1);
($out, $err) = bg_query($s, "UPDATE meetings SET title = 't6b' WHERE id = 'm1'");
is($err, '', 'redis up: commit without warning');
is_deeply([ $redis->existing(@m1) ], [], 'redis back: next commit deletes');
is(bg_query($s, 'SELECT meetcache.cache_ping()'), 'PONG', 'redis back: cache_ping');
is(bg_query($s, 'SELECT pg_backend_pid()'), $pid, 'still the same backend');

# A fresh backend too.
$redis->set_keys(@m1);
$node->safe_psql('postgres', "UPDATE meetings SET title = 't7' WHERE id = 'm1'");
is_deeply([ $redis->existing(@m1) ], [], 'fresh backend: commit deletes');
is_deeply([ $redis->existing(@keep) ], \@keep, 'unrelated keys still kept');

$s->quit;
my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|was terminated by signal|server process .* exited with exit code/,
	'no crash in the server log');
done_testing();
