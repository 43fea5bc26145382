# The cache functions in a shared database (issue 8), each case run as an
# unprivileged role where that matters: mc_login (LOGIN only) and mc_app
# (LOGIN, EXECUTE on the cache functions, owner of schema app).
#
#   a. reserved keys: no function that takes a key or a pattern accepts the
#      lease namespace "mc-lease:", as given or after meetcache.key_prefix,
#      so a role cannot poison a key's fills with a fake lease (22023);
#   b. cache_keys with a huge max_keys on 300k keys: bounded round trips,
#      each under its own command_timeout;
#   c. stats(), cluster_stats() and lookup_stats() only for superusers and pg_read_all_stats
#      (42501 with a GRANT hint); stats_reset() only by GRANT;
#   d. the query of cache_get_or_set cannot write: plpgsql INSERT, nextval,
#      lo_create, lo_unlink, lo_from_bytea, a temporary table (25006), and
#      nothing it did survives;
#   e. Redis values in error details: control and invalid bytes as \xNN,
#      never a multibyte character cut in two.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema run_sql);

my $redis = start_redis();
my $node = new_node('attack_cache', $redis, log_statement => 'none');
setup_schema($node);

my @cache_fns = (
	'meetcache.cache_get(text)', 'meetcache.cache_set(text, jsonb, integer)',
	'meetcache.cache_del(text[])', 'meetcache.cache_del_pattern(text)',
	'meetcache.cache_exists(text)', 'meetcache.cache_ttl(text)',
	'meetcache.cache_keys(text, integer)',
	'meetcache.cache_get_or_set(text, text, integer, text[])');
$node->safe_psql('postgres', "
CREATE ROLE mc_login LOGIN;
CREATE ROLE mc_app LOGIN;
CREATE ROLE mc_monitor LOGIN IN ROLE pg_read_all_stats;
GRANT EXECUTE ON FUNCTION " . join(', ', @cache_fns) . " TO mc_app;
CREATE SCHEMA app AUTHORIZATION mc_app;
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1\@x');
INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES ('m1', 't1', 'u1', 'inv-m1', 'ENDED');
GRANT SELECT ON meetings TO mc_app;
");

# psql as $user, going on after errors; returns (stdout, stderr, sqlstate
# of the first error or '')
sub run_as
{
	my ($user, $sql) = @_;
	my (undef, $out, $err) = run_sql($node, 'postgres', $sql,
		user => $user, verbose => 1, on_error_stop => 0, timeout => 120);
	my ($state) = $err =~ /ERROR:  ([0-9A-Z]{5}):/;
	return ($out, $err, $state // '');
}

#################### a. reserved keys
my $fake = 'mc-lease:u:{meeting:m1}';

# the attack: a fake lease for meeting:m1; its next fill must still cache
{
	my ($out, $err, $state) = run_as('mc_app',
		"SELECT meetcache.cache_set('$fake', '\"fake\"', 600);\n"
		  . "SELECT meetcache.cache_get_or_set('$fake', 'SELECT 1', 600)");
	is($state, '22023', 'a fake lease for meeting:m1 is refused');
	($out, $err, $state) = run_as('postgres',
		"SET meetcache.lease_wait = 300;\n"
		  . "SELECT meetcache.cache_get_or_set('meeting:m1', 'SELECT title FROM meetings WHERE id = \$1', 600, 'm1');\n"
		  . "SELECT meetcache.cache_exists('meeting:m1')");
	is($out, "\"t1\"\nt", 'the next fill of meeting:m1 is cached');
	$redis->cli('DEL', 'meeting:m1');
}

my %calls = (
	cache_get => "SELECT meetcache.cache_get('%s')",
	cache_set => "SELECT meetcache.cache_set('%s', '\"fake\"', 600)",
	cache_del => "SELECT meetcache.cache_del('ok:1', '%s')",
	cache_exists => "SELECT meetcache.cache_exists('%s')",
	cache_ttl => "SELECT meetcache.cache_ttl('%s')",
	cache_get_or_set => "SELECT meetcache.cache_get_or_set('%s', 'SELECT 1', 600)");
for my $fn (sort keys %calls)
{
	my ($out, $err, $state) = run_as('mc_app', sprintf($calls{$fn}, $fake));
	is($state, '22023', "$fn refuses a lease key");
	like($err, qr/cache key "\Q$fake\E" is in the reserved namespace "mc-lease:".*HINT:/s,
		"$fn: clear message and hint");
}
for my $pat ('mc-lease:*', 'mc-lease:u:{meeting:*}', 'mc\-lease:*')
{
	for my $sql ("SELECT meetcache.cache_del_pattern('%s')",
		"SELECT count(*) FROM meetcache.cache_keys('%s')")
	{
		my ($out, $err, $state) = run_as('mc_app', sprintf($sql, $pat));
		is($state, '22023', sprintf("%s refused", sprintf($sql, $pat)));
	}
}
is($redis->cli('EXISTS', $fake), '0', 'no lease key was written');

# the full key counts: with key_prefix 'mc-', 'lease:...' is a lease key
$node->safe_psql('postgres', "ALTER ROLE mc_app SET meetcache.key_prefix = 'mc-'");
for my $sql ("SELECT meetcache.cache_set('lease:u:{meeting:m1}', '\"fake\"', 600)",
	"SELECT meetcache.cache_del('lease:u:{meeting:m1}')",
	"SELECT meetcache.cache_del_pattern('lease:*')")
{
	my ($out, $err, $state) = run_as('mc_app', $sql);
	is($state, '22023', "key_prefix 'mc-': $sql refused");
}
$node->safe_psql('postgres', 'ALTER ROLE mc_app RESET meetcache.key_prefix');
is($redis->cli('EXISTS', $fake), '0', 'still no lease key');

# names near the namespace are ordinary keys
{
	my ($out, $err, $state) = run_as('mc_app',
		"SELECT meetcache.cache_set('mc-leases:x', '1', 60), meetcache.cache_set('x:mc-lease:', '1', 60);\n"
		  . "SELECT count(*) FROM meetcache.cache_keys('mc-*');\n"
		  . "SELECT meetcache.cache_del_pattern('mc-leases:*')");
	is($state, '', 'mc-leases:x, x:mc-lease: and the pattern mc-* are allowed');
	is($out, "|\n1\n1", 'and work');
}


#################### b. cache_keys on a big keyspace
{
	$redis->set_many(map { "big:$_" } $_ * 10_000 + 1 .. $_ * 10_000 + 10_000) for 0 .. 29;
	# a deadline that one pipeline of 900k commands (300k keys) cannot meet
	# on this machine, and that a chunk of 1,000 keys meets many times over
	$node->safe_psql('postgres', 'ALTER ROLE mc_app SET meetcache.command_timeout = 150');
	my ($out, $err, $state) = run_as('mc_app',
		"SELECT count(*), count(DISTINCT key), min(ttl) > 0 FROM meetcache.cache_keys('big:*', 100000000)");
	$node->safe_psql('postgres', 'ALTER ROLE mc_app RESET meetcache.command_timeout');
	is($state, '', 'cache_keys with max_keys 100000000 on 300k keys works')
	  or diag $err;
	is($out, '300000|300000|t', 'and lists each key once, with its TTL');
	($out, $err, $state) = run_as('mc_app',
		"SELECT count(*) FROM meetcache.cache_keys('big:1*', 5)");
	is($out, '5', 'max_keys still bounds the result');
	$redis->cli('FLUSHALL');
}

#################### c. stats() and stats_reset()
{
	my ($out, $err, $state) = run_as('mc_login', 'SELECT keys_queued FROM meetcache.stats()');
	is($state, '42501', 'stats(): a LOGIN-only role is refused');
	like($err, qr/permission denied for function meetcache\.stats\(\)/, 'stats(): message');
	like($err, qr/HINT:  .*GRANT pg_read_all_stats TO mc_login;/, 'stats(): the hint names the GRANT');
	($out, $err, $state) = run_as('mc_app', 'SELECT * FROM meetcache.stats()');
	is($state, '42501', 'stats(): EXECUTE on the cache functions is not enough');
	($out, $err, $state) = run_as('mc_monitor', 'SELECT scope FROM meetcache.stats()');
	is("$state|$out", '|cluster', 'stats(): a member of pg_read_all_stats reads it');
	($out, $err, $state) = run_as('postgres', 'SELECT scope FROM meetcache.stats()');
	is("$state|$out", '|cluster', 'stats(): a superuser reads it');
	# the Redis Cluster columns, the same way
	($out, $err, $state) = run_as('mc_login', 'SELECT moved_redirects FROM meetcache.cluster_stats()');
	is($state, '42501', 'cluster_stats(): a LOGIN-only role is refused');
	like($err, qr/permission denied for function meetcache\.cluster_stats\(\)/, 'cluster_stats(): message');
	($out, $err, $state) = run_as('mc_monitor', 'SELECT slot_map_loads >= 0 FROM meetcache.cluster_stats()');
	is("$state|$out", '|t', 'cluster_stats(): a member of pg_read_all_stats reads it');
	# and the lookups' columns
	($out, $err, $state) = run_as('mc_login', 'SELECT lookups_settled FROM meetcache.lookup_stats()');
	is($state, '42501', 'lookup_stats(): a LOGIN-only role is refused');
	like($err, qr/permission denied for function meetcache\.lookup_stats\(\)/, 'lookup_stats(): message');
	($out, $err, $state) = run_as('mc_monitor', 'SELECT lookup_handoffs >= 0 FROM meetcache.lookup_stats()');
	is("$state|$out", '|t', 'lookup_stats(): a member of pg_read_all_stats reads it');

	($out, $err, $state) = run_as('mc_monitor', 'SELECT meetcache.stats_reset()');
	is($state, '42501', 'stats_reset(): not for pg_read_all_stats');
	$node->safe_psql('postgres', 'GRANT EXECUTE ON FUNCTION meetcache.stats_reset() TO mc_monitor');
	($out, $err, $state) = run_as('mc_monitor',
		"SELECT meetcache.stats_reset();\nSELECT stats_reset > now() - interval '1 minute' FROM meetcache.stats()");
	is("$state|$out", "|\nt", 'stats_reset(): for a role granted EXECUTE on it');
}

#################### d. the query cannot write
{
	my ($out, $err, $state) = run_as('mc_app', q{
CREATE TABLE app.t (a int);
CREATE SEQUENCE app.s;
CREATE FUNCTION app.ins() RETURNS int LANGUAGE plpgsql AS $$ BEGIN INSERT INTO app.t VALUES (1); RETURN 1; END $$;
CREATE FUNCTION app.tmp_ins() RETURNS int LANGUAGE plpgsql AS $$ BEGIN INSERT INTO tmp VALUES (1); RETURN 1; END $$;
SELECT lo_create(4242);
});
	is($state, '', 'mc_app made its table, sequence, function and large object') or diag $err;

	my $lo_count = 'SELECT count(*) FROM pg_largeobject_metadata';
	my $lo0 = $node->safe_psql('postgres', $lo_count);
	my %writes = (
		'plpgsql INSERT' => 'SELECT app.ins()',
		'nextval' => "SELECT nextval('app.s')",
		'lo_create' => 'SELECT lo_create(0)',
		'lo_unlink' => 'SELECT lo_unlink(4242)',
		'lo_from_bytea' => q{SELECT lo_from_bytea(0, 'x')},
		'a temporary table' => 'SELECT app.tmp_ins()');
	my $i = 0;
	for my $what (sort keys %writes)
	{
		$i++;
		my $q = $writes{$what} =~ s/'/''/gr;
		($out, $err, $state) = run_as('mc_app',
			"CREATE TEMP TABLE tmp (a int);\n"
			  . "SELECT meetcache.cache_get_or_set('ro:$i', '$q', 60);\n"
			  . "SELECT count(*) FROM tmp");
		is($state, '25006', "$what in the query: refused as a write in a read-only transaction")
		  or diag $err;
		like($out, qr/^0$/m, "$what: the temporary table stayed empty");
	}
	is($node->safe_psql('postgres', 'SELECT count(*) FROM app.t'), '0', 'app.t is empty');
	is($node->safe_psql('postgres', "SELECT last_value || ':' || is_called FROM app.s"), '1:false',
		'the sequence never advanced');
	is($node->safe_psql('postgres', $lo_count), $lo0, 'no large object created or removed');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 4242'),
		'1', 'large object 4242 survives');
	is($redis->cli('EXISTS', 'ro:1'), '0', 'nothing cached for a refused query');

	# an ordinary query still works, and is cached
	($out, $err, $state) = run_as('mc_app',
		"SELECT meetcache.cache_get_or_set('ro:ok', 'SELECT count(*) FROM meetings', 60)");
	is("$state|$out", '|1', 'a query that only reads works');
	is($redis->cli('GET', 'ro:ok'), '1', 'and is cached');
}

#################### e. Redis values in error details
{
	my $euro = "\xe2\x82\xac";
	my $bad = 0;
	my $seen = 0;
	# the character straddles the cut at some n, whatever the bound
	for my $n (20 .. 45)
	{
		$redis->cli('SET', "bad:$n", "\x01\x1b" . ('a' x $n) . $euro . 'tail');
		my ($out, $err, $state) = run_as('mc_app', "SELECT meetcache.cache_get('bad:$n')");
		my ($detail) = $err =~ /^(DETAIL:.*)$/m;
		$detail //= '';
		my $copy = $detail;
		my $valid = utf8::decode($copy);
		$seen++ if $detail =~ /^DETAIL:  The value starts with: \\x01\\x1baaaa/;
		$bad++, diag("n=$n: $detail") if $state ne '22P02' || !$valid || $detail =~ /[\x00-\x1f\x7f]/;
	}
	is($bad, 0, 'error details are valid UTF-8, without control bytes, for every cut point');
	is($seen, 26, 'control bytes are shown as \\xNN');

	$redis->cli('SET', 'bad:inv', "ab\xff\xe2\x82cd\x7f");
	my ($out, $err, $state) = run_as('mc_app',
		"SELECT meetcache.cache_get_or_set('bad:inv', 'SELECT 1', 60)");
	like($err, qr/^DETAIL:  The value starts with: ab\\xff\\xe2\\x82cd\\x7f$/m,
		'bytes invalid in the encoding become \\xNN (cache_get_or_set hit)');
}

done_testing();
