# Redis faults under write load: nothing committed is lost, nothing rolled
# back is deleted, and commits stay bounded.
#
#   - Redis frozen (SIGSTOP) in the middle of a write load of several
#     sessions, in each delivery mode (sync, queue, sync+queue): no failed
#     transaction; COMMIT bounded by commit_timeout in the sync modes and
#     not delayed at all in queue mode; after SIGCONT every key of every
#     committed change is deleted within seconds, and keys of rolled-back
#     or untouched rows are kept.
#   - Redis stopped during the load and restarted with its data kept (so
#     stale keys would still be visible): every committed change's keys
#     are gone after the restart.
#   - meetcache.stats: worker_state, launcher/drain backend types,
#     redis_state down while frozen after a failure and up after.
#
# Expected keys come from meetcache.affected_keys (the rules the triggers
# use).  Every wait is bounded polling; the only timing assertions are
# generous bounds.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema poll_sql stats
  wait_redis_state wait_queue_empty run_load finish_load);

my $redis = start_redis();
my $node = new_node(
	'faults', $redis,
	log_statement => 'none',
	conf => "meetcache.commit_timeout = '300ms'\n"
	  # room for every handed-over transaction: an overflow would flush
	  # whole families, and the survivors below could not be checked
	  . "meetcache.retry_buffer = '16MB'\n");
setup_schema($node);

my $P = 3000;    # pool rows per scenario: more than a load commits
my $R = 40;      # rows that are only ever updated and rolled back

# Pools of rows with disjoint keys (one host per meeting, ENDED).
sub make_pool
{
	my ($tag) = @_;
	$node->safe_psql('postgres', qq{
INSERT INTO users (id, name, email)
  SELECT 'hp-${tag}-' || g, 'H', 'hp-${tag}-' || g || '\@x' FROM generate_series(1, $P) g;
INSERT INTO meetings (id, title, host_id, invite_code, status)
  SELECT 'p-${tag}-' || g, 't0', 'hp-${tag}-' || g, 'inv-p-${tag}-' || g, 'ENDED' FROM generate_series(1, $P) g;
INSERT INTO users (id, name, email)
  SELECT 'hr-${tag}-' || g, 'H', 'hr-${tag}-' || g || '\@x' FROM generate_series(1, $R) g;
INSERT INTO meetings (id, title, host_id, invite_code, status)
  SELECT 'r-${tag}-' || g, 't0', 'hr-${tag}-' || g, 'inv-r-${tag}-' || g, 'ENDED' FROM generate_series(1, $R) g;
CREATE SEQUENCE seq_${tag};
});
	return;
}

my %opts = (
	'sync' => '-c meetcache.delivery=sync -c meetcache.commit_timeout=300ms',
	'sync+queue' => '-c meetcache.delivery=sync+queue -c meetcache.commit_timeout=300ms',
	# a COMMIT that touched Redis would wait 20 s here
	'queue' => '-c meetcache.delivery=queue -c meetcache.commit_timeout=20s '
	  . '-c meetcache.connect_timeout=20s',);

# The load: 9 in 10 transactions update one pool row never updated before
# (rows past the pool end do not exist: nothing to do), 1 in 10 updates a
# rollback row and rolls back.
sub load_scripts
{
	my ($tag) = @_;
	return [
		[
			"UPDATE meetings SET title = 'done' WHERE id = (SELECT 'p-${tag}-' || nextval('seq_${tag}'));\n",
			9
		],
		[
			"\\set rid random(1, $R)\nBEGIN;\n"
			  . "UPDATE meetings SET title = 'rolled' WHERE id = 'r-${tag}-' || :rid;\nROLLBACK;\n",
			1
		]
	];
}

# Seed every key of the pool, the rollback rows and one unrelated key.
sub seed_pool
{
	my ($chk, $tag) = @_;
	my @all = $chk->keys_of('meetings', "starts_with(t.id, 'p-${tag}-')");
	my @rb = $chk->keys_of('meetings', "starts_with(t.id, 'r-${tag}-')");
	$chk->seed(@all, @rb, "unrelated:$tag");
	return scalar(@all) + scalar(@rb);
}

# After the load: committed rows must lose their keys; the others keep them.
sub record_outcome
{
	my ($chk, $tag, $what) = @_;
	my ($done, $seq, $rolled) = split /\|/, $node->safe_psql('postgres', qq{
SELECT (SELECT count(*) FROM meetings WHERE starts_with(id, 'p-${tag}-') AND title = 'done'),
       (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM seq_${tag}),
       (SELECT count(*) FROM meetings WHERE starts_with(id, 'r-${tag}-') AND title <> 't0')});
	my $expect = $seq < $P ? $seq : $P;
	is($done, $expect,
		"$what: every transaction that took a pool row committed ($done rows)");
	is($rolled, 0, "$what: rolled-back rows unchanged");
	$chk->must_delete($chk->keys_of('meetings',
			"starts_with(t.id, 'p-${tag}-') AND t.title = 'done'"));
	$chk->must_survive(
		$chk->keys_of('meetings', "starts_with(t.id, 'p-${tag}-') AND t.title <> 'done'"),
		$chk->keys_of('meetings', "starts_with(t.id, 'r-${tag}-')"),
		"unrelated:$tag");
	return $done;
}

sub check_load
{
	my ($r, $what, $bound) = @_;
	note sprintf('%s: rc %s, %s transactions, %s failed, max latency %.3fs (%d logged)',
		$what, $r->{rc}, $r->{processed} // '?', $r->{failed} // '?',
		$r->{max_latency}, $r->{logged});
	is($r->{rc}, 0, "$what: pgbench succeeded") or diag($r->{stdout} . $r->{stderr});
	ok(defined $r->{processed} && $r->{processed} > 0 && $r->{failed} == 0,
		"$what: zero failed transactions");
	unlike($r->{stderr}, qr/ERROR|FATAL|PANIC|abort/i, "$what: no error");
	cmp_ok($r->{max_latency}, '<', $bound,
		"$what: every transaction (COMMIT included) took less than ${bound}s");
	return;
}

###########################################################################
# The worker, as meetcache.stats and pg_stat_activity show it
my $st = stats($node);
is($st->{worker_state}, 'running', 'stats: worker_state running');
is($st->{redis_state}, 'up', 'stats: redis_state up');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'meetcache launcher' AND pid = $st->{launcher_pid}"),
	1,
	'pg_stat_activity: the launcher (launcher_pid) has backend_type "meetcache launcher"');
make_pool($_) for qw(s q sq rs rq rsq);
# a queue-mode commit starts a drain (it lives 500 ms after its last row)
ok( poll_sql($node, 'postgres', q{
SET meetcache.delivery = 'queue';
UPDATE meetings SET title = 't0' WHERE id = 'r-s-1';
DO $$BEGIN PERFORM pg_sleep(0.1); END$$;
SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'meetcache drain' AND datname = 'postgres';}),
	'pg_stat_activity: a drain of this database shows as "meetcache drain"');
ok(wait_queue_empty($node), 'setup delivered');

###########################################################################
# Redis frozen in the middle of the load, in each delivery mode
for my $case (['sync', 's'], ['queue', 'q'], ['sync+queue', 'sq'])
{
	my ($mode, $tag) = @$case;
	my $what = "frozen, $mode";
	my $chk = MeetcacheTest::Checker->new($node, $redis);
	my $n = seed_pool($chk, $tag);
	note "$what: $n keys seeded";

	my $h = run_load($node,
		scripts => load_scripts($tag),
		clients => 4,
		seconds => 4,
		rate => 600,
		options => $opts{$mode},
		background => 1);
	# freeze once the load is under way
	ok( poll_sql($node, 'postgres',
			"SELECT count(*) >= 20 FROM meetings WHERE starts_with(id, 'p-${tag}-') AND title = 'done'"
		),
		"$what: load running");
	$redis->freeze;
	my $r = finish_load($h);
	check_load($r, $what, $mode eq 'queue' ? 2 : 3);

	# the failure opened the breaker (in queue mode a drain's failure)
	ok(wait_redis_state($node, 'down'), "$what: redis_state down while frozen");
	$st = stats($node);
	note "$what, frozen: " . join(', ', map { "$_=$st->{$_}" } sort keys %$st);
	if ($mode eq 'sync')
	{
		cmp_ok($st->{retry_queue_entries}, '>', 0,
			"$what: keys handed to the launcher's retry queue");
	}
	else
	{
		cmp_ok($st->{queue_depth}, '>', 0, "$what: rows wait in meetcache.queue");
	}

	my $done = record_outcome($chk, $tag, $what);
	cmp_ok($done, '>', 20, "$what: changes committed while frozen");
	$redis->thaw;
	$chk->verify("$what, after SIGCONT");
	ok(wait_redis_state($node, 'up'), "$what: redis_state up again");
	ok(wait_queue_empty($node), "$what: queue and retry queue empty");
}

$st = stats($node);
is($st->{retry_overflows}, 0, 'frozen: the retry queue never overflowed');
is($st->{family_flushes}, 0, 'frozen: no family flush');

###########################################################################
# Redis stopped during the load, restarted with its data (stale keys)
{
	my $what = 'restart keeping data';
	my $chk = MeetcacheTest::Checker->new($node, $redis);
	seed_pool($chk, $_) for qw(rs rq rsq);
	$redis->set_keys('control:key');
	$redis->cli('SAVE');
	$redis->stop;
	my %h;
	for my $case (['sync', 'rs'], ['queue', 'rq'], ['sync+queue', 'rsq'])
	{
		my ($mode, $tag) = @$case;
		$h{$mode} = run_load($node,
			scripts => load_scripts($tag),
			clients => 2,
			jobs => 1,
			seconds => 2,
			rate => 300,
			options => $opts{$mode},
			background => 1);
	}
	for my $case (['sync', 'rs'], ['queue', 'rq'], ['sync+queue', 'rsq'])
	{
		my ($mode, $tag) = @$case;
		check_load(finish_load($h{$mode}), "redis down, $mode",
			$mode eq 'queue' ? 2 : 3);
		my $done = record_outcome($chk, $tag, "redis down, $mode");
		cmp_ok($done, '>', 0, "redis down, $mode: changes committed");
	}
	is($node->safe_psql('postgres', 'SELECT redis_state FROM meetcache.stats'),
		'down', "$what: redis_state down while redis is stopped");

	$redis->start(keep_data => 1);
	is($redis->cli('EXISTS', 'control:key'), '1',
		"$what: redis came back with its data (stale keys visible)");
	$chk->verify("$what, after the restart");
	ok(wait_redis_state($node, 'up'), "$what: redis_state up");
	ok(wait_queue_empty($node), "$what: queue and retry queue empty");
}

###########################################################################
# The checker itself: a change made with the triggers detached is reported
{
	my $chk = MeetcacheTest::Checker->new($node, $redis);
	my @k = $chk->seed($chk->keys_of('meetings', "t.id = 'p-s-1'"));
	$node->safe_psql('postgres', q{
SELECT meetcache.detach('meetings');
UPDATE meetings SET title = 'unseen' WHERE id = 'p-s-1';
SELECT meetcache.attach('meetings');});
	$chk->must_delete(@k);
	is(scalar($chk->leftover(1)), scalar(@k),
		'checker self-test: the keys of a change made without triggers are reported as not deleted');
}

$st = stats($node);
note 'final stats: ' . join(', ', map { "$_=$st->{$_}" } sort keys %$st);
my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|was terminated by signal|server process .* exited with exit code/,
	'no crash in the server log');
done_testing();
