# Redis Cluster: meetcache.redis_url = 'redis-cluster://...'.
#
#   - URL forms: accepted (one or several seeds, /0, user, rediss-cluster://)
#     and refused (a database other than 0, a password, too many seeds, bad
#     port), never echoing the URL.
#   - Invalidation in sync and queue mode: the keys of one change are spread
#     over several masters (CROSSSLOT if sent as one UNLINK), and a family
#     flush (TRUNCATE) deletes keys on every master.
#   - SQL functions routed by slot: cache_set/get/exists/ttl/del (keys of
#     several masters in one call), get_or_set with leases, cache_keys and
#     cache_del_pattern over every master, cache_ping.
#   - Redirects: a slot being migrated (ASK) and migrated (MOVED) under a
#     session that holds the old slot map: no stale key.
#   - meetcache.stats: the redirects followed (MOVED, ASK) and slot maps
#     loaded are counted; the topology shows the 3 masters and their slots
#     (16384 in all), after the failovers the promoted replicas.
#   - cache_del while its slot migrates (its key moved, its lease on the
#     source or nowhere: -TRYAGAIN) is retried until the migration ends.
#   - A sync commit while a slot migrates (its key moved without a lease,
#     or nowhere: its key-and-lease UNLINK gets -TRYAGAIN) sends that key's
#     lease and key one name at a time: delivered, no retry-queue entry.
#   - A session that switches meetcache.redis_url from the cluster to one
#     server closes its connections to the masters at its next cache call.
#   - Failover: a master killed under a pgbench write load, once per
#     delivery mode (sync+queue, queue, sync): zero failed transactions,
#     and every committed change's keys are gone once its replica is
#     promoted; untouched keys survive.  The old master rejoins as a replica.
#
# 3 masters + 3 replicas on 127.0.0.1, --cluster-node-timeout 2000.  Every
# wait is bounded polling.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(new_node setup_schema run_sql refused poll_sql poll_until
  bg_session bg_query wait_queue_empty run_load finish_load load_options no_secret);

my $rc = MeetcacheTest::start_redis_cluster(masters => 3, replicas => 1);
my $node = new_node(
	'cluster', undef,
	url => $rc->url,
	log_statement => 'none',
	conf => "meetcache.commit_timeout = '500ms'\n"
	  . "meetcache.retry_buffer = '16MB'\n");
setup_schema($node);

# the masters serving a list of keys
sub masters_of
{
	my %m = map { $rc->master_of($_)->port => 1 } @_;
	return scalar keys %m;
}

###########################################################################
# URL forms
for my $u (
	'redis-cluster://127.0.0.1:7000',
	'redis-cluster://127.0.0.1:7000,[::1]:7001,localhost/0',
	'redis-cluster://app@127.0.0.1:7000,127.0.0.1:7001/',
	'rediss-cluster://127.0.0.1:7000,127.0.0.1:7001')
{
	my ($r, $out, $err) = run_sql($node, 'postgres', "SET meetcache.redis_url = '$u'");
	is($r, 0, "URL accepted: $u") or diag($err);
}
for my $c (
	[ 'redis-cluster://127.0.0.1:7000/3', 'database 0 only' ],
	[ 'redis-cluster://u:sekrit-pw@127.0.0.1:7000', 'carries a password' ],
	[ 'redis-cluster://127.0.0.1:0', 'port must be' ],
	[ 'redis-cluster://127.0.0.1:7000/x', 'database must be' ],
	[ 'redis-cluster://' . join(',', map { "h$_" } 1 .. 9), 'more than 8 seed nodes' ])
{
	my ($u, $why) = @$c;
	my $err = refused($node, 'postgres', "SET meetcache.redis_url = '$u'", '22023', "URL $u");
	like($err, qr/DETAIL:  .*\Q$why\E/, "URL $u: says why ($why)");
	no_secret($err, "URL $u: the error", 'sekrit-pw');
}

###########################################################################
# Invalidation: the keys of one change live on several masters
$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) SELECT 'u' || g, 'U', 'u' || g || '@x' FROM generate_series(1, 40) g;
INSERT INTO meetings (id, title, host_id, invite_code, status)
  SELECT 'm' || g, 't0', 'u' || g, 'inv-m' || g, 'ENDED' FROM generate_series(1, 40) g;});
{
	my $chk = MeetcacheTest::Checker->new($node, $rc);
	for my $c ([ 'sync', 'm1', 'm11' ], [ 'queue', 'm2', 'm12' ], [ 'sync+queue', 'm3', 'm13' ])
	{
		my ($mode, $id, $untouched) = @$c;
		my @k = $chk->seed($chk->keys_of('meetings', "t.id = '$id'"));
		my @other = $chk->seed($chk->keys_of('meetings', "t.id = '$untouched'"));
		cmp_ok(masters_of(@k), '>=', 2, "$mode: the keys of one change are on several masters");
		my ($r, $out, $err) = run_sql($node, 'postgres',
			"UPDATE meetings SET title = 't1' WHERE id = '$id'", delivery => $mode);
		is($err, '', "$mode on a cluster: commit without warning");
		$chk->must_delete(@k);
		$chk->must_survive(@other);
		$chk->verify("$mode on a cluster");
	}

	# a change of many rows at once: keys on every master
	my @k = $chk->seed($chk->keys_of('meetings', "t.id IN ('m5', 'm6', 'm7', 'm8', 'm9')"));
	is(masters_of(@k), 3, 'many rows: their keys are on all three masters');
	my ($r, $out, $err) = run_sql($node, 'postgres',
		"UPDATE meetings SET title = 't1' WHERE id IN ('m5', 'm6', 'm7', 'm8', 'm9')",
		delivery => 'sync');
	is($err, '', 'many rows: commit without warning');
	$chk->must_delete(@k);
	$chk->verify('many rows on a cluster');

	# a family flush (TRUNCATE) SCANs every master
	my @fam = $chk->seed(map { "meeting:flush$_" } 1 .. 30);
	my @keep = $chk->seed(map { "unrelated:flush$_" } 1 .. 10);
	is(masters_of(@fam), 3, 'flush: the family has keys on all three masters');
	($r, $out, $err) = run_sql($node, 'postgres',
		'CREATE TABLE scratch AS SELECT * FROM meetings; TRUNCATE meetings CASCADE;'
		  . ' INSERT INTO meetings SELECT * FROM scratch; DROP TABLE scratch;',
		delivery => 'sync');
	$chk->must_delete(@fam);
	$chk->must_survive(@keep);
	$chk->verify('TRUNCATE on a cluster: every master flushed');
}

###########################################################################
# SQL functions, routed by slot
{
	my @keys = map { "sql:k$_" } 1 .. 12;
	is(masters_of(@keys), 3, 'the SQL keys are on all three masters');
	$node->safe_psql('postgres',
		join('', map { "SELECT meetcache.cache_set('$_', '{\"a\": 1}', 600);\n" } @keys));
	is($node->safe_psql('postgres',
			'SELECT count(*) FROM unnest(ARRAY[' . join(',', map { "'$_'" } @keys)
			  . ']) k WHERE meetcache.cache_get(k) = \'{"a": 1}\''),
		'12', 'cache_set/cache_get on every master');
	is($rc->cli('GET', 'sql:k7'), '{"a":1}', 'the value is in the cluster');
	is($node->safe_psql('postgres', q{SELECT meetcache.cache_exists('sql:k3'), meetcache.cache_ttl('sql:k3') > 500}),
		't|t', 'cache_exists and cache_ttl');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM meetcache.cache_keys(\'sql:*\')'),
		'12', 'cache_keys sees the keys of every master');
	is($node->safe_psql('postgres', q{SELECT meetcache.cache_del('sql:k1', 'sql:k2', 'sql:k3', 'sql:k4', 'nosuch')}),
		'4', 'cache_del of keys on several masters');
	is($node->safe_psql('postgres', q{SELECT meetcache.cache_del_pattern('sql:*')}),
		'8', 'cache_del_pattern over every master');
	is(scalar($rc->existing_many(@keys)), 0, 'no key is left on any master');
	is($node->safe_psql('postgres', 'SELECT meetcache.cache_ping()'), 'PONG', 'cache_ping');

	# get_or_set with leases, on keys of every master
	my @gk = map { "meeting:gos$_" } 1 .. 9;
	is(masters_of(@gk), 3, 'get_or_set keys are on all three masters');
	is($node->safe_psql('postgres',
			join('', map { "SELECT meetcache.cache_get_or_set('$_', 'SELECT ''{\"v\": 1}''::jsonb', 600);\n" } @gk)),
		join("\n", ('{"v": 1}') x 9), 'cache_get_or_set fills keys on every master');
	is(scalar($rc->existing_many(@gk)), 9, 'the filled keys are in the cluster');
	is(scalar($rc->existing_many(map { "mc-lease:u:{$_}" } @gk)), 0, 'no lease is left behind');
	# a lease held (set by hand, as another session would) blocks a fill
	$rc->cli('SET', 'mc-lease:u:{meeting:gos1}', 'other-token', 'PX', '60000');
	$rc->cli('DEL', 'meeting:gos1');
	my ($r, $out, $err) = run_sql($node, 'postgres',
		"SET meetcache.lease_wait = '200ms'; SELECT meetcache.cache_get_or_set('meeting:gos1', 'SELECT ''{\"v\": 2}''::jsonb', 600)");
	is($rc->cli('EXISTS', 'meeting:gos1'), '0', 'a lease held elsewhere: the value is not stored');
	$node->safe_psql('postgres', q{SELECT meetcache.cache_del('meeting:gos1')});
	is($rc->cli('EXISTS', 'mc-lease:u:{meeting:gos1}'), '0', 'cache_del cancels the lease with its key');
}

# the masters, by port, as the cluster says and as meetcache.stats shows
# them once a new session's cache call loaded the slot map
sub master_ports
{
	return join(',', sort map { $_->port } grep { $_->pid && $_->cli('ROLE') =~ /^master/ } $rc->nodes);
}

sub topology
{
	my ($out) = $node->safe_psql('postgres',
		"SELECT meetcache.cache_exists('topo:probe');\n"
		  . "SELECT cluster_nodes || '|' || cluster_topology FROM meetcache.stats");
	my (undef, $row) = split /\n/, $out;
	my ($n, $t) = split /\|/, $row // '';
	my %slots = map { /^127\.0\.0\.1:(\d+)=(\d+)$/ ? ($1 => $2) : ('?' => $_) } split /,/, $t // '';
	return ($n // '', \%slots);
}

my $redirects0 = MeetcacheTest::stats($node, 'postgres', qw(moved_redirects ask_redirects slot_map_loads));

###########################################################################
# Redirects: one session keeps its slot map while slots migrate

# the masters a slot moves between: its own and another
sub migration
{
	my ($key) = @_;
	my $from = $rc->master_of($key);
	my ($to) = grep { $_->port != $from->port && $_->cli('ROLE') =~ /^master/ } $rc->nodes;
	return ($rc->cli('CLUSTER', 'KEYSLOT', $key), $from, $to, $rc->node_id($from), $rc->node_id($to));
}

# the slot starts migrating (both nodes said OK), or is given to the target
# by every master (the migration ends)
sub migrate_begin
{
	my ($slot, $from, $to, $fid, $tid) = @_;
	my $a = $to->cli('CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $fid);
	my $b = $from->cli('CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $tid);
	return $a eq 'OK' && $b eq 'OK';
}

sub migrate_end
{
	my ($slot, $tid) = @_;
	$_->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $tid)
	  for grep { $_->cli('ROLE') =~ /^master/ } $rc->nodes;
}

# the -TRYAGAIN replies some nodes sent so far
sub tryagains
{
	my $n = 0;
	$n += $_ for map { $_->cli('INFO', 'errorstats') =~ /errorstat_TRYAGAIN:count=(\d+)/ ? $1 : 0 } @_;
	return $n;
}
{
	my $bg = bg_session($node);
	bg_query($bg, "SET meetcache.delivery = 'sync'");
	my $chk = MeetcacheTest::Checker->new($node, $rc);
	my @k = $chk->seed($chk->keys_of('meetings', "t.id IN ('m10', 'm15')"));
	# the session loads the map
	bg_query($bg, "UPDATE meetings SET title = 't1' WHERE id IN ('m10', 'm15')");
	$chk->must_delete(@k);
	$chk->verify('redirects: before the migrations');

	# MOVED: a slot migrated (keys, then ownership) behind the session's back
	my $key = 'meeting:m10';
	my ($slot, $from, $to, $fid, $tid) = migration($key);
	@k = $chk->seed($chk->keys_of('meetings', "t.id = 'm10'"));
	ok(migrate_begin($slot, $from, $to, $fid, $tid), 'MOVED: the slot migrates');
	is($from->cli('MIGRATE', '127.0.0.1', $to->port, '', '0', '5000', 'KEYS', $key), 'OK',
		'MOVED: the key moved to the target');
	migrate_end($slot, $tid);
	ok(poll_until(20, sub { $rc->master_of($key)->port == $to->port }), 'MOVED: the slot moved');
	my (undef, $err) = bg_query($bg, "UPDATE meetings SET title = 't3' WHERE id = 'm10'");
	is($err, '', 'MOVED: commit without warning');
	is($to->cli('EXISTS', $key), '0', 'MOVED: the key is gone from its new master at once');
	$chk->must_delete(@k);
	$chk->verify('MOVED: every key of the change');
	bg_query($bg, "SELECT meetcache.cache_set('$key', '1', 60)");
	is(scalar(bg_query($bg, "SELECT meetcache.cache_get('$key')")), '1',
		'MOVED: the SQL functions follow too');

	# ASK: a slot migrating, its key already on the target, its lease not yet
	$key = 'meeting:m15';
	($slot, $from, $to, $fid, $tid) = migration($key);
	@k = $chk->seed($chk->keys_of('meetings', "t.id = 'm15'"));
	$rc->cli('SET', "mc-lease:u:{$key}", 'a-token', 'PX', '60000');
	ok(migrate_begin($slot, $from, $to, $fid, $tid), 'ASK: the slot migrates');
	is($from->cli('MIGRATE', '127.0.0.1', $to->port, '', '0', '5000', 'KEYS', $key), 'OK',
		'ASK: the key moved to the target');
	is($from->cli('EXISTS', "mc-lease:u:{$key}"), '1', 'ASK: the lease is still on the source');
	(undef, $err) = bg_query($bg, "UPDATE meetings SET title = 't2' WHERE id = 'm15'");
	is($err, '', 'ASK: commit without warning');
	is(($to->cli_batch('ASKING', "EXISTS $key"))[1], '0', 'ASK: the key is gone from the target at once');
	# a key a migrating slot no longer holds: -ASK
	like($from->cli('EXISTS', "mc-lease:u:{$key}"), qr/^ASK /, 'ASK: its lease, on the source, too');
	$chk->must_delete(grep { $_ ne $key } @k);
	$chk->verify('ASK: every other key of the change');
	# the migration ends
	migrate_end($slot, $tid);
	ok(poll_until(20, sub { $rc->master_of($key)->port == $to->port }), 'ASK: the slot moved');
	$bg->quit;
}

###########################################################################
# meetcache.stats: redirects followed, slot maps loaded, the topology
{
	my $st = MeetcacheTest::stats($node, 'postgres', qw(moved_redirects ask_redirects slot_map_loads));
	cmp_ok($st->{$_}, '>', $redirects0->{$_}, "stats: $_ counted ($redirects0->{$_} -> $st->{$_})")
	  for qw(moved_redirects ask_redirects slot_map_loads);
	my ($n, $slots) = topology();
	is($n, '3', 'stats: cluster_nodes is 3');
	is(join(',', sort keys %$slots), master_ports(), 'stats: cluster_topology names the 3 masters');
	my $sum = 0;
	$sum += $_ for values %$slots;
	is($sum, 16384, 'stats: their slot counts add up to 16384');
	is($node->safe_psql('postgres', 'SELECT slot_map_loaded_at <= now() FROM meetcache.stats'),
		't', 'stats: slot_map_loaded_at');
}

###########################################################################
# cache_del while its slot migrates: the key moved to the target, its lease
# still on the source (the source answers -TRYAGAIN), or no lease at all
# (-ASK to the target, which answers -TRYAGAIN: not all keys there yet).
# The call waits for the migration to end, within command_timeout.
{
	my $bg = bg_session($node);
	bg_query($bg, "SET meetcache.command_timeout = '30s'");
	for my $c ([ 'lease on the source', 'sql:mig1', 1 ], [ 'no lease', 'sql:mig2', 0 ])
	{
		my ($what, $key, $lease) = @$c;
		my $lk = "mc-lease:u:{$key}";
		bg_query($bg, "SELECT meetcache.cache_set('$key', '1', 600)");
		$rc->cli('SET', $lk, 'a-token', 'PX', '60000') if $lease;
		my ($slot, $from, $to, $fid, $tid) = migration($key);
		my $t0 = tryagains($from, $to);
		ok(migrate_begin($slot, $from, $to, $fid, $tid), "cache_del mid-migration ($what): the slot migrates");
		is($from->cli('MIGRATE', '127.0.0.1', $to->port, '', '0', '5000', 'KEYS', $key), 'OK',
			"cache_del mid-migration ($what): the key moved to the target");
		my $tag = MeetcacheTest::bg_send($bg, "SELECT meetcache.cache_del('$key')");
		ok(poll_until(20, sub { tryagains($from, $to) >= $t0 + 2 }),
			"cache_del mid-migration ($what): -TRYAGAIN, sent again");
		# the migration ends
		$from->cli('MIGRATE', '127.0.0.1', $to->port, '', '0', '5000', 'KEYS', $lk) if $lease;
		migrate_end($slot, $tid);
		my ($done, $out, $err) = MeetcacheTest::bg_wait_for($bg, $tag, 40);
		ok($done, "cache_del mid-migration ($what): returns");
		is($err, '', "cache_del mid-migration ($what): no error");
		is($out, '1', "cache_del mid-migration ($what): the key was deleted");
		is(scalar($rc->existing_many($key, $lk)), 0, "cache_del mid-migration ($what): key and lease gone");
	}
	$bg->quit;
}

###########################################################################
# A key without a hash tag that contains a '}' (an e-mail address in
# user:email:{email}): its lease key mc-lease:u:{K} hashes to another slot,
# so no lease of it can exist on a cluster, and its UNLINK names the key
# alone (with the lease it got -CROSSSLOT and the key stayed).
{
	my $chk = MeetcacheTest::Checker->new($node, $rc);
	$node->safe_psql('postgres',
		q[INSERT INTO users (id, name, email) VALUES ('ubrace', 'B', 'a}b@x'), ('ubrace2', 'B', 'c}d@x')]);
	my @k = $chk->seed($chk->keys_of('users', "t.id IN ('ubrace', 'ubrace2')"));
	ok((grep { /^user:email:a\}b\@x$/ } @k), "a '}' key: user:email:a}b\@x is one of the keys");
	for my $mode ('sync', 'queue')
	{
		@k = $chk->seed(@k);
		my ($r, $out, $err) = run_sql($node, 'postgres',
			"UPDATE users SET name = 'B-$mode' WHERE id IN ('ubrace', 'ubrace2')", delivery => $mode);
		is($err, '', "a '}' key, $mode: commit without warning");
		$chk->must_delete(@k);
		$chk->verify("a '}' key, $mode on a cluster");
	}
}

# The commit path while a slot migrates: a key and its lease key go as one
# UNLINK, which the migration answers -TRYAGAIN when the key moved to the
# target and has no lease (-ASK, then -TRYAGAIN from the target), or when
# neither exists (the same).  The commit then sends that key's lease and
# key one name per UNLINK at once, instead of waiting for the migration to
# end: the sync delivery succeeds within commit_timeout, nothing goes to
# the retry queue.
{
	my $bg = bg_session($node);
	bg_query($bg, "SET meetcache.delivery = 'sync'");
	bg_query($bg, "SET meetcache.commit_timeout = '5s'");
	my $chk = MeetcacheTest::Checker->new($node, $rc);
	for my $c ([ 'key on the target, no lease', 'm20', 1 ], [ 'key nowhere', 'm21', 0 ])
	{
		my ($what, $id, $exists) = @$c;
		my $key = "meeting:$id";
		my @k = $chk->seed($chk->keys_of('meetings', "t.id = '$id'"));
		$rc->cli('DEL', $key) unless $exists;
		my ($slot, $from, $to, $fid, $tid) = migration($key);
		my $t0 = tryagains($from, $to);
		my $st0 = MeetcacheTest::stats($node, 'postgres', qw(delivery_failures handoffs));
		ok(migrate_begin($slot, $from, $to, $fid, $tid), "commit mid-migration ($what): the slot migrates");
		is($from->cli('MIGRATE', '127.0.0.1', $to->port, '', '0', '5000', 'KEYS', $key), 'OK',
			"commit mid-migration ($what): the key moved to the target")
		  if $exists;
		my (undef, $err) = bg_query($bg, "UPDATE meetings SET title = 't4' WHERE id = '$id'");
		is($err, '', "commit mid-migration ($what): commit without warning");
		cmp_ok(tryagains($from, $to), '>', $t0, "commit mid-migration ($what): the pair got -TRYAGAIN");
		is(($to->cli_batch('ASKING', "EXISTS $key"))[1], '0', "commit mid-migration ($what): the key is not on the target");
		like($from->cli('EXISTS', $key), qr/^ASK /, "commit mid-migration ($what): nor on the source");
		my $st = MeetcacheTest::stats($node, 'postgres', qw(delivery_failures handoffs));
		is_deeply($st, $st0, "commit mid-migration ($what): delivered, no failure, no hand-off");
		$chk->must_delete(grep { $_ ne $key } @k);
		$chk->verify("commit mid-migration ($what): every other key of the change");
		# the migration ends
		migrate_end($slot, $tid);
		ok(poll_until(20, sub { $rc->master_of($key)->port == $to->port }), "commit mid-migration ($what): the slot moved");
	}
	$bg->quit;
}

###########################################################################
# Switching meetcache.redis_url from the cluster to one server: the
# session's connections to the masters close at its next cache call
{
	my $single = MeetcacheTest::start_redis();
	my $bg = bg_session($node);
	# cache_keys SCANs every master
	bg_query($bg, "SELECT count(*) FROM meetcache.cache_keys('*')");
	my $pid = bg_query($bg, 'SELECT pg_backend_pid()');
	my @masters = grep { $_->pid && $_->cli('ROLE') =~ /^master/ } $rc->nodes;
	my $open = sub { scalar grep { $_->cli('CLIENT', 'LIST') =~ /name=meetcache-$pid / } @masters };
	is($open->(), 3, 'URL switch: the session has a connection to each of the 3 masters');
	bg_query($bg, "SET meetcache.redis_url = '" . $single->url . "'");
	my ($out, $err) = bg_query($bg, "SELECT meetcache.cache_set('single:k', '1', 60)");
	is($err, '', 'URL switch: a cache call on the single server');
	is($single->cli('EXISTS', 'single:k'), '1', 'URL switch: it went to the single server');
	ok(poll_until(20, sub { $open->() == 0 }), 'URL switch: no master lists the session any more');
	$bg->quit;
	$single->stop;
}

my %first_masters = map { $_ => 1 } split /,/, master_ports();

###########################################################################
# Failover, once per delivery mode: the master of a pool key killed under a
# write load; it comes back as its replica's replica for the next round
my $P = 4000;
my $h = 0;
for my $case ([ 'sync+queue', 'sq' ], [ 'queue', 'q' ], [ 'sync', 's' ])
{
	my ($mode, $tag) = @$case;
	my $what = "failover, $mode";
	$node->safe_psql('postgres', qq{
INSERT INTO users (id, name, email) SELECT 'h-' || g, 'H', 'h-' || g || '\@x' FROM generate_series($h + 1, $h + $P) g;
INSERT INTO meetings (id, title, host_id, invite_code, status)
  SELECT 'p-${tag}-' || (g - $h), 't0', 'h-' || g, 'inv-p-${tag}-' || (g - $h), 'ENDED' FROM generate_series($h + 1, $h + $P) g;
CREATE SEQUENCE seq_${tag};});
	$h += $P;
	my $chk = MeetcacheTest::Checker->new($node, $rc);
	my @pool = $chk->keys_of('meetings', "starts_with(t.id, 'p-${tag}-')");
	$chk->seed(@pool);
	my $victim = $rc->master_of($pool[0]);
	$_->cli('WAIT', '1', '10000') for grep { $_->cli('ROLE') =~ /^master/ } grep { $_->pid } $rc->nodes;
	my $r = MeetcacheTest::kill_under_load($node, $victim, $what,
		"SELECT count(*) >= 20 FROM meetings WHERE starts_with(id, 'p-${tag}-') AND title = 'done'",
		scripts => [
			[ "UPDATE meetings SET title = 'done' WHERE id = (SELECT 'p-${tag}-' || nextval('seq_${tag}'));\n", 1 ]
		],
		clients => 4,
		seconds => 6,
		rate => 300,
		options => load_options($mode));
	ok(eval { $rc->wait_ok }, "$what: the replica was promoted");
	my $done = $node->safe_psql('postgres',
		"SELECT count(*) FROM meetings WHERE starts_with(id, 'p-${tag}-') AND title = 'done'");
	cmp_ok($done, '>', 20, "$what: changes committed ($done)");
	$chk->must_delete($chk->keys_of('meetings', "starts_with(t.id, 'p-${tag}-') AND t.title = 'done'"));
	$chk->must_survive(grep { /:p-${tag}-(\d+)$/ && $1 > $done + 50 }
		  $chk->keys_of('meetings', "starts_with(t.id, 'p-${tag}-') AND t.title <> 'done'"));
	$chk->verify("$what: every committed change, on the promoted replica", timeout => 40);
	ok(wait_queue_empty($node, 'postgres', 40), "$what: queue and retry queue empty");

	# the old master rejoins (its nodes.conf) as a replica
	$victim->start;
	ok(poll_until(30, sub { $victim->cli('ROLE') =~ /^slave/ && $rc->wait_ok }),
		"$what: the old master is a replica again");
}

# the topology after the failovers: the promoted replicas
{
	my $want = master_ports();
	ok(poll_until(30, sub { join(',', sort keys %{ (topology())[1] }) eq $want }),
		"stats after the failovers: cluster_topology names the masters ($want)");
	my ($n, $slots) = topology();
	ok((grep { !$first_masters{$_} } keys %$slots), 'stats after the failovers: a promoted replica is a master');
	my $sum = 0;
	$sum += $_ for values %$slots;
	is($sum, 16384, 'stats after the failovers: the slots add up to 16384');
}

# the whole invalidation matrix, both schemas, against the cluster
for my $variant (qw(snake camel))
{
	my ($ok, $diff) = MeetcacheTest::run_matrix($node, $variant);
	ok($ok, "the invalidation matrix ($variant) on a cluster gives pg_regress's expected output")
	  or diag($diff);
}

unlike(slurp_file($node->logfile), qr/PANIC|was terminated by signal|server process .* exited with exit code/,
	'no crash in the server log');
done_testing();
