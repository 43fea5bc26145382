# Leases (README "Leases"; docs/LEASES-draft.md): cache_get_or_set must never
# store a value that an invalidation has overtaken, and concurrent misses of
# one key run the query once.
#
#   a. stress: 6 readers (pgbench) call get_or_set on meeting:m1..m50 while 2
#      writers update those meetings; afterwards no key in Redis may differ from
#      what its query returns now.  The same harness with
#      meetcache.lease_check = off must find stale keys (the test can fail).
#      The harness is MeetcacheTest::lease_race (023 runs it on a cluster).
#   b. stampede: 16 sessions miss one slow key at once: its query runs once
#      (pg_stat_user_functions) and all 16 get the same value.
#   c. isolation: a transaction that wrote (it must not even read the key),
#      REPEATABLE READ, SERIALIZABLE, and a READ COMMITTED statement whose
#      snapshot predates a commit store nothing stale; cache_bypasses counts.
#   d. failure: a lease holder cancelled, failing or terminated mid-query; a
#      waiter cancelled; a waiter that gives up after lease_wait.
#   e. an invalidation (UPDATE, cache_del, cache_del_pattern, cache_set, a
#      max_keys family delete) while a lease holder computes refuses its store
#      (lease_refused); lease_ttl; hash-tagged keys; SCRIPT FLUSH (NOSCRIPT);
#      key_prefix; TTL by value.
#
# Knobs (environment, for widening the race window by hand):
#   MEETCACHE_LEASE_SECS (8)  MEETCACHE_LEASE_READERS (6)  MEETCACHE_LEASE_SLEEP (0.005)
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use MeetcacheTest qw(start_redis new_node setup_schema bg_session bg_query
  bg_send bg_wait_for elapsed poll_sql lease_race);

my $SECS = $ENV{MEETCACHE_LEASE_SECS} // 8;
my $READERS = $ENV{MEETCACHE_LEASE_READERS} // 6;
my $SLEEP = $ENV{MEETCACHE_LEASE_SLEEP} // 0.005;
my $NMEET = 50;

my $redis = start_redis();
my $node = new_node('leases', $redis,
	log_statement => 'none',
	conf => "max_connections = 60\ntrack_functions = 'all'\n");
setup_schema($node);

# 50 users, 50 meetings, 150 participants
{
	my $sql = "INSERT INTO users (id, name, email) VALUES "
	  . join(', ', map { "('u$_', 'User $_', 'u$_\@x')" } 1 .. 50) . ";\n";
	my @st = qw(SCHEDULED LIVE ENDED);
	$sql .= "INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES "
	  . join(', ',
		map { "('m$_', 'title $_', 'u" . (1 + $_ % 50) . "', 'inv-m$_', '$st[$_ % 3]')" }
		  1 .. $NMEET)
	  . ";\n";
	$sql .= "INSERT INTO participants (id, meeting_id, user_id) VALUES "
	  . join(', ',
		map {
			my $m = 1 + int(($_ - 1) / 3);
			my $u = 1 + ($_ * 7) % 50;
			"('p$_', 'm$m', 'u$u')"
		} 1 .. 3 * $NMEET)
	  . ";\n";
	$sql .= q{
CREATE TABLE scratch (x int);
CREATE FUNCTION stats_mark() RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN 1; END $$;
CREATE FUNCTION slow_q() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_sleep(0.5);
  RAISE NOTICE 'slow_q ran in %', pg_backend_pid();
  RETURN 'computed by ' || pg_backend_pid();
END $$;
};
	$node->safe_psql('postgres', $sql);
}

my @lease_gucs = split /\n/, $node->safe_psql('postgres',
	"SELECT name || '=' || setting FROM pg_settings WHERE name IN "
	  . "('meetcache.lease_check', 'meetcache.lease_ttl', 'meetcache.lease_wait') ORDER BY 1"
);
is_deeply(
	\@lease_gucs,
	[ 'meetcache.lease_check=on', 'meetcache.lease_ttl=10000', 'meetcache.lease_wait=2000' ],
	'lease settings exist with their documented defaults');

# Lease key of a (full) key, as documented (README, Leases): mc-lease:u:{K},
# or mc-lease:t:K when K has a hash tag (a '{' followed later by a '}' with
# something in between).
sub lease_key
{
	my ($k) = @_;
	return "mc-lease:t:$k" if $k =~ /^[^{]*\{[^}]+\}/;
	return "mc-lease:u:{$k}";
}

sub stat_of
{
	my ($col) = @_;
	return $node->safe_psql('postgres', "SELECT $col FROM meetcache.stats");
}

sub wait_sleeping
{
	my ($pid, $what) = @_;
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $pid AND wait_event = 'PgSleep'"),
		"$what: query is running");
	return;
}

# $pid waits in meetcache (a lease wait: wait event Extension)
sub wait_lease
{
	my ($pid, $what) = @_;
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $pid AND wait_event_type = 'Extension'"),
		"$what: waits for the lease");
	return;
}

###########################################################################
# a. stress
###########################################################################

lease_race($node, $redis, secs => $SECS, readers => $READERS, sleep => $SLEEP, nmeet => $NMEET);

###########################################################################
# b. stampede
###########################################################################
{
	$redis->cli('DEL', 'stampede:1');
	my $w0 = stat_of('lease_waits');
	my $lock = bg_session($node);
	bg_query($lock, 'SELECT pg_advisory_lock(4242)');
	my @s = map { bg_session($node) } 1 .. 16;
	my %pid;
	$pid{$_} = bg_query($s[$_], 'SELECT pg_backend_pid()') for 0 .. 15;
	my @tags = map {
		bg_send($s[$_],
			"SELECT pg_advisory_lock_shared(4242);\n"
			  . "SELECT pg_advisory_unlock_shared(4242);\n"
			  . "SELECT meetcache.cache_get_or_set('stampede:1', 'SELECT slow_q()', 60)")
	} 0 .. 15;
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 16 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
		),
		'stampede: 16 sessions lined up');
	my ($t) = elapsed(
		sub {
			bg_query($lock, 'SELECT pg_advisory_unlock(4242)');
			for my $i (0 .. 15)
			{
				my ($done, $out, $err) = bg_wait_for($s[$i], $tags[$i], 20);
				$s[$i]{_res} = [ $done, $out, $err ];
			}
		});
	note sprintf('stampede: all 16 returned after %.2fs', $t);
	my @vals;
	my $ran = 0;
	my $errors = 0;
	for my $i (0 .. 15)
	{
		my ($done, $out, $err) = @{ $s[$i]{_res} };
		my @lines = grep { $_ ne '' } split /\n/, $out;
		push @vals, $done ? ($lines[-1] // '') : 'TIMEOUT';
		$ran++ if $err =~ /slow_q ran in/;
		$errors++ if $err =~ /ERROR|WARNING/;
	}
	is($errors, 0, 'stampede: no error or warning');
	my %distinct = map { $_ => 1 } @vals;
	is(scalar keys %distinct, 1, 'stampede: all 16 sessions got the same value')
	  or diag explain \@vals;
	like($vals[0], qr/^"computed by \d+"$/, 'stampede: the value is the query result');
	is($ran, 1, 'stampede: slow_q() ran in exactly one session (NOTICE count)');
	is($redis->cli('GET', 'stampede:1'), $vals[0], 'stampede: the value is stored');
	is(stat_of('lease_waits') - $w0, 15, 'stampede: lease_waits grew by 15');

	# pg_stat_user_functions: flush every session's pending counters; each
	# session calls stats_mark() in the statement whose end forces the
	# flush, so 16 calls of stats_mark() seen means all 16 have flushed
	bg_query($_, 'SELECT pg_stat_force_next_flush(), stats_mark()') for @s;
	bg_query($_, 'SELECT 1') for @s;
	ok( poll_sql($node, 'postgres',
			"SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = 'stats_mark'",
			'16'),
		'stampede: all 16 sessions flushed their function statistics');
	my $calls = $node->safe_psql('postgres',
		"SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = 'slow_q'");
	is($calls, 1, 'stampede: pg_stat_user_functions.calls of slow_q() = 1');

	$_->quit for @s, $lock;
}

###########################################################################
# c. isolation: nothing stale is stored, and no lease is taken
###########################################################################
my $Q = 'SELECT title, status FROM meetings WHERE id = $1';
my $QS = 'SELECT title, status, pg_sleep($2::float8)::text AS s FROM meetings WHERE id = $1';

sub gos
{
	my ($id, $sleep) = @_;
	return "SELECT meetcache.cache_get_or_set('meeting:$id', \$q\$$QS\$q\$, NULL, '$id', '"
	  . ($sleep // 0) . "')";
}

sub title_of
{
	my ($json) = @_;
	return $1 if defined $json && $json =~ /"title":\s*"([^"]*)"/;
	return undef;
}

sub pid_of
{
	my ($json) = @_;
	return $1 if defined $json && $json =~ /"pid":\s*(\d+)/;
	return undef;
}

sub set_title
{
	my ($id, $t) = @_;
	$node->safe_psql('postgres', "UPDATE meetings SET title = '$t' WHERE id = '$id'");
	return;
}

{
	$redis->cli('FLUSHALL');
	my $sa = bg_session($node);
	my $sb = bg_session($node);
	my $apid = bg_query($sa, 'SELECT pg_backend_pid()');

	# c0. sanity: READ COMMITTED, nothing written: stored
	set_title('m40', 'c0');
	my ($out, $err) = bg_query($sa, gos('m40'));
	is(title_of($out), 'c0', 'c0: read committed returns the row');
	is(title_of($redis->cli('GET', 'meeting:m40')), 'c0', 'c0: read committed stores it');

	my $b0 = stat_of('cache_bypasses');

	# c1. wrote first (pending invalidation of this very key), rolled back.
	#     The key is cached (old row): the transaction must not read it (its
	#     own write is behind it), nor store, nor take a lease.
	set_title('m41', 'c1-old');
	is(title_of(bg_query($sb, gos('m41'))), 'c1-old', 'c1: key cached with the committed row');
	my $c1v = $redis->cli('GET', 'meeting:m41');
	bg_query($sa, "BEGIN; UPDATE meetings SET title = 'c1-uncommitted' WHERE id = 'm41';");
	my $tag = bg_send($sa, gos('m41', 0.8));
	wait_sleeping($apid, 'c1 (the cached value is not used)');
	is($redis->cli('EXISTS', lease_key('meeting:m41')), '0',
		'c1: a transaction that wrote takes no lease');
	my $done;
	($done, $out, $err) = bg_wait_for($sa, $tag, 10);
	is(title_of($out), 'c1-uncommitted', 'c1: it sees its own write, not the cached value');
	is($redis->cli('GET', 'meeting:m41'), $c1v, 'c1: ... and does not store it');
	bg_query($sa, 'ROLLBACK');
	is($redis->cli('GET', 'meeting:m41'), $c1v, 'c1: after rollback the cached value is unchanged');
	is(title_of(bg_query($sb, gos('m41'))), 'c1-old', 'c1: next reader gets the committed row');
	$redis->cli('DEL', 'meeting:m41');

	# c2. wrote to a table without rules: an xid, no pending keys; the commit
	#     deletes nothing, so a store would survive
	set_title('m42', 'c2');
	bg_query($sa, 'BEGIN; INSERT INTO scratch VALUES (1);');
	($out, $err) = bg_query($sa, gos('m42'));
	is(title_of($out), 'c2', 'c2: result returned');
	bg_query($sa, 'COMMIT');
	is($redis->cli('EXISTS', 'meeting:m42'), '0',
		'c2: a transaction with an xid does not store');

	# c3/c4. REPEATABLE READ and SERIALIZABLE snapshot older than a commit
	for my $c ([ 'c3', 'REPEATABLE READ', 'm43' ], [ 'c4', 'SERIALIZABLE', 'm44' ])
	{
		my ($n, $iso, $id) = @$c;
		set_title($id, "$n-old");
		bg_query($sa, "BEGIN ISOLATION LEVEL $iso; SELECT 1;");
		($out, $err) = bg_query($sb, "UPDATE meetings SET title = '$n-new' WHERE id = '$id'");
		is($err, '', "$n: concurrent update committed");
		$tag = bg_send($sa, gos($id, 0.8));
		wait_sleeping($apid, $n);
		is($redis->cli('EXISTS', lease_key("meeting:$id")), '0', "$n: $iso takes no lease");
		($done, $out, $err) = bg_wait_for($sa, $tag, 10);
		is(title_of($out), "$n-old", "$n: $iso sees its snapshot");
		bg_query($sa, 'COMMIT');
		is($redis->cli('EXISTS', "meeting:$id"), '0', "$n: $iso stored nothing");
		is(title_of(bg_query($sb, gos($id))), "$n-new", "$n: next reader gets the new row");
	}
	is(stat_of('cache_bypasses') - $b0, 4, 'c: cache_bypasses grew by 4');

	# c5. READ COMMITTED, but the statement's snapshot predates a commit that
	#     happens before the function takes its lease
	set_title('m45', 'c5-old');
	$tag = bg_send($sa,
		"WITH s AS MATERIALIZED (SELECT pg_sleep(1)) SELECT "
		  . "meetcache.cache_get_or_set('meeting:m45', \$q\$$Q\$q\$, NULL, 'm45') FROM s");
	wait_sleeping($apid, 'c5');
	set_title('m45', 'c5-new');
	($done, $out, $err) = bg_wait_for($sa, $tag, 10);
	ok($done && $err eq '', 'c5: get_or_set after a sleep in the same statement')
	  or diag $err;
	note "c5: returned $out";
	my $v = $redis->cli('GET', 'meeting:m45');
	ok($v eq '' || title_of($v) eq 'c5-new',
		'c5: read committed statement snapshot older than a commit: nothing stale stored')
	  or diag "cached: $v";

	$sa->quit;
	$sb->quit;
}

###########################################################################
# d. failure of the lease holder
###########################################################################
{
	$redis->cli('FLUSHALL');
	my $h = bg_session($node);
	my $w = bg_session($node);
	my $hpid = bg_query($h, 'SELECT pg_backend_pid()');
	my $wpid = bg_query($w, 'SELECT pg_backend_pid()');
	my $QP = 'SELECT title, pg_backend_pid() AS pid, pg_sleep($2::float8)::text AS s FROM meetings WHERE id = $1';
	my $gp = sub {
		my ($id, $sleep) = @_;
		return "SELECT meetcache.cache_get_or_set('meeting:$id', \$q\$$QP\$q\$, NULL, '$id', '$sleep')";
	};

	# d1. cancelled holder releases its lease; a waiter computes and stores
	set_title('m31', 'd1');
	my $htag = bg_send($h, $gp->('m31', 5));
	wait_sleeping($hpid, 'd1 holder');
	is($redis->cli('EXISTS', lease_key('meeting:m31')), '1', 'd1: the holder has a lease');
	my $pttl = $redis->cli('PTTL', lease_key('meeting:m31'));
	ok($pttl > 0 && $pttl <= 10000, "d1: the lease expires within lease_ttl (PTTL $pttl)");
	my $wtag = bg_send($w, $gp->('m31', 0.2));
	my ($done) = bg_wait_for($w, $wtag, 0.35);
	ok(!$done, 'd1: the second session waits for the holder');
	is($node->safe_psql('postgres', "SELECT pg_cancel_backend($hpid)"), 't', 'd1: cancel the holder');
	my ($t, $out, $err);
	($t, $done, $out, $err) = elapsed(sub { bg_wait_for($w, $wtag, 10) });
	note sprintf('d1: waiter returned %.2fs after the cancel', $t);
	ok($done, 'd1: waiter finished');
	cmp_ok($t, '<', 1.5, 'd1: waiter did not wait for lease_wait (the lease was released)');
	is(pid_of($out), $wpid, 'd1: waiter got the value it computed itself');
	my ($hd, $hout, $herr) = bg_wait_for($h, $htag, 5);
	like($herr, qr/canceling statement due to user request/, 'd1: holder was cancelled');
	my $v = $redis->cli('GET', 'meeting:m31');
	is(pid_of($v), $wpid, 'd1: the waiter stored its value');
	is(title_of($v), 'd1', 'd1: the stored value is fresh');
	is($redis->cli('EXISTS', lease_key('meeting:m31')), '0', 'd1: no lease left');

	# d1b. cancelled holder alone: the lease is gone right away
	set_title('m32', 'd1b');
	$htag = bg_send($h, $gp->('m32', 5));
	wait_sleeping($hpid, 'd1b holder');
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($hpid)");
	bg_wait_for($h, $htag, 5);
	is($redis->cli('EXISTS', lease_key('meeting:m32')), '0',
		'd1b: a cancelled query releases its lease');
	is($redis->cli('EXISTS', 'meeting:m32'), '0', 'd1b: and stores nothing');

	# d1c. a failing query gives its lease back at once
	my ($t1, $o1, $e1) = elapsed(sub { bg_query($w,
		"SELECT meetcache.cache_get_or_set('meeting:m35', 'SELECT 1 / (pg_sleep(0.3)::text = ''x'')::int', NULL)") });
	like($e1, qr/division by zero/, 'd1c: the query failed');
	is($redis->cli('EXISTS', lease_key('meeting:m35')), '0', 'd1c: a failed query releases its lease');
	is($redis->cli('EXISTS', 'meeting:m35'), '0', 'd1c: and stores nothing');

	# d1d. a cancelled waiter returns at once; the holder still stores
	set_title('m36', 'd1d');
	$htag = bg_send($h, $gp->('m36', 1.5));
	wait_sleeping($hpid, 'd1d holder');
	bg_query($w, 'SET meetcache.lease_wait = 20000');
	$wtag = bg_send($w, $gp->('m36', 0));
	wait_lease($wpid, 'd1d waiter');
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($wpid)");
	($t, $done, $out, $err) = elapsed(sub { bg_wait_for($w, $wtag, 5) });
	ok($done && $t < 1, sprintf('d1d: a waiting session is interruptible (%.2fs)', $t));
	like($err, qr/canceling statement due to user request/, 'd1d: waiter cancelled');
	bg_query($w, 'RESET meetcache.lease_wait');
	bg_wait_for($h, $htag, 5);
	is(pid_of($redis->cli('GET', 'meeting:m36')), $hpid, 'd1d: the holder stored its value');

	# d2. lease_wait: a waiter gives up, computes, does not store
	set_title('m33', 'd2');
	my $t0 = stat_of('lease_timeouts');
	$htag = bg_send($h, $gp->('m33', 1.5));
	wait_sleeping($hpid, 'd2 holder');
	bg_query($w, 'SET meetcache.lease_wait = 300');
	($t, $out, $err) = elapsed(sub { bg_query($w, $gp->('m33', 0.1)) });
	note sprintf('d2: waiter returned after %.2fs', $t);
	cmp_ok($t, '<', 1.2, 'd2: waiter gave up after lease_wait (300 ms)');
	is(pid_of($out), $wpid, 'd2: waiter computed the value itself');
	is($err, '', 'd2: without error');
	is($redis->cli('EXISTS', 'meeting:m33'), '0', 'd2: waiter did not store');
	is(stat_of('lease_timeouts') - $t0, 1, 'd2: lease_timeouts grew by 1');
	bg_wait_for($h, $htag, 5);
	is(pid_of($redis->cli('GET', 'meeting:m33')), $hpid, 'd2: the holder stored its value');
	bg_query($w, 'RESET meetcache.lease_wait');

	# d3. terminated holder: others fall back within lease_wait
	#     (a short lease_ttl for the holder, so that the end of this part,
	#     which waits for the lease to go, is quick even if it outlives it)
	set_title('m34', 'd3');
	bg_query($h, 'SET meetcache.lease_ttl = 4000');
	$htag = bg_send($h, $gp->('m34', 5));
	wait_sleeping($hpid, 'd3 holder');
	my $t3 = stat_of('lease_timeouts');
	$wtag = bg_send($w, $gp->('m34', 0.2));
	my $wstart = time;
	wait_lease($wpid, 'd3 waiter');
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($hpid, 5000)"),
		't', 'd3: holder terminated');
	($done, $out, $err) = bg_wait_for($w, $wtag, 10);
	$t = time - $wstart;
	note sprintf('d3: waiter returned %.2fs after it started; lease key %s', $t,
		$redis->cli('EXISTS', lease_key('meeting:m34')) ? 'still there' : 'gone');
	ok($done, 'd3: waiter finished');
	cmp_ok($t, '<', 2.0 + 1.0, 'd3: within lease_wait (2 s) + its query');
	# the exiting holder gives its lease back, so the waiter takes it over
	# instead of timing out
	is(stat_of('lease_timeouts') - $t3, 0,
		'd3: the waiter took over the dead holder\'s lease (no lease_wait timeout)');
	is(pid_of($out), $wpid, 'd3: waiter got the value it computed itself');
	is($err, '', 'd3: without error');
	$v = $redis->cli('GET', 'meeting:m34');
	ok($v eq '' || (title_of($v) eq 'd3' && pid_of($v) == $wpid),
		'd3: nothing stale stored') or diag "cached: $v";
	eval { $h->quit };

	# after the dead holder's lease expires (or was released), the key is cached again
	my $w2 = bg_session($node);
	bg_query($w2, 'SET meetcache.lease_wait = 6000');
	($t, $out) = elapsed(sub { bg_query($w2, $gp->('m34', 0)) });
	note sprintf('d3: a later reader returned after %.2fs', $t);
	ok($redis->cli('GET', 'meeting:m34') ne '', 'd3: the key is cached again later');
	$w->quit;
	$w2->quit;
}

###########################################################################
# e. invalidation while a lease holder computes
###########################################################################
{
	$redis->cli('FLUSHALL');
	my $h = bg_session($node);
	my $o = bg_session($node);
	my $hpid = bg_query($h, 'SELECT pg_backend_pid()');

	# e1. UPDATE of the row
	set_title('m21', 'e1-old');
	my $r0 = stat_of('lease_refused');
	my $tag = bg_send($h, gos('m21', 1.5));
	wait_sleeping($hpid, 'e1 holder');
	is($redis->cli('EXISTS', lease_key('meeting:m21')), '1',
		'e1: lease key mc-lease:u:{meeting:m21} exists while the holder computes');
	my ($out, $err) = bg_query($o, "UPDATE meetings SET title = 'e1-new' WHERE id = 'm21'");
	is($err, '', 'e1: update committed');
	is($redis->cli('EXISTS', lease_key('meeting:m21')), '0', 'e1: the commit removed the lease');
	my $done;
	($done, $out, $err) = bg_wait_for($h, $tag, 10);
	is(title_of($out), 'e1-old', 'e1: the holder returns what its snapshot saw');
	is($err, '', 'e1: without error');
	is(stat_of('lease_refused') - $r0, 1, 'e1: lease_refused grew by 1');
	my $v = $redis->cli('GET', 'meeting:m21');
	ok($v eq '' || title_of($v) eq 'e1-new', 'e1: key absent or fresh') or diag "cached: $v";
	is(title_of(bg_query($o, gos('m21'))), 'e1-new', 'e1: next reader gets the new row');
	is(title_of($redis->cli('GET', 'meeting:m21')), 'e1-new', 'e1: ... and stores it');

	# e2. cache_del
	set_title('m22', 'e2');
	$r0 = stat_of('lease_refused');
	$tag = bg_send($h, gos('m22', 1));
	wait_sleeping($hpid, 'e2 holder');
	bg_query($o, "SELECT meetcache.cache_del('meeting:m22')");
	bg_wait_for($h, $tag, 10);
	is($redis->cli('EXISTS', 'meeting:m22'), '0', 'e2: cache_del cancels the lease: nothing stored');
	is(stat_of('lease_refused') - $r0, 1, 'e2: lease_refused grew by 1');

	# e3. cache_del_pattern
	set_title('m23', 'e3');
	$tag = bg_send($h, gos('m23', 1));
	wait_sleeping($hpid, 'e3 holder');
	bg_query($o, "SELECT meetcache.cache_del_pattern('meeting:m2*')");
	bg_wait_for($h, $tag, 10);
	is($redis->cli('EXISTS', 'meeting:m23'), '0',
		'e3: cache_del_pattern cancels the lease: nothing stored');

	# e4. cache_set: the explicit value wins
	set_title('m24', 'e4');
	$tag = bg_send($h, gos('m24', 1));
	wait_sleeping($hpid, 'e4 holder');
	bg_query($o, q{SELECT meetcache.cache_set('meeting:m24', '{"title": "set by hand"}', 60)});
	bg_wait_for($h, $tag, 10);
	is(title_of($redis->cli('GET', 'meeting:m24')), 'set by hand',
		'e4: cache_set cancels the lease: the holder does not overwrite it');

	# e5. family delete (SCAN, max_keys overflow) while computing
	set_title('m25', 'e5-old');
	$tag = bg_send($h, gos('m25', 1));
	wait_sleeping($hpid, 'e5 holder');
	($out, $err) = bg_query($o,
		"BEGIN; SET LOCAL meetcache.max_keys = 1; UPDATE meetings SET title = 'e5-new' WHERE id IN ('m1', 'm2', 'm25'); COMMIT;"
	);
	like($err, qr/NOTICE/, 'e5: the transaction overflowed max_keys');
	($done, $out) = bg_wait_for($h, $tag, 10);
	is(title_of($out), 'e5-old', 'e5: the holder returns what its snapshot saw');
	$v = $redis->cli('GET', 'meeting:m25');
	is($v, '', 'e5: a family delete (max_keys overflow) cancels the lease: nothing stored')
	  or diag "cached: $v";

	# e6. a query slower than lease_ttl cannot store
	set_title('m26', 'e6');
	bg_query($h, 'SET meetcache.lease_ttl = 300');
	($out, $err) = bg_query($h, gos('m26', 0.8));
	is(title_of($out), 'e6', 'e6: slow query returns its value');
	is($redis->cli('EXISTS', 'meeting:m26'), '0', 'e6: a query slower than lease_ttl does not store');
	is($redis->cli('EXISTS', lease_key('meeting:m26')), '0', 'e6: lease expired');
	bg_query($h, 'RESET meetcache.lease_ttl');

	# e7. a key with a hash tag: the lease key is mc-lease:t:K
	$tag = bg_send($h,
		"SELECT meetcache.cache_get_or_set('{grp}:slow', 'SELECT pg_sleep(1)::text', 60)");
	wait_sleeping($hpid, 'e7 holder');
	is($redis->cli('EXISTS', 'mc-lease:t:{grp}:slow'), '1',
		'e7: hash-tagged key: lease key mc-lease:t:{grp}:slow');
	bg_wait_for($h, $tag, 10);
	is($redis->cli('GET', '{grp}:slow'), '""', 'e7: value stored');
	is($redis->cli('EXISTS', 'mc-lease:t:{grp}:slow'), '0', 'e7: lease deleted with the store');

	# e8. the scripts are loaded again after SCRIPT FLUSH (NOSCRIPT)
	$redis->cli('SCRIPT', 'FLUSH');
	set_title('m27', 'e8');
	($out, $err) = bg_query($h, gos('m27'));
	is($err, '', 'e8: get_or_set after SCRIPT FLUSH: no error');
	is(title_of($redis->cli('GET', 'meeting:m27')), 'e8', 'e8: miss stored after SCRIPT FLUSH');
	$redis->cli('SCRIPT', 'FLUSH');
	($out, $err) = bg_query($o, gos('m27'));
	is(title_of($out), 'e8', 'e8: hit after SCRIPT FLUSH');
	is($err, '', 'e8: no error');

	# e9. key_prefix: the lease is the prefixed key's, and a commit under the
	#     same prefix cancels it
	set_title('m28', 'e9-old');
	bg_query($_, "SET meetcache.key_prefix = 'app:'") for $h, $o;
	$tag = bg_send($h, gos('m28', 1));
	wait_sleeping($hpid, 'e9 holder');
	is($redis->cli('EXISTS', lease_key('app:meeting:m28')), '1',
		'e9: with key_prefix, the lease key is mc-lease:u:{app:meeting:m28}');
	bg_query($o, "UPDATE meetings SET title = 'e9-new' WHERE id = 'm28'");
	($done, $out) = bg_wait_for($h, $tag, 10);
	is(title_of($out), 'e9-old', 'e9: holder returns its snapshot');
	is($redis->cli('EXISTS', 'app:meeting:m28'), '0', 'e9: prefixed store refused');
	is(title_of(bg_query($h, gos('m28'))), 'e9-new', 'e9: next call gets the new row');
	is(title_of($redis->cli('GET', 'app:meeting:m28')), 'e9-new', 'e9: ... stored under the prefix');
	bg_query($_, 'RESET meetcache.key_prefix') for $h, $o;

	# e10. TTL by value (meeting_recording: 30 s while PROCESSING, else 600 s)
	bg_query($h, "SELECT meetcache.cache_get_or_set('meeting:m1:recording', "
		  . "\$q\$SELECT 'PROCESSING' AS status, \$1 AS meeting_id\$q\$, NULL, 'm1')");
	my $ttl = $redis->cli('TTL', 'meeting:m1:recording');
	ok($ttl > 0 && $ttl <= 30, "e10: get_or_set of a PROCESSING recording: TTL $ttl <= 30");
	bg_query($h, "SELECT meetcache.cache_get_or_set('meeting:m2:recording', "
		  . "\$q\$SELECT 'READY' AS status, \$1 AS meeting_id\$q\$, NULL, 'm2')");
	$ttl = $redis->cli('TTL', 'meeting:m2:recording');
	ok($ttl > 300 && $ttl <= 600, "e10: get_or_set of a READY recording: TTL $ttl (600)");
	bg_query($h, q{SELECT meetcache.cache_set('meeting:m3:recording', '{"status": "PROCESSING"}')});
	$ttl = $redis->cli('TTL', 'meeting:m3:recording');
	ok($ttl > 0 && $ttl <= 30, "e10: cache_set of a PROCESSING recording: TTL $ttl <= 30");

	$h->quit;
	$o->quit;
}

my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|was terminated by signal|server process .* exited with exit code [^0]/,
	'no crash in the server log');
done_testing();
