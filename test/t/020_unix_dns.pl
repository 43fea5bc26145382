# unix:// URLs (with a password and a database, invalidation in sync and queue
# mode, a Redis that went away and came back), and host names resolved by
# c-ares under the deadline: names from a hosts file (CARES_HOSTS), a name
# with several addresses, a name that no longer resolves (SQLSTATE 08006),
# and a DNS server that never answers, under which commits stay bounded and
# no transaction fails.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(new_node setup_schema run_sql refused elapsed poll_until
  wait_queue_empty write_secret_file run_load);

my $tmp = PostgreSQL::Test::Utils::tempdir();
my $hosts = "$tmp/hosts";
sub write_hosts { write_secret_file($hosts, join('', map { "$_\n" } @_), 0644); }
write_hosts('127.0.0.1 localhost redis-a.test', '127.0.0.2 redis-multi.test',
	'127.0.0.1 redis-multi.test');
# c-ares reads this hosts file instead of /etc/hosts (see README)
$ENV{CARES_HOSTS} = $hosts;

my $redis = MeetcacheTest::start_unix_redis(requirepass => 's3cret');
my $sock = $redis->{socket};
my $pwfile = "$tmp/redis.pw";
write_secret_file($pwfile, "s3cret\n");
my $node = new_node('unixdns', $redis,
	url => "unix://default\@$sock?db=2",
	conf => "meetcache.redis_password_file = '$pwfile'\n"
	  . "meetcache.commit_timeout = '500ms'\n");
setup_schema($node);
MeetcacheTest::make_rows($node, 'postgres', 'x', 5);
my @db2 = ([ -n => 2 ]);

# 1. URL forms
for ([ "unix://app:pw\@$sock", 'a password' ], [ 'unix://tmp/redis.sock', 'a relative path' ],
	[ "unix://$sock?x=1", 'an unknown parameter' ], [ "unix://$sock?password=pw", 'a password parameter' ],
	[ 'unix://' . ('/x' x 60), 'a path too long for a socket' ])
{
	my ($url, $what) = @$_;
	refused($node, 'postgres', "SET meetcache.redis_url = '$url'", '22023', "unix:// with $what");
}

# 2. Unix socket, password file and database 2
is((run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()'))[1], 'PONG', 'unix socket: connected');
is((run_sql($node, 'postgres', "SELECT meetcache.cache_set('meeting:mx9', '1'::jsonb)"))[0], 0, 'unix socket: cache_set');
is($redis->cli('-n', 2, 'EXISTS', 'meeting:mx9'), '1', 'unix socket: the key is in database 2');
for my $mode (qw(sync queue))
{
	my @k = ('meeting:mx1', 'meeting:invite:inv-mx1', 'meetings:user:ux1');
	$redis->set_keys(@db2, @k);
	my ($rc, $out, $e) = run_sql($node, 'postgres',
		"UPDATE meetings SET title = '$mode' WHERE id = 'mx1'", delivery => $mode);
	is($rc, 0, "unix socket, $mode: the update commits");
	unlike($e, qr/WARNING/, "unix socket, $mode: no warning");
	ok(poll_until(20, sub { !$redis->existing(@db2, @k) }), "unix socket, $mode: the keys are gone");
}

# 3. the server goes away (its socket file too) and comes back
$redis->stop;
my ($t, $rc, $out, $e) = elapsed(sub {
	run_sql($node, 'postgres', "UPDATE meetings SET title = 'gone' WHERE id = 'mx2'", delivery => 'sync')
});
is($rc, 0, 'unix socket gone: the commit stands');
like($e, qr/could not connect to redis at \Q$sock\E: (No such file or directory|Connection refused)/,
	'unix socket gone: the warning names the socket');
cmp_ok($t, '<', 5, 'unix socket gone: the commit returns within 5s');
$redis->start;
$redis->set_keys(@db2, 'meeting:mx3');
run_sql($node, 'postgres', "UPDATE meetings SET title = 'back' WHERE id = 'mx3'", delivery => 'sync');
ok(poll_until(20, sub { !$redis->existing(@db2, 'meeting:mx3') }), 'unix socket back: invalidation works again');

# 4. host names from the hosts file; several addresses, tried in order
my $port = $redis->port;
my %by = (url => "redis://redis-a.test:$port/2");
is((run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()', redis_url => $by{url}))[1], 'PONG',
	'a host name from the hosts file');
is((run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()',
	redis_url => "redis://redis-multi.test:$port/2"))[1], 'PONG',
	'a name with two addresses: the one that answers is used');
$redis->set_keys(@db2, 'meeting:mx4');
($rc, $out, $e) = run_sql($node, 'postgres', "UPDATE meetings SET title = 'named' WHERE id = 'mx4'",
	redis_url => $by{url}, delivery => 'sync');
unlike($e, qr/WARNING/, 'a host name: the commit delivers');
ok(!$redis->existing(@db2, 'meeting:mx4'), 'a host name: the key is gone');

# 5. a name that no longer resolves
my $nx = MeetcacheTest::start_dns_stub('nxdomain');
write_hosts('127.0.0.1 localhost');
my $err = refused($node, 'postgres', 'SELECT meetcache.cache_ping()', '08006',
	'a name that no longer resolves',
	redis_url => $by{url});
like($err, qr/could not resolve redis host "redis-a\.test"/, 'the message names the host');
$err = refused($node, 'postgres',
	"SET meetcache.redis_dns_servers = '127.0.0.1:$nx'; SELECT meetcache.cache_ping()", '08006',
	'NXDOMAIN from the DNS server', redis_url => "redis://redis-gone.test:$port/2");
like($err, qr/could not resolve redis host "redis-gone\.test": Domain name not found/,
	'NXDOMAIN: the message says so');

# 6. a DNS server that never answers
my $silent = MeetcacheTest::start_dns_stub('silent');
my $opts = "-c meetcache.redis_url=redis://redis-silent.test:$port/2 "
  . "-c meetcache.redis_dns_servers=127.0.0.1:$silent -c meetcache.delivery=sync+queue";
$redis->set_keys(@db2, 'meeting:mx5');
($t, $rc, $out, $e) = elapsed(sub {
	local $ENV{PGOPTIONS} = $opts;
	run_sql($node, 'postgres', "UPDATE meetings SET title = 'silent' WHERE id = 'mx5'")
});
is($rc, 0, 'silent resolver: the commit stands');
like($e, qr/could not resolve redis host "redis-silent\.test": no answer within the deadline/,
	'silent resolver: the warning says the resolver did not answer');
cmp_ok($t, '<', 5, 'silent resolver: the commit returns within 5s');
ok(poll_until(20, sub { !$redis->existing(@db2, 'meeting:mx5') }),
	'silent resolver: the queue row is delivered by the worker');
my $load = run_load($node,
	scripts => [ [ "UPDATE meetings SET title = 'l' || random() WHERE id = 'mx' || (1 + (random() * 4)::int);\n" ] ],
	clients => 2, seconds => 3, options => $opts);
is($load->{rc}, 0, 'silent resolver under load: pgbench ran');
cmp_ok($load->{processed} // 0, '>', 0, 'silent resolver under load: transactions committed');
is($load->{failed}, 0, 'silent resolver under load: zero failed transactions');
ok(wait_queue_empty($node, 'postgres', 60), 'silent resolver under load: the worker delivered every row');

unlike(PostgreSQL::Test::Utils::slurp_file($node->logfile), qr/PANIC|server process .* was terminated/,
	'no crash in the server log');
# the whole invalidation matrix, both schemas, over a Unix socket
for my $variant (qw(snake camel))
{
	my ($ok, $diff) = MeetcacheTest::run_matrix($node, $variant);
	ok($ok, "the invalidation matrix ($variant) over a Unix socket gives pg_regress's expected output")
	  or diag($diff);
}
done_testing();
