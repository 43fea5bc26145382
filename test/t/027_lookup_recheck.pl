# Lookups after commit without a second resolution (recheck.c, README
# "Lookups after commit").  In sync and sync+queue delivery a transaction
# whose lookups ran while no writer of their via table was between its
# PRE_COMMIT and its commit becoming visible writes no queue row for them;
# after its own commit is visible it settles them (lookups_settled) when no
# writer of those tables reached PRE_COMMIT meanwhile, or hands them to the
# database's drain (lookup_handoffs).  017_lookup_race.pl covers a link that
# commits before our PRE_COMMIT; this test covers what it cannot reach:
#
#   1. quiet: no other writer.  A meeting's new title settles its lookups
#      with no queue row (sync), and still deletes the participant's
#      user:{U}:participations; meetcache.lookup_recheck = always and queue
#      delivery take the old path (a row with the lookups, resolved by the
#      drain).
#   2. window: A's commit waits in SyncRep (synchronous_standby_names names
#      a standby that does not exist), after its PRE_COMMIT and its commit
#      record but before it is visible.  B links a row to A's target and
#      commits (synchronous_commit = local), C caches the old value, then
#      A is released: its commit callback must see B's PRE_COMMIT and hand
#      the lookups over, and the drain must delete the key.
#   3. in flight: B's commit waits in SyncRep while A runs its lookup, so the
#      lookup cannot vouch for B's rows: A writes a row with its lookups as
#      before (no settling, no hand-off), and the key ends absent or fresh.
#   4. no crash in the server log (checked last, after 6).
#   5. refused hand-off (snake, sync): as in 2, but Redis (an ACL) refuses
#      every write to user:u3:participations and its lease key, so the
#      drain's pass of A's hand-off is refused: lookup_handoffs +1, the
#      drain's WARNING about handed-over lookups, a family flush instead
#      (family_flushes grows, "flushed every cache family" logged after
#      the WARNING), and a later queue row is still drained.  B's own
#      keys are refused too (the launcher flushes for them): that settles
#      before A is released.  The ACL is restored at the end.
#   6. the answer to "does participants qualify" is kept across
#      transactions (not read from the catalogs again, DEBUG2 says) only
#      while nothing can have changed it: after another session makes
#      participants a child of an attached table, and after A's own NO
#      INHERIT rolled back, a retitle reads it again and does not settle;
#      once the parent is gone it settles again.
# The hold begins once a probe session's commit waits (the setting reaches
# commits through the checkpointer's reload) and ends once it is done.
# Fixtures as in 017 (fill_sql, with_columns, the same rows), on the snake
# and camel schemas.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use MeetcacheTest qw(start_redis new_node setup_schema with_columns fill_sql
  lookup_rows_sql cache_old bg_session bg_query bg_send bg_wait_for poll_until log_since);

my $redis = start_redis();
# max_wal_senders > 0, or no commit waits for a synchronous standby; no
# autovacuum, whose commits would wait too
my $node = new_node('lookup_recheck', $redis,
	log_statement => 'none',
	conf => "meetcache.poll_interval = 100\n"
	  . "wal_level = replica\nmax_wal_senders = 2\nautovacuum = off\n");
my %db = (snake => 'postgres', camel => 'camel');
$node->safe_psql('postgres', 'CREATE DATABASE camel');
for my $v (sort keys %db)
{
	setup_schema($node, $db{$v}, $v);
	$node->safe_psql($db{$v}, fill_sql($v));
}

my $reset = lookup_rows_sql();

my $retitle = "UPDATE meetings SET title = 'NewTitle' WHERE id = 'm9'";
my $rename_user = "UPDATE users SET name = 'NewName' WHERE id = 'u1'";
my $join_u3 = "INSERT INTO participants (id, {meeting_id}, {user_id}) VALUES ('p9', 'm9', 'u3')";
my $move_u3 = "UPDATE participants SET {meeting_id} = 'm9' WHERE id = 'p2'";
# [ name, A's statement, B's statement, key C fills, what C must cache ]
my @participations = (
	[ 'user_participations (participant inserted)', $retitle, $join_u3,
		'user:u3:participations', 'OldTitle' ],
	[ 'user_participations (participant moved)', $retitle, $move_u3,
		'user:u3:participations', 'OldTitle' ],
);
my @window_cases = (
	@participations,
	[ 'meeting (host moved)', $rename_user, "UPDATE meetings SET {host_id} = 'u1' WHERE id = 'm9'",
		'meeting:m9', 'OldName' ],
	[ 'meeting_participants (participant inserted)', $rename_user,
		"INSERT INTO participants (id, {meeting_id}, {user_id}) VALUES ('p9', 'm9', 'u1')",
		'meeting:m9:participants', 'OldName' ],
);

# Polls $sql in session $s until it returns 't' (at most $secs, default 15 s).
sub wait_true
{
	my ($s, $sql, $secs) = @_;
	my $deadline = time + ($secs // 15);
	while (time < $deadline)
	{
		return 1 if bg_query($s, $sql) eq 't';
		usleep(10_000);
	}
	return 0;
}
my $all_drained = 'SELECT count(*) = 0 FROM meetcache.pending';
my $all_delivered = 'SELECT count(*) = 0 FROM meetcache.pending WHERE NOT delivered';

# absent, fresh, or STALE ... (as 017)
sub key_state
{
	my ($s, $key) = @_;
	my ($out, $err) = bg_query($s,
		"SELECT CASE WHEN meetcache.cache_get('$key') IS NULL THEN 'absent' "
		  . "WHEN meetcache.cache_get('$key') = fill_now('$key') THEN 'fresh' "
		  . "ELSE 'STALE ' || meetcache.cache_get('$key')::text || ' now ' || fill_now('$key')::text END");
	return $err eq '' ? $out : "error: $err";
}

# Polls (at most 15 s) until $key is absent or fresh; '' if it got there,
# else its last state.
sub settles
{
	my ($s, $key) = @_;
	my $deadline = time + 15;
	my $state;
	while (1)
	{
		$state = key_state($s, $key);
		return '' if $state =~ /^(absent|fresh)$/;
		return $state if time >= $deadline;
		usleep(20_000);
	}
}

my @counters = qw(lookups_settled lookup_handoffs queue_rows_written);
sub counters
{
	my ($s) = @_;
	my %h;
	@h{@counters} = split /\|/,
	  bg_query($s, 'SELECT ' . join(" || '|' || ", @counters) . ' FROM meetcache.stats');
	return \%h;
}
sub delta
{
	my ($before, $after) = @_;
	return { map { $_ => $after->{$_} - $before->{$_} } @counters };
}
sub show { my ($d) = @_; return join(' ', map { "$_ +$d->{$_}" } @counters); }

# The rows of 017, delivered in sync; the drain has nothing left; Redis empty.
sub reset_rows
{
	my ($s, $v) = @_;
	my (undef, $err) = bg_query($s->{b},
		"BEGIN; SET LOCAL meetcache.delivery = 'sync';\n" . with_columns($v, $reset) . 'COMMIT;');
	return "reset failed: $err" if $err ne '';
	return 'reset: queue not drained' unless wait_true($s->{c}, $all_drained);
	$redis->cli('FLUSHALL');
	return '';
}

# Commits of sessions with synchronous_commit = on wait for a standby that
# never comes, from hold until release.  The setting reaches the commits
# through the checkpointer's reload: hold returns once a probe session's
# commit waits (it retries the probe while its commits do not wait; false
# after 10 s), release once the probe's commit is done.
sub waits_in_syncrep
{
	my ($s, $pid) = @_;
	return bg_query($s,
		"SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $pid AND wait_event = 'SyncRep')"
	) eq 't';
}
sub hold
{
	my ($s) = @_;
	bg_query($s->{c}, "ALTER SYSTEM SET synchronous_standby_names = 'mc_nobody'");
	bg_query($s->{c}, 'SELECT pg_reload_conf()');
	# (a query first: it restarts the session's timer, which bg_send does not)
	bg_query($s->{p}, 'SET synchronous_commit = on');
	my $deadline = time + 10;
	while (time < $deadline)
	{
		# a transaction that writes WAL: its commit waits, once the reload is seen
		my $tag = $s->{probe_tag} = bg_send($s->{p},
			"SELECT pg_logical_emit_message(true, 'meetcache_probe', '') > '0/0'");
		while (1)
		{
			return 1 if waits_in_syncrep($s->{c}, $s->{pid}{p});
			my ($done) = bg_wait_for($s->{p}, $tag, 0.02);
			last if $done;
			return 0 if time >= $deadline;
		}
	}
	return 0;
}
# A case's start: the rows reset, then commits held; the failures, if any
# (then nothing is held).
sub reset_and_hold
{
	my ($s, $v, $what) = @_;
	my $r = reset_rows($s, $v);
	return ("$what: $r") if $r ne '';
	return () if hold($s);
	release($s);
	return ("$what: no commit waits in SyncRep");
}

sub release
{
	my ($s) = @_;
	bg_query($s->{c}, 'ALTER SYSTEM RESET synchronous_standby_names');
	bg_query($s->{c}, 'SELECT pg_reload_conf()');
	my ($done) = bg_wait_for($s->{p}, $s->{probe_tag}, 15);
	return $done;
}
# Polls until backend $pid waits in SyncRep (10 s); true if it does.
sub in_syncrep
{
	my ($s, $pid) = @_;
	my $deadline = time + 10;
	while (time < $deadline)
	{
		return 1 if waits_in_syncrep($s, $pid);
		usleep(10_000);
	}
	return 0;
}

# Sends session $who's COMMIT, which must wait in SyncRep: returns its tag,
# or undef after pushing the failure to @$fail, releasing the hold and
# waiting for the COMMIT.
sub held_commit
{
	my ($s, $who, $what, $fail) = @_;
	my $tag = bg_send($s->{$who}, 'COMMIT');
	return $tag if in_syncrep($s->{c}, $s->{pid}{$who});
	push @$fail, "$what: " . uc($who) . "'s COMMIT did not wait in SyncRep";
	release($s);
	bg_wait_for($s->{$who}, $tag, 15);
	return undef;
}
# Releases the hold; session $who's COMMIT (tag $tag) must finish cleanly.
# Returns the failures.
sub finish_held
{
	my ($s, $who, $tag, $what) = @_;
	my @fail;
	push @fail, "$what: the probe's COMMIT did not finish once released"
	  unless release($s);
	my ($done, undef, $err) = bg_wait_for($s->{$who}, $tag, 15);
	push @fail, "$what: " . uc($who) . "'s COMMIT did not finish once released" unless $done;
	push @fail, "$what: " . uc($who) . ": COMMIT: $err" if $done && $err ne '';
	return @fail;
}

my $t0 = time;
my $runs = 0;

# 1. quiet
{
	my $v = 'snake';
	my %s = map { $_ => bg_session($node, $db{$v}) } qw(a b c);
	my $key = 'user:u2:participations';
	for my $run ([ 'sync', 'auto' ], [ 'sync+queue', 'auto' ], [ 'sync', 'always' ],
		[ 'sync+queue', 'always' ], [ 'queue', 'auto' ])
	{
		my ($mode, $recheck) = @$run;
		my $what = "quiet, $mode, lookup_recheck = $recheck";
		$runs++;
		bg_query($s{$_}, "SET meetcache.delivery = '$mode'") for qw(a b c);
		bg_query($s{a}, "SET meetcache.lookup_recheck = $recheck");
		my $r = reset_rows(\%s, $v);
		is($r, '', "$what: reset");
		$redis->cli('SET', $key, '"cached"');
		my $before = counters($s{c});
		my (undef, $err) = bg_query($s{a}, "BEGIN; $retitle; COMMIT;");
		is($err, '', "$what: A's transaction");
		ok(wait_true($s{c}, $all_drained), "$what: queue drained");
		is($redis->cli('EXISTS', $key), '0', "$what: $key deleted");
		my $d = delta($before, counters($s{c}));
		my $settles = $mode ne 'queue' && $recheck eq 'auto';
		is($d->{lookups_settled}, $settles ? 1 : 0,
			"$what: lookups_settled " . ($settles ? '+1' : '+0') . ' (' . show($d) . ')');
		is($d->{lookup_handoffs}, 0, "$what: lookup_handoffs +0");
		is($d->{queue_rows_written}, $settles ? 0 : 1,
			"$what: queue_rows_written " . ($settles ? '+0 (no row at all)' : '+1'))
		  if $mode eq 'sync';
	}
	$_->quit for values %s;
}

# 2. window and 3. in flight, on both schemas, in both modes that deliver
# at commit
for my $v (sort keys %db)
{
	my %s = map { $_ => bg_session($node, $db{$v}) } qw(a b c p);
	my %pid = map { $_ => scalar bg_query($s{$_}, 'SELECT pg_backend_pid()') } qw(a b p);
	$s{pid} = \%pid;
	my $q = sub { with_columns($v, $_[0]) };
	for my $mode ('sync', 'sync+queue')
	{
		bg_query($s{$_}, "SET meetcache.delivery = '$mode'") for qw(a b c);

		# 2. window: A's commit hangs between PRE_COMMIT and visibility
		bg_query($s{a}, 'SET synchronous_commit = on');
		bg_query($s{$_}, 'SET synchronous_commit = local') for qw(b c);
		my @fail;
		for my $c (@window_cases)
		{
			my ($name, $asql, $bsql, $key, $old) = @$c;
			my $what = "$v/$mode/$name";
			$runs++;
			my @f = reset_and_hold(\%s, $v, $what);
			if (@f)
			{
				push @fail, @f;
				next;
			}
			# a. A's lookup, quiet
			my ($out, $err) = bg_query($s{a}, 'BEGIN; ' . $q->($asql));
			push @fail, "$what: A: $err" if $err ne '';
			my $before = counters($s{c});
			# b. A's COMMIT waits for the standby
			my $atag = held_commit(\%s, 'a', $what, \@fail) // next;
			# c. B links a row and commits (its own keys delivered)
			my $btag = bg_send($s{b}, $q->($bsql));
			my ($done, $bout, $berr) = bg_wait_for($s{b}, $btag, 10);
			push @fail, "$what: B did not finish while A's commit waited" unless $done;
			push @fail, "$what: B: $berr" if $done && $berr ne '';
			push @fail, "$what: B's keys not delivered" unless wait_true($s{c}, $all_delivered);
			# d. C caches the old value (A is not visible yet)
			push @fail, cache_old($s{c}, $redis, $key, $old, $what);
			# e. A becomes visible
			push @fail, finish_held(\%s, 'a', $atag, $what);
			# f. the drain resolves the handed-over lookups
			my $state = settles($s{c}, $key);
			push @fail, "$what: $key $state" if $state ne '';
			my $d = delta($before, counters($s{c}));
			push @fail, "$what: lookup_handoffs +$d->{lookup_handoffs}, not +1 (" . show($d) . ')'
			  unless $d->{lookup_handoffs} == 1;
		}
		is(scalar @fail, 0, "$v, $mode: window: a link committed while A's commit was not "
			  . 'visible yet is handed over, no stale key (' . scalar(@window_cases) . ' cases)');
		diag $_ for @fail;

		# 3. in flight: B's commit hangs while A looks up
		bg_query($s{a}, 'SET synchronous_commit = local');
		bg_query($s{b}, 'SET synchronous_commit = on');
		@fail = ();
		for my $c (@participations)
		{
			my ($name, $asql, $bsql, $key, $old) = @$c;
			my $what = "$v/$mode/$name";
			$runs++;
			my @f = reset_and_hold(\%s, $v, $what);
			if (@f)
			{
				push @fail, @f;
				next;
			}
			my ($out, $err) = bg_query($s{b}, 'BEGIN; ' . $q->($bsql));
			push @fail, "$what: B: $err" if $err ne '';
			my $btag = held_commit(\%s, 'b', $what, \@fail) // next;
			# A's lookup while B is between PRE_COMMIT and visibility
			($out, $err) = bg_query($s{a}, 'BEGIN; ' . $q->($asql));
			push @fail, "$what: A: $err" if $err ne '';
			push @fail, finish_held(\%s, 'b', $btag, $what);
			push @fail, "$what: B's keys not delivered" unless wait_true($s{c}, $all_delivered);
			push @fail, cache_old($s{c}, $redis, $key, $old, $what);
			my $before = counters($s{c});
			($out, $err) = bg_query($s{a}, 'COMMIT');
			push @fail, "$what: A: COMMIT: $err" if $err ne '';
			my $state = settles($s{c}, $key);
			push @fail, "$what: $key $state" if $state ne '';
			my $d = delta($before, counters($s{c}));
			push @fail, "$what: not the queue row's path: " . show($d)
			  unless $d->{lookups_settled} == 0 && $d->{lookup_handoffs} == 0
			  && ($mode ne 'sync' || $d->{queue_rows_written} == 1);
		}
		bg_query($s{b}, 'SET synchronous_commit = local');
		is(scalar @fail, 0, "$v, $mode: in flight: a lookup beside an invisible writer "
			  . 'takes the queue row, no stale key (' . scalar(@participations) . ' cases)');
		diag $_ for @fail;
	}
	$s{$_}->quit for qw(a b c p);
}

# 5. refused hand-off: Redis answers the drain's pass of A's handed-over
# lookups (the window of 2, snake, sync) with -NOPERM for
# user:u3:participations: the drain drops them with a WARNING, flushes the
# database's families instead, and goes on draining queue rows.
{
	my $v = 'snake';
	my %s = map { $_ => bg_session($node, $db{$v}) } qw(a b c p);
	my %pid = map { $_ => scalar bg_query($s{$_}, 'SELECT pg_backend_pid()') } qw(a p);
	$s{pid} = \%pid;
	my $what = 'refused hand-off';
	$runs++;
	bg_query($s{$_}, "SET meetcache.delivery = 'sync'") for qw(a b c);
	bg_query($s{a}, 'SET synchronous_commit = on');
	bg_query($s{$_}, 'SET synchronous_commit = local') for qw(b c);
	is(reset_rows(\%s, $v), '', "$what: reset");
	# every key readable, every key writable but user:u3:participations
	# and its lease key (ACL patterns cannot be negated: their complement)
	my @deny_u3 = ('%R~*', '%W~meeting*', '%W~user:u[^3]*', '%W~mc-lease:u:{meeting*',
		'%W~mc-lease:u:{user:u[^3]*', '%W~mc-lease:t:*');
	$redis->cli('ACL', 'SETUSER', 'default', 'reset', 'on', 'nopass', '&*', '+@all', @deny_u3);
	like($redis->cli('UNLINK', 'user:u3:participations'), qr/^NOPERM/,
		"$what: precondition: redis refuses UNLINK user:u3:participations");
	is($redis->cli('UNLINK', 'user:u2:participations'), '0',
		"$what: precondition: redis takes UNLINK user:u2:participations");
	my $flushes = sub {
		return bg_query($s{c}, 'SELECT family_flushes FROM meetcache.stats');
	};
	my $logpos = -s $node->logfile;
	my $log_has = sub {
		my ($re, $from) = @_;
		return poll_until(15, sub { log_since($node, $from // $logpos) =~ $re ? 1 : 0 });
	};
	ok(hold(\%s), "$what: a commit waits in SyncRep");
	my (undef, $err) = bg_query($s{a}, "BEGIN; $retitle");
	is($err, '', "$what: A's statement");
	my $before = counters($s{c});
	my $atag = bg_send($s{a}, 'COMMIT');
	ok(in_syncrep($s{c}, $pid{a}), "$what: A's COMMIT waits in SyncRep");
	# B's own keys are refused too (a commit WARNING, the launcher's retry
	# refused, a flush): let that settle first, so that what follows is A's
	my $f0 = $flushes->();
	my ($bdone, undef, $berr) = bg_wait_for($s{b}, bg_send($s{b}, with_columns($v, $join_u3)), 10);
	ok($bdone && $berr !~ /ERROR/, "$what: B committed while A's commit waited")
	  or diag $berr;
	ok($log_has->(qr/launcher: redis refused to delete \d+ keys of a committed transaction/)
		  && poll_until(15, sub { $flushes->() > $f0 }),
		"$what: B's refused keys: the launcher's flush is done");
	my $f1 = $flushes->();
	ok(release(\%s), "$what: the probe's COMMIT finished once released");
	my ($adone, undef, $aerr) = bg_wait_for($s{a}, $atag, 15);
	ok($adone && $aerr !~ /ERROR/, "$what: A's COMMIT finished once released")
	  or diag $aerr;
	# a. handed over, and refused
	my $d = delta($before, counters($s{c}));
	is($d->{lookup_handoffs}, 1, "$what: lookup_handoffs +1 (" . show($d) . ')');
	my $warned = $log_has->(
		qr/WARNING:  meetcache drain: redis refused to delete the keys of handed-over lookups: .*NOPERM/);
	ok($warned, "$what: WARNING: redis refused to delete the keys of handed-over lookups");
	# c. the families flushed instead: family_flushes grows past B's flush,
	# and the drain logs the flush after the WARNING
	ok(poll_until(15, sub { $flushes->() > $f1 }),
		"$what: family_flushes grew after the refused hand-off ($f1 -> " . $flushes->() . ')');
	my $after = log_since($node, $logpos)
	  =~ /WARNING:  meetcache drain: redis refused to delete the keys of handed-over lookups/
	  ? $logpos + $+[0] : undef;
	ok(defined $after
		  && $log_has->(qr/LOG:  meetcache drain: flushed every cache family/, $after),
		"$what: the drain logged a family flush after the WARNING");
	# b. the drain goes on: an unrelated row, in queue mode, is drained
	my $key = 'meeting:m9:chats:recent:50';
	$redis->cli('SET', $key, '"cached"');
	bg_query($s{c}, "SET meetcache.delivery = 'queue'");
	(undef, $err) = bg_query($s{c}, "UPDATE chat_messages SET message = 'hello again' WHERE id = 'c1'");
	is($err, '', "$what: an unrelated UPDATE in queue mode");
	ok(wait_true($s{c}, $all_drained), "$what: its queue row drained (meetcache.pending empty)");
	is($redis->cli('EXISTS', $key), '0', "$what: $key deleted by the drain");
	$redis->cli('ACL', 'SETUSER', 'default', 'reset', 'on', 'nopass', '~*', '&*', '+@all');
	is($redis->cli('UNLINK', 'user:u3:participations'), '0', "$what: ACL restored");
	$s{$_}->quit for qw(a b c p);
}
# 6. what qualifies() found is kept across transactions (recheck.c,
# Qualified) only while nothing can have changed it.  A logs (DEBUG2) each
# time it reads the answer from the catalogs: the second retitle reads
# nothing; participants made a child of an attached table by B, and A's
# own NO INHERIT rolled back, make the next retitle read it again and not
# settle; once the parent is gone it settles again.  Both schemas, sync.
# (The "nothing read" steps assume meetings and participants use different
# counter slots, which their OIDs decide: A's own retitle moves meetings'.
# The rolled-back NO INHERIT also invalidates participants' relcache entry
# locally, so that step does not tell ran_ddl's part from the callback's.)
for my $v (sort keys %db)
{
	my %s = map { $_ => bg_session($node, $db{$v}) } qw(a b c);
	bg_query($s{$_}, "SET meetcache.delivery = 'sync'; SET synchronous_commit = local") for qw(a b c);
	bg_query($s{a}, 'SET client_min_messages = debug2');
	my $read = qr/DEBUG:  meetcache: via table "participants" (may skip|always needs) a second resolution/;
	my $step = sub {
		my ($what, $sql, $settles, $reads, $rows) = @_;
		$rows //= $settles ? 0 : 1;
		$what = "qualification, $v: $what";
		$runs++;
		my $before = counters($s{c});
		my (undef, $err) = bg_query($s{a}, $sql);
		unlike($err, qr/ERROR/, "$what: A's transaction");
		my @seen = $err =~ /$read/g;
		is(join(',', @seen), $reads, "$what: read from the catalogs: " . ($reads eq '' ? 'nothing' : $reads));
		ok(wait_true($s{c}, $all_drained), "$what: queue drained");
		my $d = delta($before, counters($s{c}));
		is($d->{lookups_settled}, $settles ? 1 : 0,
			"$what: lookups_settled " . ($settles ? '+1' : '+0') . ' (' . show($d) . ')');
		is($d->{queue_rows_written}, $rows, "$what: queue_rows_written +$rows");
	};
	my $b_sql = sub {
		my ($what, $sql) = @_;
		my (undef, $err) = bg_query($s{b}, $sql);
		is($err, '', "qualification, $v: B: $what");
	};
	$step->('first retitle', $retitle, 1, 'may skip');
	$step->('second retitle (the answer kept)', $retitle, 1, '');
	$b_sql->('participants made a child of an attached table',
		"CREATE TABLE pp (LIKE participants); SELECT meetcache.attach('pp', 'participants'); "
		  . 'ALTER TABLE participants INHERIT pp;');
	$step->('retitle after B made participants a child', $retitle, 0, 'always needs');
	$step->('retitle while A undoes that and rolls back',
		"BEGIN; ALTER TABLE participants NO INHERIT pp; $retitle; ROLLBACK;", 0, 'may skip', 0);
	$step->('retitle after A rolled back', $retitle, 0, 'always needs');
	$b_sql->('the parent removed',
		"ALTER TABLE participants NO INHERIT pp; SELECT meetcache.detach('pp'); DROP TABLE pp;");
	$step->('retitle after B removed the parent', $retitle, 1, 'may skip');
	$step->('retitle once more (the answer kept)', $retitle, 1, '');
	$_->quit for values %s;
}

note sprintf('%d runs in %.1fs', $runs, time - $t0);

my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|was terminated by signal|server process .* exited with exit code [^0]/,
	'no crash in the server log');
done_testing();
