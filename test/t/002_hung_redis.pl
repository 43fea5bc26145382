# A frozen redis-server (SIGSTOP: TCP still accepted, no replies) must not
# hang commits (bounded by commit_timeout) nor SQL functions (statement_timeout
# and pg_cancel_backend interrupt them); after SIGCONT everything works again.
#
# The first failed commit opens the circuit breaker: later commits of
# sessions using the server's meetcache.redis_url hand their keys to the
# worker without waiting (and without a WARNING).  The deadline itself is
# tested in sessions whose redis_url names the same server differently
# (localhost instead of 127.0.0.1): the breaker does not apply to them.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema run_sql bg_session
  bg_query bg_send bg_wait_for elapsed poll_sql wait_redis_state
  wait_queue_empty poll_until);

my $redis = start_redis();
my $node = new_node('hung', $redis, conf => "meetcache.commit_timeout = '500ms'\n");
setup_schema($node);
$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1@x'), ('u2', 'U2', 'u2@x'), ('u3', 'U3', 'u3@x');
INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES
  ('m1', 't0', 'u1', 'inv-m1', 'ENDED'),
  ('m2', 't0', 'u2', 'inv-m2', 'ENDED'),
  ('m3', 't0', 'u3', 'inv-m3', 'ENDED');
CREATE TABLE not_attached (x int);
});
is($node->safe_psql('postgres', 'SHOW meetcache.commit_timeout'), '500ms',
	'commit_timeout is 500ms');

my @m1 = qw(meeting:m1 meeting:invite:inv-m1 meetings:user:u1 user:u1:meetings:count);
# the same redis-server under another name: the breaker does not apply
my $alt_url = 'redis://localhost:' . $redis->port . '/0';
my $alt = "SET meetcache.redis_url = '$alt_url'; ";

# psql in a new backend; returns (seconds, exit code, stdout, stderr)
sub timed_psql
{
	my ($sql) = @_;
	return elapsed(sub { run_sql($node, 'postgres', $sql) });
}

my $s = bg_session($node);
is(bg_query($s, 'SELECT meetcache.cache_ping()'), 'PONG', 'session connected');
$redis->cli('SET', 'k', '"kval"');
$redis->cli('SET', 'kb', '"bval"');
$redis->set_keys(@m1);

$redis->freeze;

# 1. commit from a backend with an established connection
my ($t, $out, $err) =
  elapsed(sub { bg_query($s, "UPDATE meetings SET title = 'f1' WHERE id = 'm1'") });
note sprintf('commit took %.3fs; stderr: %s', $t, $err);
cmp_ok($t, '<', 5, 'commit to a frozen redis returns within 5s');
like($err, qr/WARNING/, 'commit to a frozen redis: WARNING');
unlike($err, qr/ERROR|FATAL|PANIC/, 'commit to a frozen redis: no error');
is($node->safe_psql('postgres', "SELECT title FROM meetings WHERE id = 'm1'"),
	'f1', 'the transaction committed');

is($node->safe_psql('postgres', 'SELECT redis_state FROM meetcache.stats'),
	'down', 'the failed commit opened the breaker: redis_state down');

# 1b. breaker open: a new backend hands its keys over, no deadline to wait
my $ret;
($t, $ret, $out, $err) =
  timed_psql("UPDATE meetings SET title = 'f1b' WHERE id = 'm2'");
note sprintf('commit took %.3fs; stderr: %s', $t, $err);
is($ret, 0, 'breaker open: commit succeeds');
cmp_ok($t, '<', 5, 'breaker open: commit returns within 5s');
unlike($err, qr/WARNING/, 'breaker open: keys handed to the worker without a WARNING');

# 2. commit from a new backend (handshake against the frozen server), in a
#    session the breaker does not apply to
($t, $ret, $out, $err) =
  timed_psql($alt . "UPDATE meetings SET title = 'f2' WHERE id = 'm2'");
note sprintf('commit took %.3fs; stderr: %s', $t, $err);
is($ret, 0, 'new backend: commit succeeds');
cmp_ok($t, '<', 5, 'new backend: commit returns within 5s');
like($err, qr/WARNING/, 'new backend: WARNING');

# 2b. commit_timeout bounds the whole delivery, the connect handshake
#     included: a long connect_timeout must not stretch the commit
($t, $ret, $out, $err) = timed_psql($alt
	  . "SET meetcache.connect_timeout = 4000; UPDATE meetings SET title = 'f2b' WHERE id = 'm2'");
note sprintf('commit took %.3fs; stderr: %s', $t, $err);
is($ret, 0, 'new backend, connect_timeout 4s: commit succeeds');
cmp_ok($t, '<', 2.5,
	'new backend, connect_timeout 4s: commit bounded by commit_timeout (500ms), not connect_timeout');

# 3. a transaction with several statements and many keys
($t, $ret, $out, $err) = timed_psql(
	"BEGIN; UPDATE meetings SET title = 'f3' WHERE id = 'm1'; "
	  . "UPDATE meetings SET title = 'f3' WHERE id = 'm3'; "
	  . "UPDATE users SET name = 'x' WHERE id IN ('u1','u2','u3'); COMMIT;");
note sprintf('commit took %.3fs; stderr: %s', $t, $err);
is($ret, 0, 'multi-statement transaction commits');
cmp_ok($t, '<', 5, 'multi-statement transaction returns within 5s');

# 3b. TRUNCATE (family patterns: SCAN at commit) and a 20000-key
#     transaction are bounded by the deadline too (session $o: the breaker
#     does not apply, so both really wait for the frozen server)
my $o = bg_session($node);
bg_query($o, $alt);
$node->safe_psql('postgres', q{
INSERT INTO chat_messages (id, meeting_id, user_id, message) VALUES ('c1', 'm1', 'u1', 'hi');});
($t, $out, $err) = elapsed(sub { bg_query($o, 'TRUNCATE chat_messages') });
note sprintf('TRUNCATE commit took %.3fs; stderr: %s', $t, $err);
cmp_ok($t, '<', 2.5, 'TRUNCATE: commit bounded by the deadline');
like($err, qr/WARNING/, 'TRUNCATE: WARNING');
($t, $out, $err) = elapsed(
	sub {
		bg_query($o,
			q{INSERT INTO users (id, name, email) SELECT 'b' || g, 'B', 'b' || g || '@x' FROM generate_series(1, 10000) g}
		);
	});
note sprintf('20000-key commit took %.3fs; stderr: %s', $t, $err);
cmp_ok($t, '<', 5, '20000 keys: commit bounded by the deadline');
like($err, qr/WARNING/, '20000 keys: WARNING');
unlike($err, qr/ERROR/, '20000 keys: no error');

# the same with the breaker open: handed over at once
$node->safe_psql('postgres', q{
INSERT INTO chat_messages (id, meeting_id, user_id, message) VALUES ('c2', 'm1', 'u1', 'hi');});
($t, $out, $err) = elapsed(sub { bg_query($s, 'TRUNCATE chat_messages') });
note sprintf('TRUNCATE commit (breaker open) took %.3fs; stderr: %s', $t, $err);
cmp_ok($t, '<', 2.5, 'breaker open: TRUNCATE commit bounded');
unlike($err, qr/ERROR/, 'breaker open: TRUNCATE, no error');
($t, $out, $err) = elapsed(
	sub {
		bg_query($s,
			q{UPDATE users SET name = 'C' WHERE id LIKE 'b%'});
	});
note sprintf('20000-key commit (breaker open) took %.3fs; stderr: %s', $t, $err);
cmp_ok($t, '<', 5, 'breaker open: 20000 keys, commit bounded');
unlike($err, qr/ERROR/, 'breaker open: 20000 keys, no error');

# 4. a commit without keys does not touch redis
($t, $out, $err) = elapsed(sub { bg_query($s, 'INSERT INTO not_attached VALUES (1)') });
is($err, '', 'commit without keys: no warning');
cmp_ok($t, '<', 5, 'commit without keys: fast');

# 5. statement_timeout interrupts cache_get (new backend; generous
#    meetcache timeouts so that only statement_timeout can stop it)
($t, $ret, $out, $err) = timed_psql(
	"SET meetcache.connect_timeout = 60000; SET meetcache.command_timeout = 60000; "
	  . "SET statement_timeout = 300; SELECT meetcache.cache_get('k');");
note sprintf('took %.3fs; stderr: %s', $t, $err);
isnt($ret, 0, 'cache_get under statement_timeout fails');
like($err, qr/canceling statement due to statement timeout/,
	'cache_get: statement timeout message');
cmp_ok($t, '<', 5, 'cache_get: interrupted within 5s');

# same, in the session that already had a connection
bg_query($s, 'SET meetcache.command_timeout = 60000');
($t, $out, $err) = elapsed(
	sub {
		bg_query($s,
			"SET statement_timeout = 300; SELECT meetcache.cache_get('k'); RESET statement_timeout;"
		);
	});
note sprintf('took %.3fs; stderr: %s', $t, $err);
like($err, qr/canceling statement due to statement timeout/,
	'established session: statement timeout message');
cmp_ok($t, '<', 5, 'established session: interrupted within 5s');

# 6. pg_cancel_backend of a session blocked in cache_get
my $sb = bg_session($node);
my $bpid = bg_query($sb, 'SELECT pg_backend_pid()');
bg_query($sb, 'SET meetcache.connect_timeout = 60000; SET meetcache.command_timeout = 60000;');
my $tag = bg_send($sb, "SELECT meetcache.cache_get('k')");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $bpid AND state = 'active' AND query LIKE '%cache_get%'"
	),
	'cache_get is running');
# blocked, not slow: still running 1.2 s later (bg_wait_for polls)
my ($done) = bg_wait_for($sb, $tag, 1.2);
ok(!$done, 'cache_get is blocked on the frozen redis');
is($node->safe_psql('postgres', "SELECT pg_cancel_backend($bpid)"), 't', 'pg_cancel_backend sent');
($t, $done, $out, $err) = elapsed(sub { bg_wait_for($sb, $tag, 5) });
note sprintf('cancel took %.3fs; stderr: %s', $t, $err);
ok($done, 'cancelled cache_get returned within 5s');
like($err, qr/canceling statement due to user request/, 'cancel message');
is(bg_query($sb, 'SELECT 1'), '1', 'cancelled session still usable');

# 6b. pg_terminate_backend of a session blocked in cache_get
my $c = bg_session($node);
my $cpid = bg_query($c, 'SELECT pg_backend_pid()');
bg_query($c, 'SET meetcache.connect_timeout = 60000; SET meetcache.command_timeout = 60000;');
bg_send($c, "SELECT meetcache.cache_get('k')");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $cpid AND state = 'active' AND query LIKE '%cache_get%'"
	),
	'second cache_get is running');
ok( poll_sql($node, 'postgres',
		"SELECT wait_event_type = 'Extension' FROM pg_stat_activity WHERE pid = $cpid"),
	'second cache_get waits for the frozen redis (wait event Extension)');
($t, $ret, $out, $err) = timed_psql("SELECT pg_terminate_backend($cpid, 5000)");
note sprintf('terminate took %.3fs; stderr: %s', $t, $err);
is($out, 't', 'pg_terminate_backend: the blocked backend exited within 5s');
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $cpid"),
	'terminated backend is gone');
eval { $c->quit };

# 7. SIGCONT: everything works again, and replies are in step
$redis->thaw;
# redis has read every command that queued up while it was frozen (no
# client but ours with a non-empty query buffer)
ok( poll_until(
		20,
		sub {
			!grep { !/cmd=client\|list/ && !/ qbuf=0 / } split /\n/,
			  $redis->cli('CLIENT', 'LIST');
		}),
	'after thaw: redis worked off the commands queued while frozen');
($out, $err) = bg_query($s, q{SELECT meetcache.cache_get('kb')});
is($out, '"bval"', 'after thaw: cache_get returns the right value (session 1)');
is($err, '', 'after thaw: no error (session 1)');
($out, $err) = bg_query($sb, q{SELECT meetcache.cache_get('kb')});
is($out, '"bval"', 'after thaw: cache_get returns the right value (cancelled session)');
is($err, '', 'after thaw: no error (cancelled session)');
is(bg_query($sb, q{SELECT meetcache.cache_get('k')}), '"kval"', 'after thaw: cache_get k');
is(bg_query($s, 'SELECT meetcache.cache_ping()'), 'PONG', 'after thaw: cache_ping');

# what was committed while frozen is delivered by the worker; once the
# launcher saw redis answer, commits deliver themselves again
ok(poll_until(20, sub { !$redis->existing(@m1) }),
	'after thaw: the keys of commits made while frozen are deleted (within 20s)');
ok(wait_redis_state($node, 'up'), 'after thaw: redis_state up');
ok(wait_queue_empty($node), 'after thaw: queue and retry queue drained');

$redis->set_keys(@m1);
($out, $err) = bg_query($s, "UPDATE meetings SET title = 'ok1' WHERE id = 'm1'");
is($err, '', 'after thaw: commit without warning');
is_deeply([ $redis->existing(@m1) ], [], 'after thaw: commit deletes the keys');

$redis->set_keys(@m1);
($t, $ret, $out, $err) = timed_psql("UPDATE meetings SET title = 'ok2' WHERE id = 'm1'");
is($err, '', 'after thaw: new backend commits without warning');
is_deeply([ $redis->existing(@m1) ], [], 'after thaw: new backend deletes the keys');

$s->quit;
$sb->quit;
$o->quit;
my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|was terminated by signal|server process .* exited with exit code/,
	'no crash in the server log');
done_testing();
