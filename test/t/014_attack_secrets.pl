# The Redis password is for superusers only (issue 8).  It lives in the file
# named by meetcache.redis_password_file, never in a setting: a database
# owner and a pg_read_all_settings member cannot read it from
# pg_db_role_setting, SHOW, pg_settings or pg_file_settings, and the server
# log never holds it (refused SETs, reloads).  A redis_url with a password
# is refused from every source; a password file open to others is refused.
# AUTH works from the file (requirepass and an ACL user), and a changed file
# is picked up by backends and drains.
#
# Last section: a SCAN too long for commit_timeout, on a Redis that keeps
# answering, is a delivery failure (retried), not an outage: the circuit
# breaker stays closed.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema run_sql poll_until poll_sql
  stats wait_queue_empty log_since reload_and_wait write_secret_file no_secret);

my $pw = 'Sup3rSecretA1';
my $pw2 = 'N3wSecretB22x';
my $apppw = 'AppSecretC333';
my @secrets = ($pw, $pw2, $apppw);

my $redis = start_redis(requirepass => $pw);
my $port = $redis->port;
is($redis->cli('ACL', 'SETUSER', 'app', 'on', ">$apppw", '~*', '&*', '+@all'),
	'OK', 'ACL user app created');

my $dir = PostgreSQL::Test::Utils::tempdir();
my $pwfile = "$dir/redis.pw";
write_secret_file($pwfile, "$pw\r\n");    # CRLF: both are stripped

# log_statement = none: the Cluster default (all) logs every statement's
# text, which is PostgreSQL's doing (see README "Configuration")
my $url = "redis://127.0.0.1:$port/0";
my $node = new_node('secrets', $redis,
	url => $url,
	log_statement => 'none',
	conf => "meetcache.redis_password_file = '$pwfile'\n");
setup_schema($node);
$node->safe_psql('postgres', q{
CREATE ROLE owner LOGIN;
CREATE ROLE mon LOGIN;
GRANT pg_read_all_settings, pg_monitor TO mon;
CREATE DATABASE app OWNER owner;
\c app
CREATE EXTENSION meetcache;
GRANT USAGE ON SCHEMA meetcache TO owner, mon;
\c postgres
GRANT USAGE ON SCHEMA meetcache TO owner, mon;
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1@x');
INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES ('m1', 't0', 'u1', 'inv-m1', 'ENDED');
});

# ---- AUTH from the file ----
my ($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()');
is($out, 'PONG', 'requirepass: AUTH with the password file');
$redis->set_keys('meeting:m1');
($ret, $out, $err) = run_sql($node, 'postgres', "UPDATE meetings SET title = 'a' WHERE id = 'm1'");
is($err, '', 'requirepass: commit without warning');
ok(poll_until(10, sub { !$redis->existing('meeting:m1') }), 'requirepass: the commit deleted the key');

# ---- a URL with a password is refused from every source ----
my $logpos = -s $node->logfile;
for my $bad ("redis://:$pw\@127.0.0.1:$port/0", "redis://app:$apppw\@127.0.0.1:$port/0",
	"redis://app:\@127.0.0.1:$port/0")
{
	for my $cmd ("SET meetcache.redis_url = '$bad'",
		"SET LOCAL meetcache.redis_url = '$bad'",
		"SELECT set_config('meetcache.redis_url', '$bad', false)",
		"ALTER DATABASE app SET meetcache.redis_url = '$bad'",
		"ALTER ROLE owner SET meetcache.redis_url = '$bad'",
		"ALTER ROLE owner IN DATABASE app SET meetcache.redis_url = '$bad'",
		"ALTER SYSTEM SET meetcache.redis_url = '$bad'")
	{
		(my $what = $cmd) =~ s/ = .*| '.*//;
		($ret, $out, $err) = run_sql($node, 'postgres', $cmd);
		isnt($ret, 0, "$what: a URL with a password is refused");
		like($err, qr/DETAIL:  The URL carries a password\./, "$what: the detail says why");
		like($err, qr/HINT:.*meetcache\.redis_password_file/, "$what: the hint names redis_password_file");
		no_secret($err, "$what: the error", @secrets);
	}
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, \',\') LIKE \'%redis_url%\''),
	'0', 'nothing was stored in pg_db_role_setting');
unlike(slurp_file($node->data_dir . '/postgresql.auto.conf'), qr/redis_url/,
	'nothing was written to postgresql.auto.conf');

# postgresql.conf: a reload keeps the previous URL and logs why, not the value
$node->append_conf('postgresql.conf', "meetcache.redis_url = 'redis://:$pw\@127.0.0.1:$port/0'\n");
ok(reload_and_wait($node), 'the postmaster reloaded');
ok(poll_until(20, sub { log_since($node, $logpos) =~ /contains errors/ }), 'reload: the configuration error is logged');
like(log_since($node, $logpos), qr/invalid value for parameter "meetcache.redis_url".*\n.*DETAIL:  The URL carries a password\./,
	'reload: the log says why the URL is refused');
is($node->safe_psql('postgres', 'SHOW meetcache.redis_url'), $url, 'reload: the previous URL stays');
$node->append_conf('postgresql.conf', "meetcache.redis_url = '$url'\n");
ok(reload_and_wait($node), 'the postmaster reloaded');

# per-database and per-role URLs without a password are fine
$node->safe_psql('postgres', "ALTER DATABASE app SET meetcache.redis_url = 'redis://app\@127.0.0.1:$port/0'");

# ---- what a database owner and a pg_read_all_settings member see ----
my %probe = (
	'pg_db_role_setting' => q{SELECT coalesce(string_agg(array_to_string(setconfig, ','), ';'), '') FROM pg_db_role_setting},
	'SHOW redis_url' => 'SHOW meetcache.redis_url',
	'SHOW redis_password_file' => 'SHOW meetcache.redis_password_file',
	'current_setting' => q{SELECT current_setting('meetcache.redis_url', true)},
	'pg_settings' => q{SELECT string_agg(name || '=' || coalesce(setting, '') || coalesce(reset_val, '') || coalesce(boot_val, ''), ',') FROM pg_settings WHERE name LIKE 'meetcache.%'},
	'SHOW ALL' => 'SHOW ALL',
	'pg_file_settings' => q{SELECT string_agg(coalesce(name, '') || '=' || coalesce(setting, '') || coalesce(error, ''), ',') FROM pg_file_settings},
	'pg_read_file' => "SELECT pg_read_file('$pwfile')",
	'pg_stat_activity' => q{SELECT string_agg(coalesce(query, ''), ',') FROM pg_stat_activity});
for my $who ('owner', 'mon')
{
	for my $db ('app', 'postgres')
	{
		for my $p (sort keys %probe)
		{
			($ret, $out, $err) = run_sql($node, $db, $probe{$p}, user => $who);
			no_secret("$out $err", "$who in $db: $p", @secrets);
		}
	}
	($ret, $out, $err) = run_sql($node, 'app', "SELECT pg_read_file('$pwfile')", user => $who);
	isnt($ret, 0, "$who: pg_read_file of the password file is refused");
	($ret, $out, $err) = run_sql($node, 'app', "ALTER DATABASE app SET meetcache.redis_url = 'redis://127.0.0.1:1/0'", user => $who);
	isnt($ret, 0, "$who: cannot set redis_url");
}
($ret, $out, $err) = run_sql($node, 'app', 'SHOW meetcache.redis_url', user => 'mon');
is($out, "redis://app\@127.0.0.1:$port/0", 'mon (pg_read_all_settings) sees the URL, which holds no password');
($ret, $out, $err) = run_sql($node, 'app', 'SHOW meetcache.redis_password_file', user => 'mon');
is($out, $pwfile, 'mon sees the path of the password file, not its content');
($ret, $out, $err) = run_sql($node, 'app', 'SHOW meetcache.redis_url', user => 'owner');
isnt($ret, 0, 'owner: SHOW meetcache.redis_url is refused (superuser-only)');

# ---- the password file must be owner-only ----
my $open = "$dir/open.pw";
write_secret_file($open, "$pw\n", 0644);
($ret, $out, $err) = run_sql($node, 'postgres', "ALTER SYSTEM SET meetcache.redis_password_file = '$open'");
isnt($ret, 0, 'ALTER SYSTEM: a password file with mode 0644 is refused');
like($err, qr/ERROR:  password file "\Q$open\E" of meetcache.redis_password_file cannot be used\nDETAIL:  Its permissions give access to group or others/,
	'mode 0644: the error names the problem');
no_secret($err, 'mode 0644: the error', @secrets);
($ret, $out, $err) = run_sql($node, 'postgres', "ALTER SYSTEM SET meetcache.redis_password_file = '$dir'");
like($err, qr/DETAIL:  It is not a regular file\./, 'a directory is refused');
($ret, $out, $err) = run_sql($node, 'postgres', "ALTER SYSTEM SET meetcache.redis_password_file = '$dir/missing'");
like($err, qr/DETAIL:  Could not open it: No such file or directory\./, 'a missing file is refused');
write_secret_file("$dir/empty.pw", "\n");
($ret, $out, $err) = run_sql($node, 'postgres', "ALTER SYSTEM SET meetcache.redis_password_file = '$dir/empty.pw'");
like($err, qr/DETAIL:  Its first line, the password, is empty\./, 'an empty password is refused');
($ret, $out, $err) = run_sql($node, 'postgres', "SET meetcache.redis_password_file = '$pwfile'");
isnt($ret, 0, 'SET of redis_password_file is refused (postgresql.conf or ALTER SYSTEM only)');
unlike(slurp_file($node->data_dir . '/postgresql.auto.conf'), qr/redis_password_file/,
	'nothing was written to postgresql.auto.conf');
# the configured file opened to others: refused at the next connection
chmod 0644, $pwfile;
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()');
isnt($ret, 0, 'the configured file made world-readable: cache_ping fails');
like($err, qr/cannot be used\nDETAIL:  Its permissions give access to group or others/,
	'the configured file made world-readable: the error names the problem');
no_secret($err, 'world-readable file: the error', @secrets);
chmod 0600, $pwfile;
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()');
is($out, 'PONG', 'mode 0600 again: PONG');

# a server started with a password in its URL warns, says why, and uses the default
{
	my $other = PostgreSQL::Test::Cluster->new('badurl');
	$other->init;
	$other->append_conf('postgresql.conf',
		"shared_preload_libraries = 'meetcache'\nmeetcache.redis_url = 'redis://:$pw\@127.0.0.1:$port/0'\n"
		  . "meetcache.redis_password_file = '$open'\n");
	$other->start;
	my $olog = slurp_file($other->logfile);
	like($olog, qr/WARNING:  invalid value for parameter "meetcache.redis_url"\n.*DETAIL:  The URL carries a password\./,
		'start-up: the log says why the URL is refused');
	like($olog, qr/WARNING:  password file "\Q$open\E" of meetcache.redis_password_file cannot be used\n.*DETAIL:  Its permissions/,
		'start-up: the log says why the password file is refused');
	is($other->safe_psql('postgres', 'SHOW meetcache.redis_url'), 'redis://127.0.0.1:6379/0',
		'start-up: the default URL is used');
	is($other->safe_psql('postgres', 'SHOW meetcache.redis_password_file'), '',
		'start-up: no password file is used');
	$other->stop;
	no_secret(slurp_file($other->logfile), 'start-up: the server log', @secrets);
}

# ---- an ACL user: the user in the URL, its password in the file ----
write_secret_file($pwfile, "$apppw\n");
($ret, $out, $err) = run_sql($node, 'app', q{SELECT meetcache.cache_ping(); SELECT meetcache.cache_set('acl:k', '1', 60)});
is($ret, 0, 'ACL user app (database URL) + its password in the file: works') or diag($err);
is($redis->cli('EXISTS', 'acl:k'), '1', 'ACL user app: the key was written');
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()');
like($err, qr/WRONGPASS/, "the same file without the URL's user: refused (the user comes from the URL)");
write_secret_file($pwfile, "$pw\n");

# ---- a changed password is picked up ----
my $logpos2 = -s $node->logfile;
is($redis->cli('CONFIG', 'SET', 'requirepass', $pw2), 'OK', 'redis: requirepass changed');
$redis->set_cli_auth(undef, $pw2);
write_secret_file($pwfile, "$pw2\n");
$redis->cli('CLIENT', 'KILL', 'TYPE', 'normal');    # every meetcache connection
# a backend: at its next connection
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()');
is($out, 'PONG', 'backend: the new password is read at the next connection');
# a drain (queue mode): at its next connection, without a reload
$redis->set_keys('meeting:m1');
($ret, $out, $err) = run_sql($node, 'postgres',
	"SET meetcache.delivery = 'queue'; UPDATE meetings SET title = 'b' WHERE id = 'm1'");
is($ret, 0, 'queue mode: commit');
ok(poll_until(20, sub { !$redis->existing('meeting:m1') }), 'drain: delivered with the new password');
# after a reload, the commit path too (it never reads the file itself)
ok(reload_and_wait($node), 'the postmaster reloaded');
$redis->cli('CLIENT', 'KILL', 'TYPE', 'normal');
$redis->set_keys('meeting:m1');
($ret, $out, $err) = run_sql($node, 'postgres',
	"SET meetcache.delivery = 'sync'; UPDATE meetings SET title = 'c' WHERE id = 'm1'");
is($err, '', 'commit path after a reload: no warning');
ok(!$redis->existing('meeting:m1'), 'commit path after a reload: deleted with the new password');
# a new path, named in the reload message: the path, never the content
my $pwfile2 = "$dir/redis2.pw";
write_secret_file($pwfile2, "$pw2\n");
$node->safe_psql('postgres', "ALTER SYSTEM SET meetcache.redis_password_file = '$pwfile2'");
ok(reload_and_wait($node), 'the postmaster reloaded');
ok(poll_until(20, sub { log_since($node, $logpos2) =~ /parameter "meetcache.redis_password_file" changed to "\Q$pwfile2\E"/ }),
	'reload: the log names the new password file');
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()');
is($out, 'PONG', 'the new password file works');
is(stats($node)->{redis_state}, 'up', 'redis_state is up');

my $log = slurp_file($node->logfile);
like($log, qr/The URL carries a password/, 'the refusals are in the server log');
unlike($log, qr/STATEMENT:.*redis:\/\/[^\s']*\@/, 'the refused statements are not in the server log');
no_secret($log, 'the whole server log', @secrets);

# ---- a SCAN too long for commit_timeout does not trip the breaker ----
# 200k keys: the TRUNCATE's two SCAN passes take far longer than 50 ms,
# while Redis answers every page at once
for my $mode ('sync', 'sync+queue')
{
	$redis->cli('FLUSHALL');
	$redis->cli('EVAL',
		"for i = 1, 200000 do redis.call('SET', 'meeting:big' .. i, '1', 'EX', '600') end", '0');
	is($redis->cli('DBSIZE'), '200000', "$mode: 200k keys of family meeting");
	my $before = stats($node);
	is($before->{redis_state}, 'up', "$mode: redis_state up before");
	($ret, $out, $err) = run_sql($node, 'postgres',
		"SET meetcache.delivery = '$mode'; SET meetcache.commit_timeout = '50ms';\n"
		  . "SELECT meetcache.cache_ping();\n"
		  . 'TRUNCATE meetings CASCADE');
	is($ret, 0, "$mode: TRUNCATE commits");
	like($err, qr/WARNING:.*could not delete \d+ cache keys after commit: redis at \S+ kept answering, but deleting the keys took longer than the deadline/,
		"$mode: the SCAN ran out of commit_timeout (a delivery failure)");
	my $after = stats($node);
	is($after->{redis_state}, 'up', "$mode: redis_state stays up");
	is($after->{breaker_trips}, $before->{breaker_trips}, "$mode: breaker_trips unchanged");
	ok(poll_until(120, sub { $redis->cli('DBSIZE') eq '0' }),
		"$mode: the family keys are deleted by the worker");
	ok(wait_queue_empty($node), "$mode: queue and retry queue empty");
	is(stats($node)->{breaker_trips}, $before->{breaker_trips}, "$mode: breaker_trips still unchanged");
	$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1@x') ON CONFLICT DO NOTHING;
INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES ('m1', 't0', 'u1', 'inv-m1', 'ENDED');});
}
unlike(slurp_file($node->logfile), qr/PANIC|was terminated by signal/, 'no crash in the server log');
done_testing();
