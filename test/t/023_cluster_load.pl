# Redis Cluster while slots move (issue 12): redis-cli --cluster reshard
# under load.
#
#   - A reshard under a pgbench write load, once per delivery mode (sync,
#     queue, sync+queue): 2000 slots of one master move to another, keys
#     and all, while single-row UPDATEs commit.  Zero failed transactions;
#     every committed change's keys are deleted; untouched keys survive on
#     their new master.  Not vacuous: writes committed while the reshard
#     ran, the load changed keys of moved slots, and the masters answered
#     meetcache with MOVED or ASK (INFO errorstats) that it followed
#     (meetcache.stats' moved_redirects and ask_redirects grew).
#   - The lease race of 006 (MeetcacheTest::lease_race) on the cluster,
#     with reshards moving the hot keys' slots back and forth while the
#     leases are taken (a lease key shares its key's slot, so it migrates
#     with it): zero stale keys with leases, stale keys without.
#
# 3 masters + 3 replicas on 127.0.0.1, --cluster-node-timeout 2000.  Every
# wait is bounded polling.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use MeetcacheTest qw(new_node setup_schema make_rows wait_queue_empty under_load
  load_options lease_race);

my $rc = MeetcacheTest::start_redis_cluster(masters => 3, replicas => 1);
my $node = new_node(
	'cluster_load', undef,
	url => $rc->url,
	log_statement => 'none',
	conf => "max_connections = 60\n"
	  . "meetcache.commit_timeout = '500ms'\n"
	  . "meetcache.retry_buffer = '16MB'\n");
setup_schema($node);

my $slot = \&MeetcacheTest::RedisCluster::key_slot;

###########################################################################
# A reshard under a write load, once per delivery mode; each round moves
# slots of the next master
my $P = 4000;
my $NSLOTS = 2000;
my $round = 0;
for my $case ([ 'sync', 's' ], [ 'queue', 'q' ], [ 'sync+queue', 'sq' ])
{
	my ($mode, $tag) = @$case;
	my $what = "reshard, $mode";
	my $pfx = "r$tag-";
	make_rows($node, 'postgres', $pfx, $P);
	$node->safe_psql('postgres', "CREATE SEQUENCE seq_$tag");
	my $done_sql = "SELECT count(*) FROM meetings WHERE starts_with(id, 'm$pfx') AND title = 'done'";
	my $chk = MeetcacheTest::Checker->new($node, $rc);
	$chk->seed($chk->keys_of('meetings', "starts_with(t.id, 'm$pfx')"));
	my @m = $rc->masters;
	my ($from, $to) = ($m[ $round % 3 ], $m[ ($round + 1) % 3 ]);
	$round++;
	$rc->reset_stats;
	my $redir_sql = 'SELECT moved_redirects + ask_redirects FROM meetcache.stats';
	my $r0 = $node->safe_psql('postgres', $redir_sql);

	my (@moved, $c0, $c1);
	under_load(
		$node, $what,
		"SELECT ($done_sql) >= 20",
		sub {
			$c0 = $node->safe_psql('postgres', $done_sql);
			@moved = $rc->reshard($from, $to, $NSLOTS);
			$c1 = $node->safe_psql('postgres', $done_sql);
		},
		scripts => [
			[ "UPDATE meetings SET title = 'done' WHERE id = (SELECT 'm$pfx' || nextval('seq_$tag'));\n", 1 ]
		],
		clients => 4,
		seconds => 10,
		rate => 300,
		options => load_options($mode));
	my $red = $rc->redirects;
	note "$what: $c0 changes before the reshard, $c1 after it; redirects: "
	  . join(', ', map { "$_ $red->{$_}" } sort keys %$red);
	is(scalar @moved, $NSLOTS, "$what: $NSLOTS slots moved from one master to another");
	cmp_ok($c1, '>', $c0, "$what: changes committed while the reshard ran");
	cmp_ok($red->{MOVED} + $red->{ASK}, '>', 0,
		"$what: the masters redirected meetcache (MOVED or ASK)");
	cmp_ok($node->safe_psql('postgres', $redir_sql), '>', $r0,
		"$what: meetcache.stats counted the redirects it followed");

	my $done = $node->safe_psql('postgres', $done_sql);
	my %mv = map { $_ => 1 } @moved;
	my @del = $chk->keys_of('meetings', "starts_with(t.id, 'm$pfx') AND t.title = 'done'");
	my @keep = grep { /\Q$pfx\E(\d+)/ && $1 > $done + 50 }
	  $chk->keys_of('meetings', "starts_with(t.id, 'm$pfx') AND t.title <> 'done'");
	# changes committed once the reshard had begun, in moved slots
	my @del_moved = grep { /\Q$pfx\E(\d+)/ && $1 > $c0 && $mv{ $slot->($_) } } @del;
	my @keep_moved = grep { $mv{ $slot->($_) } } @keep;
	cmp_ok(scalar @del_moved, '>', 0,
		"$what: changes during and after the reshard hit moved slots (" . scalar(@del_moved) . ' keys)');
	cmp_ok(scalar @keep_moved, '>', 0,
		"$what: untouched keys in moved slots (" . scalar(@keep_moved) . ')');
	is(scalar($to->existing_many(@keep_moved)), scalar @keep_moved,
		"$what: untouched keys of moved slots migrated to their new master");
	$chk->must_delete(@del);
	$chk->must_survive(@keep);
	$chk->verify("$what: every committed change", timeout => 40);
	ok(wait_queue_empty($node, 'postgres', 40), "$what: queue and retry queue empty");
}

###########################################################################
# The lease race on the cluster, reshards moving the hot keys' slots while
# it runs (the writers stop after 8 s: the reshards end by then)
{
	my $SECS = 8;
	make_rows($node, 'postgres', '', 50);
	my %hot = map { $slot->("meeting:m$_") => 1 } 1 .. 50;
	# redis-cli moves a master's lowest slots: as many as hold 5 hot keys
	my $nhot = sub {
		my @s = $rc->slots_of($_[0]);
		my @at = grep { $hot{ $s[$_] } } 0 .. $#s;
		return @at ? $at[ $#at < 4 ? $#at : 4 ] + 1 : 0;
	};
	my ($src) = sort { $nhot->($a) <=> $nhot->($b) } grep { $nhot->($_) } $rc->masters;
	my @m = ($src, grep { $_->port != $src->port } $rc->masters);
	my (%moved, $n);
	$rc->reset_stats;
	lease_race(
		$node, $rc,
		name => 'cluster',
		secs => $SECS,
		during => sub {
			my $end = time + $SECS - 3;
			do
			{
				$moved{$_} = 1 for $rc->reshard($m[0], $m[1], $nhot->($m[0]));
				@m[ 0, 1 ] = @m[ 1, 0 ];
				$n++;
			} while time < $end;
		});
	my $red = $rc->redirects;
	my @hot_moved = grep { $moved{$_} } keys %hot;
	note "lease race: $n reshards, "
	  . scalar(@hot_moved) . ' slots of hot keys moved; redirects: '
	  . join(', ', map { "$_ $red->{$_}" } sort keys %$red);
	cmp_ok(scalar @hot_moved, '>', 0, 'cluster: the reshards moved slots of hot keys');
	cmp_ok($red->{MOVED} + $red->{ASK}, '>', 0,
		'cluster: the masters redirected meetcache (MOVED or ASK) during the race');
}

unlike(slurp_file($node->logfile), qr/PANIC|was terminated by signal|server process .* exited with exit code/,
	'no crash in the server log');
done_testing();
