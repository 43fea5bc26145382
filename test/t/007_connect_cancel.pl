# A query cancelled while meetcache is still connecting (a TCP connect that
# hangs because the listener's accept queue is full) must leave no
# half-open connection behind: once a real Redis answers on that same
# address, the same backend reconnects and works.  Before the fix the
# backend reused the half-open socket, with no reply reader and no
# handshake, and crashed (SIGSEGV, cluster crash-restart).
use strict;
use warnings;
use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use MeetcacheTest qw(start_redis new_node bg_session bg_query);

# The backend first has a working connection to Redis at 127.0.0.1:P.
my $redis = start_redis();
my $port = $redis->port;
my $node = new_node('connect_cancel', $redis);
$node->safe_psql('postgres', 'CREATE EXTENSION meetcache');
my $s = bg_session($node);
my $pid = bg_query($s, 'SELECT pg_backend_pid()');
is(bg_query($s, 'SELECT meetcache.cache_ping()'), 'PONG', 'connected to Redis at port P');

# Redis goes away, and port P becomes a listener that never accepts, its
# accept queue filled: further SYNs go unanswered, so a connect() hangs.
$redis->stop;
my $listener = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => $port,
	Listen => 0,
	Proto => 'tcp',
	ReuseAddr => 1) or die "listen on $port: $!";
my @fill;
for (1 .. 8)
{
	my $c = IO::Socket::INET->new(
		PeerAddr => '127.0.0.1',
		PeerPort => $port,
		Proto => 'tcp',
		Blocking => 0);
	push @fill, $c if $c;
}
my $t0 = time;
my $probe = IO::Socket::INET->new(
	PeerAddr => '127.0.0.1',
	PeerPort => $port,
	Proto => 'tcp',
	Timeout => 1);
if ($probe)
{
	plan skip_all => 'this kernel accepted a connection past the full backlog; '
	  . 'cannot make connect() hang here';
}
note sprintf('a probe connect hung for %.1fs, as needed', time - $t0);

# The dead connection fails, meetcache reconnects to the same URL, the
# connect hangs, and statement_timeout cancels it half way.
bg_query($s, 'SET meetcache.connect_timeout = 10000');
bg_query($s, 'SET statement_timeout = 500');
my ($out, $err) = bg_query($s, 'SELECT meetcache.cache_ping()');
like($err, qr/canceling statement due to statement timeout/,
	'cache_ping cancelled by statement_timeout while reconnecting');

# Redis is back at the same address; the URL never changed.
close($_) for @fill;
close($listener);
$redis->start;
bg_query($s, 'RESET statement_timeout');
($out, $err) = bg_query($s, 'SELECT meetcache.cache_ping()');
is($out, 'PONG', 'the same backend reconnects and gets PONG');
is($err, '', 'without error');
is(bg_query($s, 'SELECT pg_backend_pid()'), $pid, 'still the same backend: no crash');
is(bg_query($s, "SELECT meetcache.cache_set('k', '1', 60)"), '', 'cache_set works');
is($redis->cli('GET', 'k'), '1', 'the value reached Redis');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server is up');
unlike(slurp_file($node->logfile), qr/terminated by signal/,
	'no backend was terminated by a signal');

$s->quit;
done_testing();
