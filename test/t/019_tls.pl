# rediss://: TLS with certificates made here by openssl.  verify-full (chain,
# host name, SNI) passes for the server's names; a name the certificate does
# not carry, a certificate from another CA, or an expired one fails with
# SQLSTATE 08006 and a message naming the check, while
# meetcache.redis_tls_verify = 'ca' / 'none' relax exactly that check; client certificates for tls-auth-clients yes;
# invalidation over TLS in sync and queue mode; a frozen TLS Redis gives a
# bounded COMMIT and a cancellable cache_get; a restarted one is reconnected.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(new_node setup_schema run_sql refused bg_session bg_query
  elapsed poll_until wait_queue_empty);

my $certs = MeetcacheTest::make_tls_certs(PostgreSQL::Test::Utils::tempdir());
my $hosts = PostgreSQL::Test::Utils::tempdir() . '/hosts';
open(my $fh, '>', $hosts) or die $!;
print $fh "127.0.0.1 localhost wrong-name.test\n";
close $fh;
# c-ares reads this hosts file instead of /etc/hosts (see README)
$ENV{CARES_HOSTS} = $hosts;

my $redis = MeetcacheTest::start_tls_redis(certs => $certs);
my $tp = $redis->{tls_port};
my $node = new_node('tls', $redis,
	url => "rediss://localhost:$tp/0",
	conf => "meetcache.redis_tls_ca_file = '$certs->{'ca.crt'}'\n"
	  . "meetcache.commit_timeout = '500ms'\n");
setup_schema($node);
MeetcacheTest::make_rows($node, 'postgres', 't', 3);

# 1. verify-full, by name and by address
is((run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()'))[1], 'PONG',
	'verify-full: a host name of the certificate');
is((run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()',
	redis_url => "rediss://127.0.0.1:$tp/0"))[1], 'PONG',
	'verify-full: an IP address of the certificate');

# 2. a name the certificate does not carry
my $err = refused($node, 'postgres', 'SELECT meetcache.cache_ping()', '08006',
	'wrong host name', redis_url => "rediss://wrong-name.test:$tp/0");
like($err, qr/could not verify the TLS certificate of redis at wrong-name\.test:$tp: hostname mismatch/,
	'wrong host name: the message names the check');
is((run_sql($node, 'postgres',
	"SET meetcache.redis_tls_verify = 'ca'; SELECT meetcache.cache_ping()",
	redis_url => "rediss://wrong-name.test:$tp/0"))[1], 'PONG',
	'wrong host name: verify = ca accepts it');

# 3. a CA that did not sign the server's certificate; the system's store
$err = refused($node, 'postgres',
	"SET meetcache.redis_tls_ca_file = '$certs->{'otherca.crt'}'; SELECT meetcache.cache_ping()",
	'08006', 'another CA');
like($err, qr/could not verify the TLS certificate of redis at localhost:$tp: (unable to get local issuer certificate|self-signed certificate)/,
	'another CA: the message names the check');
refused($node, 'postgres',
	"SET meetcache.redis_tls_ca_file = ''; SELECT meetcache.cache_ping()",
	'08006', 'the system trust store does not know the test CA');
is((run_sql($node, 'postgres',
	"SET meetcache.redis_tls_ca_file = '$certs->{'otherca.crt'}'; SET meetcache.redis_tls_verify = 'none'; SELECT meetcache.cache_ping()"))[1],
	'PONG', 'another CA: verify = none accepts it');
my $other = MeetcacheTest::start_tls_redis(certs => $certs, cert => 'other');
refused($node, 'postgres', 'SELECT meetcache.cache_ping()', '08006',
	'a server certificate from another CA',
	redis_url => "rediss://localhost:$other->{tls_port}/0");
$err = refused($node, 'postgres', 'SELECT meetcache.cache_ping()', '08006',
	'plain TCP to a TLS port', redis_url => "redis://127.0.0.1:$tp/0");

# 3b. a server certificate of the test's CA whose validity ended in 2020;
# a hang would end in statement_timeout's SQLSTATE 57014, not 08006
my $expired = MeetcacheTest::start_tls_redis(certs => $certs, cert => 'expired');
my $eurl = "rediss://localhost:$expired->{tls_port}/0";
my $ecmd = "SET meetcache.connect_timeout = '60s'; SET statement_timeout = '20s'; "
  . 'SELECT meetcache.cache_ping()';
$err = refused($node, 'postgres', $ecmd, '08006', 'an expired server certificate',
	redis_url => $eurl);
like($err, qr/could not verify the TLS certificate of redis at localhost:$expired->{tls_port}: certificate has expired/,
	'expired server certificate: the message names the check');
is((run_sql($node, 'postgres', "SET meetcache.redis_tls_verify = 'none'; SELECT meetcache.cache_ping()",
	redis_url => $eurl))[1], 'PONG', 'expired server certificate: verify = none accepts it');

# 4. client certificates
my $mtls = MeetcacheTest::start_tls_redis(certs => $certs, auth_clients => 'yes');
my $murl = "rediss://localhost:$mtls->{tls_port}/0";
$err = refused($node, 'postgres', 'SELECT meetcache.cache_ping()', '08006',
	'tls-auth-clients yes without a client certificate', redis_url => $murl);
like($err, qr/TLS error with redis at localhost:\d+/, 'no client certificate: a TLS error');
is((run_sql($node, 'postgres',
	"SET meetcache.redis_tls_cert_file = '$certs->{'client.crt'}'; "
	  . "SET meetcache.redis_tls_key_file = '$certs->{'client.key'}'; SELECT meetcache.cache_ping()",
	redis_url => $murl))[1], 'PONG', 'a client certificate is accepted');
$err = refused($node, 'postgres',
	"SET meetcache.redis_tls_cert_file = '$certs->{'client.crt'}'; "
	  . "SET meetcache.redis_tls_key_file = '$certs->{'other.key'}'; SELECT meetcache.cache_ping()",
	'F0000', 'a key that does not match the certificate', redis_url => $murl);
unlike($err, qr/BEGIN|PRIVATE/, 'no key material in the message');

# 5. invalidation over TLS, sync and queue
for my $mode (qw(sync queue))
{
	my @k = ("meeting:mt1", "meeting:invite:inv-mt1", "meetings:user:ut1");
	$redis->set_keys(@k);
	my ($rc, $out, $e) = run_sql($node, 'postgres',
		"UPDATE meetings SET title = '$mode' WHERE id = 'mt1'", delivery => $mode);
	is($rc, 0, "$mode: the update commits");
	unlike($e, qr/WARNING/, "$mode: delivered without a warning");
	ok(poll_until(20, sub { !$redis->existing(@k) }), "$mode: the keys are gone over TLS");
}
ok(wait_queue_empty($node), 'the queue drained over TLS');

# 6. a frozen TLS Redis
my $s = bg_session($node);
is(bg_query($s, 'SELECT meetcache.cache_ping()'), 'PONG', 'a session connected over TLS');
$redis->set_keys('meeting:mt2');
$redis->freeze;
my ($t, $out2, $e2) = elapsed(sub {
	bg_query($s, "SET meetcache.delivery = 'sync'; UPDATE meetings SET title = 'frozen' WHERE id = 'mt2'")
});
cmp_ok($t, '<', 5, 'frozen TLS redis: the commit returns within 5s');
unlike($e2 // '', qr/ERROR|FATAL|PANIC/, 'frozen TLS redis: the commit stands');
($t, $out2, $e2) = elapsed(sub {
	bg_query($s, "SET statement_timeout = '300ms'; SET meetcache.command_timeout = '60s'; SELECT meetcache.cache_get('k')")
});
like($e2, qr/canceling statement due to statement timeout/, 'frozen TLS redis: cache_get is cancelled');
cmp_ok($t, '<', 5, 'frozen TLS redis: cache_get returns within 5s');
($t) = elapsed(sub {
	run_sql($node, 'postgres', "SET meetcache.connect_timeout = '300ms'; SELECT meetcache.cache_ping()",
		redis_url => "rediss://127.0.0.1:$tp/0")
});
cmp_ok($t, '<', 5, 'frozen TLS redis: a TLS handshake gives up at connect_timeout');
my $ret;
($t, $ret, $out2, $e2) = elapsed(sub {
	run_sql($node, 'postgres', "SET meetcache.connect_timeout = '60s'; SET statement_timeout = '300ms'; SELECT meetcache.cache_ping()")
});
like($e2, qr/canceling statement due to statement timeout/,
	'frozen TLS redis: a new backend\'s TLS handshake is cancelled');
cmp_ok($t, '<', 5, 'frozen TLS redis: the cancelled handshake returns within 5s');
$redis->thaw;
ok(poll_until(20, sub { !$redis->existing('meeting:mt2') }),
	'after the thaw the worker deletes the frozen commit\'s key');
bg_query($s, 'RESET statement_timeout; RESET meetcache.command_timeout');

# 7. a restarted TLS Redis: the same session reconnects
$redis->restart;
is(bg_query($s, 'SELECT meetcache.cache_ping()'), 'PONG', 'after a restart the session reconnects');
$redis->set_keys('meeting:mt3');
bg_query($s, "UPDATE meetings SET title = 'again' WHERE id = 'mt3'");
ok(poll_until(20, sub { !$redis->existing('meeting:mt3') }), 'after a restart: invalidation over TLS');
$s->quit;

unlike(PostgreSQL::Test::Utils::slurp_file($node->logfile), qr/PANIC|server process .* was terminated/,
	'no crash in the server log');
# the whole invalidation matrix, both schemas, over TLS
for my $variant (qw(snake camel))
{
	my ($ok, $diff) = MeetcacheTest::run_matrix($node, $variant);
	ok($ok, "the invalidation matrix ($variant) over TLS gives pg_regress's expected output")
	  or diag($diff);
}
done_testing();
