# Redis Sentinel: meetcache.redis_url = 'redis-sentinel://...'.
#
#   - URL forms: accepted (several sentinels, default port, db, user,
#     rediss-sentinel://) and refused (password, no master name, bad
#     host/port/db, too many sentinels), never echoing the URL.
#   - Invalidation through the sentinels' master in sync and queue mode,
#     and the SQL functions.
#   - Errors: no sentinel answers (08006 naming those tried), a sentinel
#     that knows no such master (08006 with a hint), a sentinel with a
#     password (meetcache.redis_sentinel_password_file, the same rules as
#     redis_password_file), a "master" whose ROLE is replica, a master
#     demoted under an open session (-READONLY).
#   - Failover: the master killed under a pgbench write load, once per
#     delivery mode (sync, queue, sync+queue): zero failed transactions,
#     bounded commits, and every committed change's keys are gone from the
#     promoted replica; rolled-back and untouched keys survive.
#
# Sentinel settings as in the design notes: quorum 1, down-after 1000 ms,
# failover-timeout 5000 ms; the replica starts with --replicaof.  Every
# wait is bounded polling.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema run_sql refused poll_sql
  bg_session bg_query wait_queue_empty run_load finish_load reload_and_wait
  write_secret_file no_secret log_since free_port);

my $first = start_redis();
my $second = MeetcacheTest::start_replica($first);
my $sen = MeetcacheTest::start_sentinel($first);
ok(MeetcacheTest::wait_sentinel_replica($sen, $second), 'the sentinel knows the replica');
my %by_port = ($first->port => $first, $second->port => $second);

my $dead = free_port();    # nothing listens there
my $url = sprintf('redis-sentinel://127.0.0.1:%d,127.0.0.1:%d/mymaster', $dead, $sen->port);
my $node = new_node(
	'sentinel', $first,
	url => $url,
	log_statement => 'none',
	conf => "meetcache.commit_timeout = '300ms'\n"
	  . "meetcache.retry_buffer = '16MB'\n");
setup_schema($node);

###########################################################################
# URL forms
for my $u (
	'redis-sentinel://127.0.0.1/mymaster',
	'redis-sentinel://127.0.0.1:26379,[::1]:26380,localhost/mymaster/3',
	'redis-sentinel://app@127.0.0.1:26379/my%20master',
	'rediss-sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0')
{
	my ($rc, $out, $err) = run_sql($node, 'postgres', "SET meetcache.redis_url = '$u'");
	is($rc, 0, "URL accepted: $u") or diag($err);
}
for my $c (
	[ 'redis-sentinel://u:sekrit-pw@127.0.0.1:26379/mymaster', 'carries a password' ],
	[ 'redis-sentinel://:sekrit-pw@127.0.0.1:26379/mymaster', 'carries a password' ],
	[ 'redis-sentinel://127.0.0.1:26379', 'followed by /master_name' ],
	[ 'redis-sentinel://127.0.0.1:26379/', 'followed by /master_name' ],
	[ 'redis-sentinel://127.0.0.1:26379/mymaster/x', 'database must be' ],
	[ 'redis-sentinel://127.0.0.1:0/mymaster', 'port must be' ],
	[ 'redis-sentinel://,127.0.0.1/mymaster', 'no host' ],
	[ 'redis-sentinel://127.0.0.1;x/mymaster', 'invalid character' ],
	[ 'redis-sentinel://' . join(',', map { "h$_" } 1 .. 9) . '/mymaster', 'more than 8 sentinels' ],
	[ 'redis-sentinel://127.0.0.1/my%zzmaster', 'malformed' ])
{
	my ($u, $why) = @$c;
	my $err = refused($node, 'postgres', "SET meetcache.redis_url = '$u'", '22023', "URL $u");
	like($err, qr/DETAIL:  .*\Q$why\E/, "URL $u: says why ($why)");
	no_secret($err, "URL $u: the error", 'sekrit-pw');
}

###########################################################################
# Invalidation and SQL functions through the sentinels' master
$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) SELECT 'u' || g, 'U', 'u' || g || '@x' FROM generate_series(1, 4) g;
INSERT INTO meetings (id, title, host_id, invite_code, status)
  SELECT 'm' || g, 't0', 'u' || g, 'inv-m' || g, 'ENDED' FROM generate_series(1, 4) g;});
{
	my $chk = MeetcacheTest::Checker->new($node, $first);
	for my $c ([ 'sync', 'm1' ], [ 'queue', 'm2' ])
	{
		my ($mode, $id) = @$c;
		my @k = $chk->seed($chk->keys_of('meetings', "t.id = '$id'"));
		my ($rc, $out, $err) = run_sql($node, 'postgres',
			"UPDATE meetings SET title = 't1' WHERE id = '$id'", delivery => $mode);
		is($err, '', "$mode through the sentinel URL: commit without warning");
		$chk->must_delete(@k);
		$chk->verify("$mode through the sentinel URL");
	}
	$node->safe_psql('postgres', q{SELECT meetcache.cache_set('sql:k', '{"a": 1}', 600)});
	is($node->safe_psql('postgres', q{SELECT meetcache.cache_get('sql:k')}), '{"a": 1}',
		'cache_set/cache_get through the sentinel URL');
	is($first->cli('GET', 'sql:k'), '{"a":1}', 'the value is on the master');
	is($node->safe_psql('postgres', 'SELECT meetcache.cache_ping()'), 'PONG', 'cache_ping');
}

###########################################################################
# Errors
{
	my $dead2 = free_port();
	my $err = refused($node, 'postgres', 'SELECT meetcache.cache_get(\'k\')', '08006',
		'no sentinel answers',
		redis_url => "redis-sentinel://127.0.0.1:$dead,127.0.0.1:$dead2/mymaster");
	like($err, qr/no redis sentinel of master "mymaster" answered \(tried 127\.0\.0\.1:$dead, 127\.0\.0\.1:$dead2\)/,
		'no sentinel answers: the message names the sentinels tried');
	like($err, qr/DETAIL:  Last error: could not connect to redis at 127\.0\.0\.1:$dead2/,
		'no sentinel answers: the detail gives the last error');

	$err = refused($node, 'postgres', 'SELECT meetcache.cache_get(\'k\')', '08006',
		'unknown master name',
		redis_url => sprintf('redis-sentinel://127.0.0.1:%d/nosuch', $sen->port));
	like($err, qr/the redis sentinels know no master named "nosuch"/,
		'unknown master name: message');
	like($err, qr/HINT:  Check the master name in meetcache.redis_url/,
		'unknown master name: hint');

	# a commit through a URL nobody answers stays bounded and is not lost
	my $chk = MeetcacheTest::Checker->new($node, $first);
	my @k = $chk->seed($chk->keys_of('meetings', "t.id = 'm3'"));
	my ($rc, $out, $e2) = run_sql($node, 'postgres',
		"SET meetcache.redis_url = 'redis-sentinel://127.0.0.1:$dead/mymaster';\n"
		  . "UPDATE meetings SET title = 't1' WHERE id = 'm3'",
		delivery => 'sync+queue');
	is($rc, 0, 'commit with no sentinel answering: committed');
	like($e2, qr/WARNING:  meetcache: could not delete .*no redis sentinel of master "mymaster" answered/,
		'commit with no sentinel answering: a WARNING says why');
	$chk->must_delete(@k);
	$chk->verify('commit with no sentinel answering, delivered by the drain');
}

# A sentinel with a password of its own; it also names a "master" that is
# a replica (ROLE), and one demoted under an open session (READONLY).
{
	my $solo = start_redis();      # "demoted" becomes a replica of it
	my $c = start_redis();
	my $s2 = MeetcacheTest::Sentinel->new(
		requirepass => 'sentinel-sekrit',
		args => [
			'--sentinel', '--sentinel', 'monitor', 'fake', '127.0.0.1', $second->port, '1',
			'--sentinel', 'monitor', 'demoted', '127.0.0.1', $c->port, '1'
		]);
	my $s2url = sprintf('redis-sentinel://127.0.0.1:%d/demoted', $s2->port);
	my $err = refused($node, 'postgres', 'SELECT meetcache.cache_ping()', '08006',
		'sentinel password missing', redis_url => $s2url);
	like($err, qr/DETAIL:  Last error: redis sentinel at 127\.0\.0\.1:\d+ refused SENTINEL get-master-addr-by-name: Redis said: NOAUTH/,
		'sentinel password missing: the sentinel asks for it');

	my $pwfile = $node->data_dir . '/sentinel.pw';
	write_secret_file($pwfile, "sentinel-sekrit\n", 0644);
	refused($node, 'postgres',
		"ALTER SYSTEM SET meetcache.redis_sentinel_password_file = '$pwfile'",
		'F0000', 'sentinel password file open to others');
	chmod 0600, $pwfile;
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET meetcache.redis_sentinel_password_file = '$pwfile'");
	ok(reload_and_wait($node), 'reloaded with the sentinel password file');
	is($node->safe_psql('postgres',
			"SET meetcache.redis_url = '$s2url'; SELECT meetcache.cache_ping()"),
		'PONG', 'sentinel password file: the sentinel answers');

	$err = refused($node, 'postgres', 'SELECT meetcache.cache_ping()', '08006',
		'named master is a replica',
		redis_url => sprintf('redis-sentinel://127.0.0.1:%d/fake', $s2->port));
	like($err, qr/redis at 127\.0\.0\.1:${\ $second->port}, named by the sentinels, is not the master of "fake"/,
		'named master is a replica: message');
	like($err, qr/DETAIL:  Its role is "slave"/, 'named master is a replica: detail');

	my $s = bg_session($node);
	bg_query($s, "SET meetcache.redis_url = '$s2url'");
	is(bg_query($s, "SELECT meetcache.cache_set('d:k', '1', 600)"), '', 'session on the master "demoted"');
	$c->cli('REPLICAOF', '127.0.0.1', $solo->port);
	my ($out, $e) = bg_query($s, "SELECT meetcache.cache_set('d:k', '2', 600)");
	like($e, qr/redis at 127\.0\.0\.1:${\ $c->port} is no longer the master of "demoted"/,
		'a master demoted under an open session: -READONLY ends its connection');
	($out, $e) = bg_query($s, "SELECT meetcache.cache_set('d:k', '3', 600)");
	like($e, qr/is not the master of "demoted"/,
		'the next call asks the sentinel again, and checks ROLE');
	$s->quit;
	$node->safe_psql('postgres', 'ALTER SYSTEM RESET meetcache.redis_sentinel_password_file');
	ok(reload_and_wait($node), 'reloaded without the sentinel password file');
	$s2->stop;
	$c->stop;
	$solo->stop;
	no_secret(slurp_file($node->logfile), 'server log', 'sentinel-sekrit');
}

###########################################################################
# rediss-sentinel://: TLS to the sentinel and to the master it names
{
	my $dir = File::Temp::tempdir('certs_XXXX', DIR => $PostgreSQL::Test::Utils::tmp_check,
		CLEANUP => 1);
	my $certs = MeetcacheTest::make_tls_certs($dir);
	my $tm = MeetcacheTest::start_tls_redis(certs => $certs);
	my $stls = free_port();
	my $ts = MeetcacheTest::Sentinel->new(
		args => [
			'--tls-port' => $stls,
			'--tls-cert-file' => $certs->{'server.crt'},
			'--tls-key-file' => $certs->{'server.key'},
			'--tls-ca-cert-file' => $certs->{'ca.crt'},
			'--tls-auth-clients' => 'no',
			'--tls-replication' => 'yes',
			'--sentinel', '--sentinel', 'monitor', 'tlsmaster', '127.0.0.1', $tm->{tls_port}, '1'
		]);
	my $tset = "SET meetcache.redis_tls_ca_file = '$certs->{'ca.crt'}';\n"
	  . "SET meetcache.redis_url = 'rediss-sentinel://127.0.0.1:$stls/tlsmaster';\n";
	my ($rc, $out, $err) = run_sql($node, 'postgres',
		$tset . "SELECT meetcache.cache_set('tls:k', '1', 600);");
	is($rc, 0, 'rediss-sentinel://: cache_set') or diag($err);
	is($tm->cli('GET', 'tls:k'), '1', 'rediss-sentinel://: the value is on the TLS master');
	my $chk = MeetcacheTest::Checker->new($node, $tm);
	my @k = $chk->seed($chk->keys_of('meetings', "t.id = 'm4'"));
	($rc, $out, $err) = run_sql($node, 'postgres',
		$tset . "UPDATE meetings SET title = 't1' WHERE id = 'm4'", delivery => 'sync');
	is($err, '', 'rediss-sentinel://: commit without warning');
	$chk->must_delete(@k);
	$chk->verify('rediss-sentinel://: sync invalidation', timeout => 5);
	refused($node, 'postgres', 'SELECT meetcache.cache_ping()', '08006',
		'rediss-sentinel:// to a plain-text sentinel port',
		redis_url => sprintf('rediss-sentinel://127.0.0.1:%d/tlsmaster', $ts->port));
	$ts->stop;
	$tm->stop;
}

###########################################################################
# Failover under a write load, once per delivery mode
my $P = 3000;
my $R = 40;
$node->safe_psql('postgres', qq{
INSERT INTO users (id, name, email)
  SELECT 'h-' || g, 'H', 'h-' || g || '\@x' FROM generate_series(1, 3 * ($P + $R)) g;});
my $h = 0;
for my $tag (qw(s q sq))
{
	$node->safe_psql('postgres', qq{
INSERT INTO meetings (id, title, host_id, invite_code, status)
  SELECT 'p-${tag}-' || g, 't0', 'h-' || ($h + g), 'inv-p-${tag}-' || g, 'ENDED' FROM generate_series(1, $P) g;
INSERT INTO meetings (id, title, host_id, invite_code, status)
  SELECT 'r-${tag}-' || g, 't0', 'h-' || ($h + $P + g), 'inv-r-${tag}-' || g, 'ENDED' FROM generate_series(1, $R) g;
CREATE SEQUENCE seq_${tag};});
	$h += $P + $R;
}

my %opts = (
	'sync' => '-c meetcache.delivery=sync -c meetcache.commit_timeout=300ms',
	'sync+queue' => '-c meetcache.delivery=sync+queue -c meetcache.commit_timeout=300ms',
	'queue' => '-c meetcache.delivery=queue',);

my ($master, $replica) = ($first, $second);
for my $case ([ 'sync', 's' ], [ 'queue', 'q' ], [ 'sync+queue', 'sq' ])
{
	my ($mode, $tag) = @$case;
	my $what = "failover, $mode";
	is(MeetcacheTest::sentinel_master_port($sen), $master->port, "$what: the sentinel names the master");
	my $chk = MeetcacheTest::Checker->new($node, $master);
	my @pool = $chk->keys_of('meetings', "starts_with(t.id, 'p-${tag}-')");
	my @rb = $chk->keys_of('meetings', "starts_with(t.id, 'r-${tag}-')");
	$chk->seed(@pool, @rb, "unrelated:$tag");
	# the seeded keys are on the replica before the load starts
	is($master->cli('WAIT', '1', '10000'), '1', "$what: seeded keys replicated");

	my $r = MeetcacheTest::kill_under_load($node, $master, $what,
		"SELECT count(*) >= 20 FROM meetings WHERE starts_with(id, 'p-${tag}-') AND title = 'done'",
		scripts => [
			[ "UPDATE meetings SET title = 'done' WHERE id = (SELECT 'p-${tag}-' || nextval('seq_${tag}'));\n", 9 ],
			[ "\\set rid random(1, $R)\nBEGIN;\n"
				  . "UPDATE meetings SET title = 'rolled' WHERE id = 'r-${tag}-' || :rid;\nROLLBACK;\n", 1 ]
		],
		clients => 4,
		seconds => 5,
		rate => 300,
		options => $opts{$mode});
	cmp_ok($r->{max_latency}, '<', 3, "$what: every transaction (COMMIT included) took less than 3s");

	ok(MeetcacheTest::poll_until(40,
			sub { MeetcacheTest::sentinel_master_port($sen) eq $replica->port }),
		"$what: the sentinel promoted the replica");
	my ($done, $rolled) = split /\|/, $node->safe_psql('postgres', qq{
SELECT (SELECT count(*) FROM meetings WHERE starts_with(id, 'p-${tag}-') AND title = 'done'),
       (SELECT count(*) FROM meetings WHERE starts_with(id, 'r-${tag}-') AND title <> 't0')});
	cmp_ok($done, '>', 20, "$what: changes committed ($done)");
	is($rolled, 0, "$what: rolled-back rows unchanged");
	$chk->must_delete($chk->keys_of('meetings',
			"starts_with(t.id, 'p-${tag}-') AND t.title = 'done'"));
	$chk->must_survive(
		$chk->keys_of('meetings', "starts_with(t.id, 'p-${tag}-') AND t.title <> 'done'"),
		@rb, "unrelated:$tag");
	$chk->use_redis($replica);
	$chk->verify("$what: on the promoted replica", timeout => 40);
	ok(wait_queue_empty($node, 'postgres', 40), "$what: queue and retry queue empty");

	# the old master comes back as the new one's replica, for the next round
	($master, $replica) = ($replica, $master);
	MeetcacheTest::restart_as_replica($replica, $master);
	ok(MeetcacheTest::wait_sentinel_replica($sen, $replica, 30),
		"$what: the old master is the new one's replica");
}

my $st = MeetcacheTest::stats($node);
note 'final stats: ' . join(', ', map { "$_=$st->{$_}" } sort keys %$st);
is($st->{retry_overflows}, 0, 'failover: the retry queue never overflowed');
is($st->{family_flushes}, 0, 'failover: no family flush');
like(slurp_file($node->logfile), qr/meetcache: the redis sentinels name 127\.0\.0\.1:\d+ as the master of "mymaster", no longer 127\.0\.0\.1:\d+/,
	'the launcher logs the master it follows after a failover');
unlike(slurp_file($node->logfile), qr/PANIC|was terminated by signal|server process .* exited with exit code/,
	'no crash in the server log');
done_testing();
