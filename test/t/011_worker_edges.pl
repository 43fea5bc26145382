# Edge cases of the worker: more databases than drains, a Redis that
# refuses deletes, the running marker across unclean stops, database
# settings the drains must ignore, DROP EXTENSION in a writing transaction,
# and the pending view's "delivered" column.  Every scenario checks
# "nothing lost" with a checker where it applies; every wait is bounded
# polling; the only timing assertions are generous bounds.
#
#   1. Seven databases with the extension (plus postgres; the launcher
#      runs at most 4 drains at once), a light queue-mode load keeping the
#      drains of five of them busy: a COMMIT PREPARED in the 6th and 7th
#      (announced by nobody, found by the poll) is delivered within 10 s,
#      sync+queue rows of every database are removed within 10 s, the
#      load's keys are all deleted and every queue empties.
#   2. Pending view: right after a sync+queue commit its row may still be
#      there, then with delivered = t, and queue_depth (undelivered rows
#      only) is 0; with Redis frozen the row is delivered = f and counted.
#   3. ALTER DATABASE ... SET default_transaction_read_only = on,
#      statement_timeout = '1ms': the drains of that database still
#      deliver and empty its queue.
#   4. DROP EXTENSION meetcache CASCADE in the transaction that wrote to
#      an attached table (sync+queue, queue): COMMIT succeeds and the keys
#      are deleted as in sync mode; PREPARE TRANSACTION of such a
#      transaction fails cleanly (rolled back, keys kept).
#   5. A Redis ACL user that may not touch meeting keys (NOPERM), set as
#      the server-wide URL: in queue mode the refused row does not stall
#      the queue (a later user-only transaction is delivered), a WARNING
#      is logged, the row stays queued and commits never fail; in sync
#      mode commits succeed, each one tries Redis (the breaker does not
#      open: redis_state up, breaker_trips unchanged); with the full user
#      back, the stuck rows are delivered.
#   6. The running marker ($PGDATA/meetcache.running), on a second node
#      with its own Redis: clean stop with nothing pending -> marker gone,
#      no flush at the next start, a family key survives; immediate stop
#      with keys in the retry queue (Redis frozen) -> the next start flushes
#      every family; after that flush a clean stop removes the marker again;
#      two kill -9 of the launcher in a row -> the marker still exists.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use MeetcacheTest qw(start_redis new_node setup_schema make_rows run_sql
  log_since write_secret_file poll_sql poll_until stats wait_redis_state
  run_load finish_load);

my $t_begin = time;
my $redis = start_redis();
my $node = new_node(
	'edges', $redis,
	log_statement => 'none',
	conf => "max_prepared_transactions = 10\n"
	  . "max_worker_processes = 16\n"
	  . "meetcache.commit_timeout = '500ms'\n");

sub queue_rows_with
{
	my ($n, $db, $key) = @_;
	return $n->safe_psql($db,
		"SELECT count(*) FROM meetcache.queue WHERE keys && ARRAY['$key']");
}

setup_schema($node);
make_rows($node, 'postgres', 'p_', 10);

###########################################################################
# 1. More databases than drains
my @dbs = map { "edge$_" } 1 .. 7;
for my $d (1 .. 7)
{
	$node->safe_psql('postgres', "CREATE DATABASE edge$d");
	setup_schema($node, "edge$d");
	make_rows($node, "edge$d", "e${d}_", 5);
	make_rows($node, "edge$d", "l${d}_", 30) if $d <= 5;
}
note sprintf('setup of 8 databases took %.1fs', time - $t_begin);
{
	# the setup's own sync+queue rows gone first
	ok( poll_until(20, sub {
			!grep { $node->safe_psql($_, 'SELECT count(*) FROM meetcache.queue') ne '0' } @dbs }),
		'many databases: setup rows drained');
	my %chk = map { $_ => MeetcacheTest::Checker->new($node, $redis, db => $_) } @dbs;

	# a light queue-mode load in edge1..edge5: their drains come and go
	my @load;
	for my $d (1 .. 5)
	{
		$chk{"edge$d"}->seed($chk{"edge$d"}->keys_of('meetings', "starts_with(t.id, 'ml${d}_')"));
		push @load, run_load($node,
			db => "edge$d",
			scripts => [ [ "\\set r random(1, 30)\nUPDATE meetings SET title = 'l' WHERE id = 'ml${d}_' || :r;\n" ] ],
			clients => 1, jobs => 1, seconds => 8, rate => 3,
			options => '-c meetcache.delivery=queue',
			background => 1);
	}
	ok( poll_sql($node, 'edge5', "SELECT count(*) > 0 FROM meetings WHERE title = 'l'"),
		'many databases: the load in edge1..edge5 is running');
	my $busy = poll_until(3, sub {
		$node->safe_psql('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'meetcache drain'") >= 4 });
	note $busy ? 'four drains seen running at once' : 'fewer than four drains seen at once';

	# 2PC in edge6 and edge7: PREPARE, then COMMIT PREPARED from another session
	my @k;
	for my $d (6, 7)
	{
		my $c = $chk{"edge$d"};
		push @k, $c->seed($c->keys_of('meetings', "t.id = 'me${d}_1'"));
		$c->must_survive($c->seed($c->keys_of('meetings', "t.id = 'me${d}_5'")));
		$node->safe_psql("edge$d",
			"BEGIN; UPDATE meetings SET title = 'p' WHERE id = 'me${d}_1'; PREPARE TRANSACTION 'edge$d';");
		is(queue_rows_with($node, "edge$d", "meeting:me${d}_1"), 0,
			"edge$d: the prepared row is not visible yet");
	}
	for my $d (6, 7)
	{
		$node->safe_psql("edge$d", "COMMIT PREPARED 'edge$d'");
		$chk{"edge$d"}->must_delete($chk{"edge$d"}->keys_of('meetings', "t.id = 'me${d}_1'"));
	}
	# sync+queue (the default) commits in every database
	for my $d (1 .. 7)
	{
		my $c = $chk{"edge$d"};
		my @kk = $c->seed($c->keys_of('meetings', "t.id = 'me${d}_2'"));
		my ($rc, $o, $e) = run_sql($node, "edge$d",
			"UPDATE meetings SET title = 'sq' WHERE id = 'me${d}_2'");
		is($rc, 0, "edge$d: sync+queue commit") or diag($e);
		$c->must_delete(@kk);
	}
	# keep => 1: edge6 and edge7 have no load of their own; "after the load"
	# below checks their keys again (their survivor outlives the load of
	# the other databases, which share this Redis)
	for my $d (6, 7)
	{
		$chk{"edge$d"}->verify("edge$d: COMMIT PREPARED delivered within 10s while other databases keep drains busy",
			timeout => 10, keep => 1);
	}
	for my $d (1 .. 7)
	{
		ok( poll_sql($node, "edge$d",
				"SELECT count(*) = 0 FROM meetcache.queue WHERE keys && ARRAY['meeting:me${d}_2', 'meeting:me${d}_1']",
				't', 10),
			"edge$d: its sync+queue (and 2PC) rows are removed within 10s");
	}
	for my $d (1 .. 5)
	{
		my $r = finish_load($load[ $d - 1 ]);
		is($r->{rc}, 0, "edge$d: load without failure ($r->{processed} transactions)")
		  or diag($r->{stdout} . $r->{stderr});
		my $c = $chk{"edge$d"};
		$c->must_delete($c->keys_of('meetings', "starts_with(t.id, 'ml${d}_') AND t.title = 'l'"));
		$c->must_survive($c->keys_of('meetings', "starts_with(t.id, 'ml${d}_') AND t.title <> 'l'"));
	}
	$chk{$_}->verify("$_: after the load", timeout => 10) for @dbs;
	for my $db (@dbs)
	{
		ok(poll_sql($node, $db, 'SELECT count(*) FROM meetcache.queue', '0', 10),
			"$db: meetcache.queue empty within 10s");
	}
	my $st = stats($node);
	is($st->{breaker_trips}, 0, 'many databases: the breaker never opened');
}
note sprintf('%.1fs: many databases done', time - $t_begin);

###########################################################################
# 2. The pending view's "delivered" column and queue_depth
{
	my $chk = MeetcacheTest::Checker->new($node, $redis);
	my $skipped0 = stats($node)->{queue_rows_skipped};
	my @k = $chk->seed(map { $chk->keys_of('meetings', "t.id = 'mp_$_'") } 1 .. 3);
	# Hold the drains off while the view is looked at (a drain woken by the lookups, or
	# the launcher's poll, would take the rows): drains of this database read its
	# settings when they connect, and fail on this URL; this session delivers itself.
	$node->safe_psql('postgres', "ALTER DATABASE postgres SET meetcache.redis_url = 'redis://127.0.0.1:1/0'");
	ok(poll_sql($node, 'postgres', 'SELECT drains_running FROM meetcache.stats()', '0', 20),
		'pending: no drain with the good URL is running');
	# a loaded machine may take longer than the node's 500ms: these commits must deliver
	my $sql = "SET meetcache.redis_url = '" . $redis->url . "';\n"
	  . "SET meetcache.delivery = 'sync+queue';\nSET meetcache.commit_timeout = '10s';\n";
	for my $i (1 .. 3)
	{
		$sql .= "UPDATE meetings SET title = 'v' WHERE id = 'mp_$i';\n"
		  . "SELECT count(*) || '|' || count(*) FILTER (WHERE delivered) || '|' || "
		  . "(SELECT queue_depth FROM meetcache.stats) FROM meetcache.pending;\n";
	}
	my ($rc, $out, $err) = run_sql($node, 'postgres', $sql);
	is($rc, 0, 'pending: three sync+queue commits') or diag($err);
	my @lines = split /\n/, $out;
	is(scalar @lines, 3, 'pending: three looks at the view');
	my $seen = 0;
	for my $l (@lines)
	{
		my ($n, $d, $qd) = split /\|/, $l;
		$seen += $n;
		is($d, $n, "pending: every row present right after the commit is delivered = t ($l)");
		is($qd, 0, 'pending: queue_depth counts no delivered row');
	}
	cmp_ok($seen, '>', 0, 'pending: rows were present right after their commits');
	$chk->must_delete(@k);
	$chk->verify('pending: sync+queue keys deleted at commit', timeout => 5);
	$node->safe_psql('postgres', 'ALTER DATABASE postgres RESET meetcache.redis_url');
	ok(poll_sql($node, 'postgres', 'SELECT count(*) FROM meetcache.queue', '0', 20),
		'pending: the delivered rows are removed by a later drain (20s: drain backoff)');
	cmp_ok(stats($node)->{queue_rows_skipped} - $skipped0, '>=', 3,
		'pending: the drain removed them without sending again (queue_rows_skipped)');

	# with Redis frozen: not delivered, counted
	@k = $chk->seed($chk->keys_of('meetings', "t.id = 'mp_4'"));
	$redis->freeze;
	($rc, $out, $err) = run_sql($node, 'postgres',
		"UPDATE meetings SET title = 'v' WHERE id = 'mp_4';\n"
		  . "SELECT string_agg(delivered::text, ',') || '|' || (SELECT queue_depth FROM meetcache.stats) "
		  . "FROM meetcache.pending WHERE keys && ARRAY['meeting:mp_4'];", delivery => 'sync+queue');
	is($rc, 0, 'pending, redis frozen: the commit succeeds') or diag($err);
	is($out, 'false|1', 'pending, redis frozen: the row is delivered = f and counted in queue_depth');
	$redis->thaw;
	$chk->must_delete(@k);
	$chk->verify('pending, redis thawed');
	ok(wait_redis_state($node, 'up'), 'pending: redis_state up');
	ok(poll_sql($node, 'postgres', 'SELECT count(*) FROM meetcache.queue', '0', 10),
		'pending: queue empty after the thaw');
}

###########################################################################
# 3. A read-only database with a 1 ms statement_timeout
$node->safe_psql('postgres', 'CREATE DATABASE rodb');
setup_schema($node, 'rodb');
make_rows($node, 'rodb', 'ro_', 5);
{
	my $chk = MeetcacheTest::Checker->new($node, $redis, db => 'rodb');
	# keys computed before the settings (the checker's own queries would time out)
	my @kq = $chk->keys_of('meetings', "t.id IN ('mro_1', 'mro_2')");
	my @ksq = $chk->keys_of('meetings', "t.id = 'mro_3'");
	my @keep = $chk->keys_of('meetings', "t.id = 'mro_5'");
	$node->safe_psql('postgres',
		"ALTER DATABASE rodb SET default_transaction_read_only = on;\n"
		  . "ALTER DATABASE rodb SET statement_timeout = '1ms';");
	my ($rc, $out, $err);
	{
		local $ENV{PGOPTIONS} = '-c statement_timeout=0';
		($rc, $out, $err) = run_sql($node, 'rodb',
			"UPDATE meetings SET title = 'x' WHERE id = 'mro_4'");
		like($err, qr/read-only transaction/, 'rodb: a plain session is read-only');
	}
	my $logpos = -s $node->logfile;
	$chk->seed(@kq, @ksq, @keep);
	{
		local $ENV{PGOPTIONS} = '-c default_transaction_read_only=off -c statement_timeout=0';
		($rc, $out, $err) = run_sql($node, 'rodb',
			"UPDATE meetings SET title = 'q' WHERE id = 'mro_1';\n"
			  . "UPDATE meetings SET title = 'q' WHERE id = 'mro_2';", delivery => 'queue');
		is($rc, 0, 'rodb: queue-mode commits (session settings read_only off)') or diag($err);
		($rc, $out, $err) = run_sql($node, 'rodb',
			"UPDATE meetings SET title = 'q' WHERE id = 'mro_3';", delivery => 'sync+queue');
		is($rc, 0, 'rodb: sync+queue commit') or diag($err);
		$chk->must_delete(@kq, @ksq);
		$chk->must_survive(@keep);
		$chk->verify('rodb: queue rows drained despite read-only and statement_timeout');
		ok(poll_sql($node, 'rodb', 'SELECT count(*) FROM meetcache.queue', '0', 10),
			'rodb: meetcache.queue empties');
	}
	unlike(log_since($node, $logpos),
		qr/read-only transaction|statement timeout|exited with exit code|will retry/,
		'rodb: no drain failed on the database settings');
	$node->safe_psql('postgres', 'ALTER DATABASE rodb RESET ALL');
}

###########################################################################
# 4. DROP EXTENSION ... CASCADE in the writing transaction
$node->safe_psql('postgres', 'CREATE DATABASE dropx');
setup_schema($node, 'dropx');
make_rows($node, 'dropx', 'dx_', 5);
{
	my $chk = MeetcacheTest::Checker->new($node, $redis, db => 'dropx');
	my %k = map { $_ => [ $chk->keys_of('meetings', "t.id = 'mdx_$_'") ] } 1 .. 3;
	for my $case ([ 'sync+queue (default)', undef, 1 ], [ 'queue', 'queue', 2 ])
	{
		my ($what, $mode, $i) = @$case;
		$node->safe_psql('dropx',
			'CREATE EXTENSION IF NOT EXISTS meetcache; SELECT meetcache.attach_defaults();')
		  if $i > 1;
		$chk->seed(@{ $k{$i} });
		my ($rc, $out, $err) = run_sql($node, 'dropx',
			"BEGIN;\nUPDATE meetings SET title = 'd' WHERE id = 'mdx_$i';\n"
			  . "DROP EXTENSION meetcache CASCADE;\nCOMMIT;", delivery => $mode);
		is($rc, 0, "DROP EXTENSION in the writing transaction, $what: COMMIT succeeds");
		unlike($err, qr/ERROR|FATAL|PANIC/, "DROP EXTENSION, $what: no error") or diag($err);
		is($node->safe_psql('dropx',
				"SELECT count(*) FROM pg_extension WHERE extname = 'meetcache'"),
			0, "DROP EXTENSION, $what: the extension is gone");
		$chk->must_delete(@{ $k{$i} });
		$chk->verify("DROP EXTENSION, $what: keys deleted at commit", timeout => 5);
	}
	# PREPARE TRANSACTION needs the queue it just dropped: refused, rolled back
	$node->safe_psql('dropx',
		'CREATE EXTENSION meetcache; SELECT meetcache.attach_defaults();');
	$chk->seed(@{ $k{3} });
	my ($rc, $out, $err) = run_sql($node, 'dropx',
		"BEGIN;\nUPDATE meetings SET title = 'd' WHERE id = 'mdx_3';\n"
		  . "DROP EXTENSION meetcache CASCADE;\nPREPARE TRANSACTION 'dx3';");
	like($err, qr/ERROR/, 'DROP EXTENSION then PREPARE TRANSACTION: refused');
	is($node->safe_psql('dropx',
			"SELECT (SELECT count(*) FROM pg_prepared_xacts) || '|' || "
			  . "(SELECT count(*) FROM pg_extension WHERE extname = 'meetcache') || '|' || "
			  . "(SELECT title FROM meetings WHERE id = 'mdx_3')"),
		'0|1|t0', 'DROP EXTENSION then PREPARE TRANSACTION: rolled back, nothing prepared');
	$chk->must_survive(@{ $k{3} });
	$chk->verify('DROP EXTENSION then PREPARE TRANSACTION: keys of the rolled-back change kept');
}
note sprintf('%.1fs: pending, rodb, dropx done', time - $t_begin);

###########################################################################
# 5. Redis refuses the deletes of meeting keys (ACL, NOPERM)
$node->safe_psql('postgres', 'CREATE DATABASE acl');
setup_schema($node, 'acl');
make_rows($node, 'acl', 'a_', 10);
# users hosting nothing: their changes touch user:* keys only
$node->safe_psql('acl', q{
INSERT INTO users (id, name, email)
  SELECT 'ub_' || g, 'B', 'ub_' || g || '@x' FROM generate_series(1, 5) g;});
{
	my $chk = MeetcacheTest::Checker->new($node, $redis, db => 'acl');
	is( $redis->cli('ACL', 'SETUSER', 'limited', 'reset', 'on', '>pw',
			'~user:*', '~mc-lease:*', '+@all'),
		'OK', 'acl: a redis user limited to user:* and lease keys');
	my $limited = $redis->url(user => 'limited', password => undef);
	my $pwfile = $node->basedir . '/redis.pw';
	write_secret_file($pwfile, "pw\n");
	# the setup's own sync+queue rows gone first: only the rows below get refused
	ok(poll_sql($node, 'acl', 'SELECT count(*) FROM meetcache.queue', '0', 10),
		'acl: queue empty before');
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET meetcache.redis_url = '$limited'; "
		  . "ALTER SYSTEM SET meetcache.redis_password_file = '$pwfile'; SELECT pg_reload_conf();");
	ok(poll_sql($node, 'acl', 'SHOW meetcache.redis_url', $limited),
		'acl: the server-wide redis_url is the limited user');
	my $trips0 = stats($node, 'acl')->{breaker_trips};
	my $logpos = -s $node->logfile;

	# queue mode: a refused row first, then a user-only transaction
	my @km = $chk->seed($chk->keys_of('meetings', "t.id = 'ma_1'"));
	my @ku = $chk->seed($chk->affected('users', undef,
			'{"id": "ua_new", "name": "N", "email": "ua_new@x"}'));
	ok(!grep({ !/^user:/ } @ku), "acl: a new user's keys are all user:* (@ku)");
	my ($rc, $out, $err) = run_sql($node, 'acl',
		"UPDATE meetings SET title = 'r' WHERE id = 'ma_1'", delivery => 'queue');
	is($rc, 0, 'acl, queue: the commit touching a meeting succeeds') or diag($err);
	($rc, $out, $err) = run_sql($node, 'acl',
		"INSERT INTO users (id, name, email) VALUES ('ua_new', 'N', 'ua_new\@x')", delivery => 'queue');
	is($rc, 0, 'acl, queue: the user-only commit succeeds') or diag($err);
	$chk->must_delete(@ku);
	$chk->verify('acl, queue: the allowed row is delivered behind the refused one');
	ok( poll_until(20, sub {
			log_since($node, $logpos) =~ /WARNING:.*redis refused to delete the keys of queue row \d+/ }),
		'acl, queue: a WARNING about the refused keys in the server log');
	like(log_since($node, $logpos), qr/NOPERM/, 'acl, queue: the log names the refusal (NOPERM)');
	is(queue_rows_with($node, 'acl', 'meeting:ma_1'), 1,
		'acl, queue: the refused row stays in meetcache.queue');
	is(queue_rows_with($node, 'acl', 'user:ua_new'), 0,
		'acl, queue: the allowed row is gone');
	is(scalar($redis->existing('meeting:ma_1')), 1, 'acl, queue: the refused key is still there');
	# later rows keep flowing while the refused one is retried
	my @ku2 = $chk->seed($chk->keys_of('users', "t.id = 'ub_2'"));
	($rc) = run_sql($node, 'acl', "UPDATE users SET name = 'x' WHERE id = 'ub_2'", delivery => 'queue');
	is($rc, 0, 'acl, queue: a later user-only commit');
	$chk->must_delete(@ku2);
	$chk->verify('acl, queue: later rows are not stalled either');

	# sync+queue: the backend is refused; the row waits like the first one
	my @ksq = $chk->seed($chk->keys_of('meetings', "t.id = 'ma_3'"));
	($rc, $out, $err) = run_sql($node, 'acl',
		"UPDATE meetings SET title = 'r' WHERE id = 'ma_3'", delivery => 'sync+queue');
	is($rc, 0, 'acl, sync+queue: the commit succeeds');
	like($err, qr/WARNING:.*could not delete \d+ cache keys after commit/,
		'acl, sync+queue: the refusal is a WARNING to the session');

	# sync: every commit tries Redis (the breaker stays closed)
	my @ks;
	for my $i (4 .. 6)
	{
		push @ks, $chk->seed($chk->keys_of('meetings', "t.id = 'ma_$i'"));
		($rc, $out, $err) = run_sql($node, 'acl',
			"UPDATE meetings SET title = 'r' WHERE id = 'ma_$i'", delivery => 'sync');
		is($rc, 0, "acl, sync: commit $i succeeds");
		like($err, qr/WARNING:.*could not delete \d+ cache keys after commit:.*NOPERM/s,
			"acl, sync: commit $i tried Redis and was refused (breaker not open)");
		like($err, qr/background worker deletes its keys/,
			"acl, sync: commit $i handed its keys to the worker (same redis_url as the launcher)")
		  if $i == 4;
	}
	my @ku3 = $chk->seed($chk->keys_of('users', "t.id = 'ub_3'"));
	($rc, $out, $err) = run_sql($node, 'acl',
		"UPDATE users SET name = 'y' WHERE id = 'ub_3'", delivery => 'sync');
	is($rc, 0, 'acl, sync: a user-only commit');
	is($err, '', 'acl, sync: a user-only commit gets no warning');
	$chk->must_delete(@ku3);
	$chk->verify('acl, sync: allowed keys deleted by the committing backend', timeout => 5);
	ok( poll_until(20, sub {
			my @w = log_since($node, $logpos) =~ /meetcache launcher: redis refused to delete/g;
			@w >= 3 }),
		'acl, sync: the launcher tried the keys of all three commits and logged each refusal');
	ok( poll_sql($node, 'acl', 'SELECT retry_queue_entries FROM meetcache.stats', '0'),
		'acl, sync: the retry queue does not keep refused keys');
	my $st = stats($node, 'acl');
	note 'acl, sync: ' . join(', ', map { "$_=$st->{$_}" } sort keys %$st);
	is($st->{redis_state}, 'up', 'acl, sync: redis_state stays up (a refusal is not an outage)');
	is($st->{breaker_trips}, $trips0, 'acl: breaker_trips unchanged');

	# the full user again: the set-aside rows are delivered by a later drain
	$node->safe_psql('postgres',
		'ALTER SYSTEM RESET meetcache.redis_url; '
		  . 'ALTER SYSTEM RESET meetcache.redis_password_file; SELECT pg_reload_conf();');
	ok(poll_sql($node, 'acl', 'SHOW meetcache.redis_url', $redis->url),
		'acl: the server-wide redis_url is the full user again');
	$chk->must_delete(@km, @ksq);
	$chk->verify('acl: refused rows delivered once redis accepts');
	ok(poll_sql($node, 'acl', 'SELECT count(*) FROM meetcache.queue', '0', 10),
		'acl: meetcache.queue empty');
	my @left = $redis->existing(@ks);
	# not asserted: deleted only if a family flush of acl happened to run
	# after the switch; a flush refused by the limited user is not retried
	note scalar(@left) . ' of ' . scalar(@ks)
	  . ' keys of refused sync commits remain';
	is(stats($node, 'acl')->{breaker_trips}, $trips0, 'acl: the breaker never opened');
}
note sprintf('%.1fs: acl done', time - $t_begin);

###########################################################################
# 6. The running marker, on a node of its own (family flushes would wipe
# the keys of the other scenarios)
my $redis2 = start_redis();
my $node2 = new_node(
	'marker', $redis2,
	log_statement => 'none',
	conf => "meetcache.commit_timeout = '300ms'\n"
	  . "restart_after_crash = on\n");
setup_schema($node2);
make_rows($node2, 'postgres', 'k_', 10);
my $marker = $node2->data_dir . '/meetcache.running';
my $flush_msg = qr/every database will flush its cache families/;
{
	my $chk = MeetcacheTest::Checker->new($node2, $redis2);
	ok(-e $marker, 'marker: exists while the server runs');

	# a clean stop with nothing pending: no flush at the next start
	my @k = $chk->seed($chk->keys_of('meetings', "t.id = 'mk_1'"));
	my ($rc) = run_sql($node2, 'postgres', "UPDATE meetings SET title = 'c' WHERE id = 'mk_1'", delivery => 'sync');
	is($rc, 0, 'marker: a sync commit before the stop');
	$chk->must_delete(@k);
	$chk->verify('marker: delivered before the stop', timeout => 5);
	ok(poll_sql($node2, 'postgres', 'SELECT count(*) FROM meetcache.queue', '0', 10),
		'marker: nothing queued');
	my @untouched = $chk->seed($chk->keys_of('meetings', "t.id = 'mk_9'"), 'unrelated:key');
	$node2->stop('fast');
	ok(!-e $marker, 'marker: removed by a clean stop with nothing pending');
	my $logpos = -s $node2->logfile;
	$node2->start;
	ok(-e $marker, 'marker: created again at start');
	# a queue-mode commit delivered after the start: a drain ran (it would
	# have flushed first)
	@k = $chk->seed($chk->keys_of('meetings', "t.id = 'mk_2'"));
	run_sql($node2, 'postgres', "UPDATE meetings SET title = 'c' WHERE id = 'mk_2'", delivery => 'queue');
	$chk->must_delete(@k);
	$chk->must_survive(@untouched);
	$chk->verify('marker, clean restart: delivered, untouched family keys kept');
	unlike(log_since($node2, $logpos), qr/$flush_msg|flushed every cache family/,
		'marker, clean restart: no family flush');

	# immediate stop with keys in the retry queue
	@k = $chk->seed($chk->keys_of('meetings', "t.id = 'mk_3'"));
	my @flushed = $chk->seed($chk->keys_of('meetings', "t.id = 'mk_8'"));
	$redis2->set_keys('unrelated:key');
	$redis2->freeze;
	my ($out, $err);
	($rc, $out, $err) = run_sql($node2, 'postgres',
		"UPDATE meetings SET title = 'i' WHERE id = 'mk_3'", delivery => 'sync');
	is($rc, 0, 'marker: sync commit with redis frozen');
	ok( poll_sql($node2, 'postgres',
			'SELECT retry_queue_entries > 0 FROM meetcache.stats'),
		'marker: its keys wait in the retry queue');
	$node2->stop('immediate');
	ok(-e $marker, 'marker: kept by an immediate stop');
	$redis2->thaw;
	$logpos = -s $node2->logfile;
	$node2->start;
	like(log_since($node2, $logpos), $flush_msg,
		'marker, after an immediate stop: every database will flush its families');
	$chk->must_delete(@k, @flushed);
	$chk->must_survive('unrelated:key');
	$chk->verify('marker, after an immediate stop: lost keys and whole families deleted');
	ok( poll_until(20, sub { log_since($node2, $logpos) =~ /flushed every cache family/ }),
		'marker: the drain flushed the families');

	# once the flush is done, a clean stop removes the marker again
	ok( poll_sql($node2, 'postgres',
			'SELECT family_flushes >= 1 AND drains_running = 0 AND retry_queue_entries = 0 FROM meetcache.stats'),
		'marker: flush done, no drain running');
	$node2->stop('fast');
	ok(!-e $marker, 'marker: removed by a clean stop after the flush was served');
	$logpos = -s $node2->logfile;
	$node2->start;
	@k = $chk->seed($chk->keys_of('meetings', "t.id = 'mk_4'"));
	@untouched = $chk->seed($chk->keys_of('meetings', "t.id = 'mk_9'"));
	run_sql($node2, 'postgres', "UPDATE meetings SET title = 'c' WHERE id = 'mk_4'", delivery => 'queue');
	$chk->must_delete(@k);
	$chk->must_survive(@untouched, 'unrelated:key');
	$chk->verify('marker, clean restart after a flush: delivered, untouched keys kept');
	unlike(log_since($node2, $logpos), qr/$flush_msg|flushed every cache family/,
		'marker, clean restart after a flush: no second flush');

	# kill -9 of the launcher, twice in a row
	$logpos = -s $node2->logfile;
	for my $round (1, 2)
	{
		my $old = stats($node2)->{launcher_pid};
		kill 'KILL', $old;
		ok( poll_sql($node2, 'postgres',
				"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'meetcache launcher' AND pid <> $old",
				't', 60),
			"marker: launcher killed -9 ($round): the server restarted with a new launcher");
	}
	my $log = log_since($node2, $logpos);
	my $n = () = $log =~ /$flush_msg/g;
	is($n, 2, 'marker: two crash-restarts, each announcing a flush');
	ok(-e $marker, 'marker: still exists after two crash-restarts');
	@k = $chk->seed($chk->keys_of('meetings', "t.id IN ('mk_5', 'mk_6')"));
	run_sql($node2, 'postgres', "UPDATE meetings SET title = 'k' WHERE id = 'mk_5'", delivery => 'sync');
	run_sql($node2, 'postgres', "UPDATE meetings SET title = 'k' WHERE id = 'mk_6'", delivery => 'queue');
	$chk->must_delete(@k);
	$chk->must_survive('unrelated:key');
	$chk->verify('marker, after two crash-restarts: later commits delivered');
}

for my $nd ($node, $node2)
{
	unlike(slurp_file($nd->logfile), qr/PANIC/, $nd->name . ': no PANIC in the server log');
}
note sprintf('total %.1fs', time - $t_begin);
done_testing();
