# Redis authentication: requirepass and ACL users, SELECT db, CLIENT SETNAME;
# the password comes from meetcache.redis_password_file and never leaks
# (error messages, SHOW for non-superusers, server log).
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema run_sql bg_session bg_query
  reload_and_wait write_secret_file no_secret);

my $pw = 'S3cretPw9f2a';
my $apppw = 'AppPw77c1x';
my $wrong = 'WrongPw31337';
my $odd = 'Odd@Pw:x/y%z';    # written to the file as is
my @secrets = ($pw, $apppw, $wrong, $odd, 'Odd%40Pw');    # and $odd URL-encoded

my $redis = start_redis(requirepass => $pw);
is($redis->cli('ACL', 'SETUSER', 'app', 'on', ">$apppw", '~*', '&*', '+@all'),
	'OK', 'ACL user app created');

# the password file, replaced atomically (owner-only, as required)
my $pwfile = PostgreSQL::Test::Utils::tempdir() . '/redis.pw';
write_secret_file($pwfile, "$pw\n");

# log_statement = none: the Cluster default (all) would log every statement
my $node = new_node('auth', $redis,
	url => $redis->url(password => undef),
	log_statement => 'none',
	conf => "log_min_messages = debug1\nmeetcache.redis_password_file = '$pwfile'\n");
setup_schema($node);
$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1@x');
INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES ('m1', 't0', 'u1', 'inv-m1', 'ENDED');
CREATE ROLE alice LOGIN;
GRANT USAGE ON SCHEMA meetcache TO alice;
});
my @m1 = qw(meeting:m1 meeting:invite:inv-m1 meetings:user:u1 user:u1:meetings:count);
my $port = $redis->port;

# requirepass, the password file from the config file
my ($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()');
is($out, 'PONG', 'requirepass + correct password (password file): PONG');
$redis->set_keys(@m1);
($ret, $out, $err) = run_sql($node, 'postgres', "UPDATE meetings SET title = 'a' WHERE id = 'm1'");
is($err, '', 'requirepass: commit without warning');
is_deeply([ $redis->existing(@m1) ], [], 'requirepass: commit deletes the keys');

# the default user named explicitly
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()',
	redis_url => "redis://default\@127.0.0.1:$port/0");
is($out, 'PONG', 'user default + password file: PONG');

# wrong password for the default user: a changed file is read at the next connection
write_secret_file($pwfile, "$wrong\n");
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()');
isnt($ret, 0, 'wrong password: cache_ping fails');
like($err, qr/WRONGPASS|invalid username-password|auth/i, 'wrong password: clear error');
no_secret("$out $err", 'wrong password error', @secrets);
note "error: $err";

# no password at all
$node->safe_psql('postgres', "ALTER SYSTEM SET meetcache.redis_password_file = ''");
ok(reload_and_wait($node), 'the postmaster reloaded');
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()');
isnt($ret, 0, 'no password: cache_ping fails');
like($err, qr/NOAUTH|auth/i, 'no password: clear error');
note "error: $err";
$node->safe_psql('postgres', 'ALTER SYSTEM RESET meetcache.redis_password_file');

# ACL user, database 3; after a reload even the commit path uses the new file
write_secret_file($pwfile, "$apppw\n");
ok(reload_and_wait($node), 'the postmaster reloaded');
my $appurl = "redis://app\@127.0.0.1:$port/3";
($ret, $out, $err) = run_sql($node, 'postgres',
	q{SELECT meetcache.cache_ping(); SELECT meetcache.cache_set('dbk', '"v3"'::jsonb, 600);},
	redis_url => $appurl);
is($ret, 0, 'ACL user: cache_ping + cache_set succeed');
is($err, '', 'ACL user: no error');
is($redis->cli('-n', 3, 'GET', 'dbk'), '"v3"', 'SELECT db 3 honoured by cache_set');
is($redis->cli('-n', 0, 'EXISTS', 'dbk'), '0', 'nothing written to db 0');
($ret, $out, $err) = run_sql($node, 'postgres', q{SELECT meetcache.cache_get('dbk')}, redis_url => $appurl);
is($out, '"v3"', 'cache_get reads db 3');

# invalidation goes to db 3 only (the commit opens the connection)
$redis->set_keys([ -n => 3 ], @m1);
$redis->set_keys([ -n => 0 ], @m1);
($ret, $out, $err) = run_sql($node, 'postgres', "UPDATE meetings SET title = 'b' WHERE id = 'm1'", redis_url => $appurl);
is($err, '', 'ACL user: commit without warning');
is_deeply([ $redis->existing([ -n => 3 ], @m1) ], [], 'commit deleted the keys in db 3');
is_deeply([ $redis->existing([ -n => 0 ], @m1) ], \@m1, 'keys in db 0 untouched');

# wrong password for the ACL user: SQL function error and commit warning
write_secret_file($pwfile, "$wrong\n");
ok(reload_and_wait($node), 'the postmaster reloaded');
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()', redis_url => $appurl);
isnt($ret, 0, 'ACL user, wrong password: fails');
like($err, qr/WRONGPASS|invalid username-password|auth/i, 'ACL user, wrong password: clear error');
no_secret("$out $err", 'ACL wrong password error', @secrets);
note "error: $err";
($ret, $out, $err) = run_sql($node, 'postgres', "UPDATE meetings SET title = 'c' WHERE id = 'm1'", redis_url => $appurl);
is($ret, 0, 'wrong password: the commit still succeeds');
like($err, qr/WARNING/, 'wrong password: commit WARNING');
no_secret($err, 'commit warning', @secrets);
note "warning: $err";

# a password with URL-special characters, and a %-encoded user name (app%32 = app2)
is($redis->cli('ACL', 'SETUSER', 'app2', 'on', ">$odd", '~*', '&*', '+@all'),
	'OK', 'ACL user app2 created');
write_secret_file($pwfile, "$odd\n");
($ret, $out, $err) = run_sql($node, 'postgres', 'SELECT meetcache.cache_ping()',
	redis_url => "redis://app%32\@127.0.0.1:$port/0");
is($out, 'PONG', 'password with @ : / % in the file, %-encoded user: works');
is($err, '', 'special password: no error');

# malformed URLs and URLs with a password are rejected when set
for my $bad ('http://127.0.0.1:6379/0', 'redis://127.0.0.1:notaport/0',
	'redis://127.0.0.1:6379/x', "redis://app:$apppw\@127.0.0.1:$port/0",
	"redis://:$pw\@127.0.0.1:$port/0")
{
	($ret, $out, $err) = run_sql($node, 'postgres', "SET meetcache.redis_url = '$bad'");
	isnt($ret, 0, "malformed URL rejected at SET");
	no_secret($err, 'URL refusal', @secrets);
}

# switching URL inside one session takes effect immediately
write_secret_file($pwfile, "$apppw\n");
my $s = bg_session($node);
bg_query($s, "SET meetcache.redis_url = '$appurl'");
($out, $err) = bg_query($s, q{SELECT meetcache.cache_get('dbk')});
is($out, '"v3"', 'session: with the ACL URL, reads db 3');
bg_query($s, "SET meetcache.redis_url = 'redis://app2\@127.0.0.1:$port/0'");
($out, $err) = bg_query($s, 'SELECT meetcache.cache_ping()');
like($err, qr/ERROR/, 'session: after SET to a user the file has no password for, cache_ping fails');
no_secret($err, 'session error', @secrets);
bg_query($s, "SET meetcache.redis_url = '$appurl'");
($out, $err) = bg_query($s, q{SELECT meetcache.cache_get('dbk')});
is($out, '"v3"', 'session: after SET back to the ACL URL, reads db 3');

# CLIENT SETNAME / CLIENT LIST while the session holds its connection
my $list = $redis->cli('CLIENT', 'LIST');
note "CLIENT LIST:\n$list";
my @named = grep { /\bname=\S+/ && !/\bcmd=client\b/ } split /\n/, $list;
ok(scalar(@named) >= 1, 'a meetcache connection has a CLIENT SETNAME name');
ok((grep { /\buser=app\b/ && /\bdb=3\b/ } @named),
	'the named connection is user app on db 3');
$s->quit;

# non-superuser cannot see the URL or the password file
($ret, $out, $err) = run_sql($node, 'postgres', 'SHOW meetcache.redis_url', user => 'alice');
isnt($ret, 0, 'non-superuser: SHOW meetcache.redis_url refused');
no_secret("$out $err", 'SHOW as non-superuser', @secrets);
($ret, $out, $err) = run_sql($node, 'postgres', 'SHOW meetcache.redis_password_file', user => 'alice');
isnt($ret, 0, 'non-superuser: SHOW meetcache.redis_password_file refused');
($ret, $out, $err) = run_sql($node, 'postgres', q{SELECT current_setting('meetcache.redis_url')}, user => 'alice');
isnt($ret, 0, 'non-superuser: current_setting refused');
no_secret("$out $err", 'current_setting as non-superuser', @secrets);
($ret, $out, $err) = run_sql($node, 'postgres',
	q{SELECT string_agg(name || '=' || coalesce(setting, '') || coalesce(reset_val, '') || coalesce(boot_val, ''), ',') FROM pg_settings WHERE name LIKE 'meetcache.%'},
	user => 'alice');
no_secret("$out $err", 'pg_settings as non-superuser', @secrets);
($ret, $out, $err) = run_sql($node, 'postgres', 'SHOW ALL', user => 'alice');
is($ret, 0, 'non-superuser: SHOW ALL works');
no_secret("$out $err", 'SHOW ALL as non-superuser', @secrets);
($ret, $out, $err) = run_sql($node, 'postgres', q{SET meetcache.redis_url = 'redis://127.0.0.1:1/0'}, user => 'alice');
isnt($ret, 0, 'non-superuser cannot SET meetcache.redis_url');

# the superuser does see it (sanity check of the test itself)
($ret, $out, $err) = run_sql($node, 'postgres', 'SHOW meetcache.redis_url');
like($out, qr/^redis:/, 'superuser: SHOW meetcache.redis_url works');

# the server log never contains a password
my $log = slurp_file($node->logfile);
like($log, qr/WRONGPASS|invalid username-password|auth/i,
	'the authentication errors are in the server log');
no_secret($log, 'server log', @secrets);
unlike($log, qr/PANIC|was terminated by signal/, 'no crash in the server log');
done_testing();
