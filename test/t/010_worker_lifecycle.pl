# The worker's life: two-phase commit, processes killed, a crashed server,
# several databases.  Every scenario checks "nothing lost" with a checker
# (keys of committed changes deleted, keys of rolled-back work kept).
#
#   - 2PC in each delivery mode: COMMIT PREPARED from another session
#     deletes the keys (found by the launcher's poll); ROLLBACK PREPARED
#     leaves them and no queue row; also in a database whose extension was
#     created after the launcher first looked at it.
#   - The launcher terminated (SIGTERM): the postmaster starts a new one,
#     which delivers what was committed meanwhile.  A drain terminated in
#     the middle of a delivery (Redis frozen): its rows stay queued and are
#     delivered later.
#   - PostgreSQL crash (kill -9 of a backend) with rows in meetcache.queue
#     and keys in the retry queue: after the crash-restart and Redis back,
#     the queue is delivered and families are flushed once.
#   - kill -9 of the launcher: crash-restart, the launcher comes back.
#   - Two databases with the extension: both delivered; DROP DATABASE of
#     one succeeds promptly while the worker is active, and also while its
#     drain is stuck on a frozen Redis (commit_timeout 1s, DROP DATABASE
#     waits 5s for other sessions).
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema make_rows run_sql
  bg_session bg_query poll_sql poll_until stats wait_redis_state
  wait_queue_empty elapsed run_load finish_load);

my $redis = start_redis();
my $node = new_node(
	'life', $redis,
	log_statement => 'none',
	conf => "max_prepared_transactions = 10\n"
	  . "meetcache.commit_timeout = '1s'\n"
	  . "restart_after_crash = on\n"
	  . "log_min_messages = debug1\n");

# DROP DATABASE $db, timed: (seconds, psql exit code, stdout, stderr)
sub timed_drop_database
{
	my ($db) = @_;
	return elapsed(sub { run_sql($node, 'postgres', "DROP DATABASE $db") });
}

# A barrier: a queue-mode commit whose keys the worker deleted proves a
# drain pass ran after everything committed before it.  False if the keys
# are still there after 20 s (or if mbar1 has no keys: nothing to wait for).
my $barrier_n = 0;
sub barrier
{
	my ($db) = @_;
	$db //= 'postgres';
	my $chk = MeetcacheTest::Checker->new($node, $redis, db => $db);
	my @k = $chk->seed($chk->keys_of('meetings', "t.id = 'mbar1'"));
	run_sql($node, $db, "UPDATE meetings SET title = 'b" . (++$barrier_n) . "' WHERE id = 'mbar1'",
		delivery => 'queue');
	$chk->must_delete(@k);
	return @k && !$chk->leftover(20);
}

setup_schema($node);
make_rows($node, 'postgres', '', 60);
make_rows($node, 'postgres', 'bar', 1);
my $chk = MeetcacheTest::Checker->new($node, $redis);
sub mkeys { my $i = shift; return $chk->keys_of('meetings', "t.id = 'm$i'"); }

###########################################################################
# 2PC: a database whose extension was created after the launcher's first
# look at it (as in any deployment: CREATE EXTENSION after the server
# started).  COMMIT PREPARED is announced by nobody; the poll must find it.
$node->safe_psql('postgres', 'CREATE DATABASE late');
ok( poll_sql($node, 'postgres',
		"SELECT xact_commit > 0 FROM pg_stat_database WHERE datname = 'late'"),
	'late: the launcher has looked at the new database (a drain committed there)');
setup_schema($node, 'late');
make_rows($node, 'late', 'late', 2);
{
	my $c = MeetcacheTest::Checker->new($node, $redis, db => 'late');
	my @k = $c->seed($c->keys_of('meetings', "t.id = 'mlate1'"));
	$node->safe_psql('late', q{
BEGIN; UPDATE meetings SET title = 'p' WHERE id = 'mlate1'; PREPARE TRANSACTION 'late1';});
	$node->safe_psql('late', "COMMIT PREPARED 'late1'");
	$c->must_delete(@k);
	$c->verify('late: COMMIT PREPARED delivered within 10s (poll_interval 1s)', timeout => 10);
	ok(wait_queue_empty($node, 'late', 10),
		'late: the queue rows of sync+queue commits do not linger (10s)');
}

# 2PC in each mode, in postgres
my $i = 0;
for my $mode ('sync', 'queue', 'sync+queue')
{
	my $sa = bg_session($node);
	my $sb = bg_session($node);
	bg_query($sa, "SET meetcache.delivery = '$mode'");

	# COMMIT PREPARED from another session
	my ($ia, $ib) = (++$i, ++$i);
	my @k = $chk->seed(mkeys($ia), mkeys($ib));
	my ($out, $err) = bg_query($sa,
		"BEGIN; UPDATE meetings SET title = 'p' WHERE id IN ('m$ia', 'm$ib'); PREPARE TRANSACTION 'c$ia';");
	is($err, '', "2PC $mode: PREPARE TRANSACTION") or diag($err);
	ok(barrier(), "2PC $mode: a later queue commit was delivered while prepared");
	is_deeply([ $redis->existing(@k) ], \@k, "2PC $mode: nothing deleted while only prepared");
	($out, $err) = bg_query($sb, "COMMIT PREPARED 'c$ia'");
	is($err, '', "2PC $mode: COMMIT PREPARED from another session");
	$chk->must_delete(@k);
	$chk->verify("2PC $mode, COMMIT PREPARED", timeout => 10);

	# ROLLBACK PREPARED from another session
	my $ir = ++$i;
	@k = $chk->seed(mkeys($ir));
	bg_query($sa,
		"BEGIN; UPDATE meetings SET title = 'r' WHERE id = 'm$ir'; PREPARE TRANSACTION 'r$ir';");
	($out, $err) = bg_query($sb, "ROLLBACK PREPARED 'r$ir'");
	is($err, '', "2PC $mode: ROLLBACK PREPARED from another session");
	ok(barrier(), "2PC $mode: a later queue commit was delivered");
	$chk->must_survive(@k);
	$chk->verify("2PC $mode, ROLLBACK PREPARED");
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM meetcache.queue WHERE keys && ARRAY['meeting:m$ir']"),
		0, "2PC $mode: ROLLBACK PREPARED left no queue row");
	is($node->safe_psql('postgres', "SELECT title FROM meetings WHERE id = 'm$ir'"),
		't0', "2PC $mode: rolled back");
	$sa->quit;
	$sb->quit;
}

###########################################################################
# The launcher terminated: a new one, which delivers what was committed
# while there was none.
{
	my $old = stats($node)->{launcher_pid};
	is( $node->safe_psql('postgres',
			"SELECT pg_terminate_backend($old, 5000)"),
		't', 'launcher: pg_terminate_backend, exited within 5s');
	my ($ia, $ib) = (++$i, ++$i);
	my @k = $chk->seed(mkeys($ia), mkeys($ib));
	my ($rc) = run_sql($node, 'postgres', "UPDATE meetings SET title = 'w' WHERE id = 'm$ia'", delivery => 'queue');
	is($rc, 0, 'launcher gone: queue-mode commit');
	($rc) = run_sql($node, 'postgres', "UPDATE meetings SET title = 'w' WHERE id = 'm$ib'", delivery => 'sync+queue');
	is($rc, 0, 'launcher gone: sync+queue commit');
	$chk->must_delete(@k);
	ok( poll_sql($node, 'postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity a, meetcache.stats s "
			  . "WHERE a.backend_type = 'meetcache launcher' AND a.pid = s.launcher_pid "
			  . "AND a.pid <> $old AND s.worker_state = 'running'"),
		'launcher: a new launcher is running');
	$chk->verify('launcher restarted');
	@k = $chk->seed(mkeys(++$i));
	run_sql($node, 'postgres', "UPDATE meetings SET title = 'w' WHERE id = 'm$i'", delivery => 'queue');
	$chk->must_delete(@k);
	$chk->verify('launcher restarted, later commit');
}

# A drain terminated in the middle of a delivery (Redis frozen).  A drain
# gives up on a frozen Redis after commit_timeout: 3s here, so that the
# delivery is seen in progress.
{
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET meetcache.commit_timeout = '3s'; SELECT pg_reload_conf();");
	ok(poll_sql($node, 'postgres', 'SHOW meetcache.commit_timeout', '3s'),
		'drain: commit_timeout 3s');
	ok(wait_queue_empty($node), 'drain: queue empty before');
	my @k = $chk->seed(mkeys(++$i));
	$redis->freeze;
	my ($rc) = run_sql($node, 'postgres', "UPDATE meetings SET title = 'd' WHERE id = 'm$i'", delivery => 'queue');
	is($rc, 0, 'drain: queue-mode commit with redis frozen');
	my $dpid = '';
	poll_until(
		20,
		sub {
			$dpid = $node->safe_psql('postgres',
				"SELECT pid FROM pg_stat_activity WHERE backend_type = 'meetcache drain' "
				  . "AND datname = 'postgres' AND backend_xid IS NOT NULL LIMIT 1");
			return $dpid ne '';
		});
	isnt($dpid, '', 'drain: a drain is delivering (in a transaction)');
	if ($dpid ne '')
	{
		my ($t, $r) =
		  elapsed(sub { $node->safe_psql('postgres', "SELECT pg_terminate_backend($dpid, 10000)") });
		note sprintf('terminating the drain took %.2fs', $t);
		is($r, 't', 'drain: terminated (exited within 10s)');
	}
	is($node->safe_psql('postgres', "SELECT count(*) FROM meetcache.queue WHERE keys && ARRAY['meeting:m$i']"),
		1, 'drain: its row is still queued');
	$redis->thaw;
	$chk->must_delete(@k);
	$chk->verify('drain terminated, redis thawed');
	ok(wait_queue_empty($node), 'drain: queue empty after');
	$node->safe_psql('postgres',
		'ALTER SYSTEM RESET meetcache.commit_timeout; SELECT pg_reload_conf();');
	ok(poll_sql($node, 'postgres', 'SHOW meetcache.commit_timeout', '1s'),
		'drain: commit_timeout back to 1s');
}

###########################################################################
# Two databases with the extension: both delivered, and DROP DATABASE of
# one while the worker is active.
$node->safe_psql('postgres', 'CREATE DATABASE second');
setup_schema($node, 'second');
make_rows($node, 'second', 'b', 20);
make_rows($node, 'second', 'bar', 1);
{
	my $c2 = MeetcacheTest::Checker->new($node, $redis, db => 'second');
	my @k1 = $chk->seed(map { mkeys($_) } ($i + 1) .. ($i + 10));
	my @k2 = $c2->seed(map { $c2->keys_of('meetings', "t.id = 'mb$_'") } 1 .. 10);
	my @keep2 = $c2->seed(map { $c2->keys_of('meetings', "t.id = 'mb$_'") } 11 .. 20);
	for my $j (1 .. 10)
	{
		run_sql($node, 'postgres', "UPDATE meetings SET title = 'q' WHERE id = 'm" . ($i + $j) . "'", delivery => 'queue');
		run_sql($node, 'second', "UPDATE meetings SET title = 'q' WHERE id = 'mb$j'", delivery => 'queue');
	}
	$i += 10;
	$chk->must_delete(@k1);
	$c2->must_delete(@k2);
	$c2->must_survive(@keep2);
	$chk->verify('two databases: postgres delivered');
	$c2->verify('two databases: second delivered');

	# keep the worker busy in postgres while dropping the other database
	$chk->seed(map { mkeys($_) } ($i + 1) .. 60);
	my $h = run_load($node,
		scripts => [ [ "UPDATE meetings SET title = 'l' WHERE id = (SELECT 'm' || (" . ($i + 1)
				  . " + floor(random() * " . (60 - $i) . "))::int);\n" ] ],
		clients => 2, jobs => 1, seconds => 3, rate => 100,
		options => '-c meetcache.delivery=queue',
		background => 1);
	run_sql($node, 'second', "UPDATE meetings SET title = 'x' WHERE id = 'mb11'", delivery => 'queue');
	my $seen = poll_until(5, sub {
		$node->safe_psql('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'meetcache drain' AND datname = 'second'") > 0 });
	note $seen ? 'a drain of "second" is connected' : 'no drain of "second" seen (already gone)';
	my ($t, $rc, $out, $err) = timed_drop_database('second');
	note sprintf('DROP DATABASE took %.2fs', $t);
	is($rc, 0, 'DROP DATABASE of a database with the extension succeeds while the worker is active')
	  or diag($err);
	cmp_ok($t, '<', 15, 'DROP DATABASE is not held up by the worker');
	my $r = finish_load($h);
	is($r->{rc}, 0, 'load in postgres during the DROP: no failure') or diag($r->{stderr});
	# every row of the range has its keys seeded; the updated ones must go
	my $range = "t.id IN (SELECT 'm' || g FROM generate_series(" . ($i + 1) . ", 60) g)";
	$chk->must_delete($chk->keys_of('meetings', "$range AND t.title = 'l'"));
	$chk->must_survive($chk->keys_of('meetings', "$range AND t.title <> 'l'"));
	$chk->verify('two databases: postgres delivered during and after the DROP');
	$i = 60;
}

# DROP DATABASE while its drain waits for a frozen Redis
$node->safe_psql('postgres', 'CREATE DATABASE third');
setup_schema($node, 'third');
make_rows($node, 'third', 't', 1);
{
	ok(wait_queue_empty($node), 'third: queue empty before');
	$redis->freeze;
	my ($rc) = run_sql($node, 'third', "UPDATE meetings SET title = 'f' WHERE id = 'mt1'", delivery => 'queue');
	is($rc, 0, 'third: queue-mode commit with redis frozen');
	my $seen = poll_until(20, sub {
		$node->safe_psql('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'meetcache drain' "
			  . "AND datname = 'third' AND backend_xid IS NOT NULL") > 0 });
	note $seen ? 'the drain of "third" is delivering' : 'no drain of "third" seen delivering';
	my ($t, $r, $out, $err) = timed_drop_database('third');
	note sprintf('DROP DATABASE (drain stuck on frozen redis) took %.2fs', $t);
	is($r, 0, 'DROP DATABASE succeeds while its drain waits for a frozen redis') or diag($err);
	cmp_ok($t, '<', 15, 'DROP DATABASE with a stuck drain: bounded');
	$redis->thaw;
	ok(wait_redis_state($node, 'up'), 'third: redis_state up after thaw');
	ok(barrier(), 'third: postgres still delivered after the DROP');
}

###########################################################################
# PostgreSQL crash with undelivered work: rows in meetcache.queue, keys in
# the launcher's retry queue (shared memory, lost in the crash).
make_rows($node, 'postgres', 'c', 20);
{
	ok(wait_queue_empty($node), 'crash: queue empty before');
	my @kq = $chk->seed(map { $chk->keys_of('meetings', "t.id = 'mc$_'") } 1 .. 10);
	my @ks = $chk->seed(map { $chk->keys_of('meetings', "t.id = 'mc$_'") } 11 .. 20);
	$redis->set_keys('unrelated:key');
	$redis->cli('SAVE');
	$redis->stop;

	my $s = bg_session($node);
	my $victim = bg_query($s, 'SELECT pg_backend_pid()');
	for my $j (1 .. 10)
	{
		my ($rc, $o, $e) = run_sql($node, 'postgres', "UPDATE meetings SET title = 'q' WHERE id = 'mc$j'", delivery => 'queue');
		is($rc, 0, "crash: queue-mode commit $j, redis down") if $j == 1;
	}
	for my $j (11 .. 20)
	{
		my ($rc, $o, $e) = run_sql($node, 'postgres', "UPDATE meetings SET title = 's' WHERE id = 'mc$j'", delivery => 'sync');
		is($rc, 0, "crash: sync commit $j, redis down") if $j == 11;
	}
	my $st = stats($node);
	cmp_ok($st->{queue_depth}, '>=', 10, 'crash: rows wait in meetcache.queue');
	cmp_ok($st->{retry_queue_entries}, '>=', 1, 'crash: keys wait in the retry queue');

	my $logpos = -s $node->logfile;
	my $old_launcher = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'meetcache launcher'");
	kill 'KILL', $victim;
	# a new launcher, not the old one before the postmaster saw the crash
	ok( poll_sql($node, 'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'meetcache launcher'"
			  . " AND pid <> '$old_launcher'",
			'1', 60),
		'crash: the server restarted, with a launcher');
	eval { $s->quit };
	poll_until(30, sub { slurp_file($node->logfile, $logpos) =~ /may have been lost/ });
	my $log = slurp_file($node->logfile, $logpos);
	like($log, qr/terminated by signal 9/, 'crash: the backend was killed');
	like($log, qr/invalidations of sync transactions may have been lost/,
		'crash: meetcache noticed the lost shared memory');
	$st = stats($node);
	cmp_ok($st->{queue_depth}, '>=', 10, 'crash: the queue rows survived the crash');
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM meetings WHERE id LIKE 'mc%' AND title IN ('q', 's')"),
		20, 'crash: the commits survived');

	$redis->start(keep_data => 1);
	is($redis->cli('EXISTS', 'unrelated:key'), '1', 'crash: redis back with its data');
	$chk->must_delete(@kq, @ks);
	# families are flushed, so only keys outside every family survive
	$chk->must_survive('unrelated:key');
	$chk->verify('crash: after the restart');
	ok(wait_queue_empty($node), 'crash: the queue emptied');
	ok(wait_redis_state($node, 'up'), 'crash: redis_state up');
	ok( poll_until(20, sub { slurp_file($node->logfile, $logpos) =~ /flushed every cache family/ }),
		'crash: the drain flushed the cache families');
	cmp_ok(stats($node)->{family_flushes}, '>=', 1, 'crash: family_flushes counted');
}

# kill -9 of the launcher: a crash-restart, the launcher comes back and
# delivers
{
	my $old = stats($node)->{launcher_pid};
	my $logpos = -s $node->logfile;
	kill 'KILL', $old;
	ok( poll_sql($node, 'postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'meetcache launcher' AND pid <> $old",
			't', 60),
		'launcher killed -9: the server restarted with a new launcher');
	like(slurp_file($node->logfile, $logpos), qr/meetcache launcher.*terminated by signal 9/,
		'launcher killed -9: crash-restart logged');
	my @k = $chk->seed($chk->keys_of('meetings', "t.id IN ('mc1', 'mc11')"));
	run_sql($node, 'postgres', "UPDATE meetings SET title = 'k' WHERE id = 'mc1'", delivery => 'queue');
	run_sql($node, 'postgres', "UPDATE meetings SET title = 'k' WHERE id = 'mc11'", delivery => 'sync');
	$chk->must_delete(@k);
	$chk->verify('launcher killed -9: later commits delivered');
	ok(wait_queue_empty($node), 'launcher killed -9: queue empty');
}

my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC/, 'no PANIC in the server log');
done_testing();
