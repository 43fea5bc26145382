# pg_dump / restore of a database using meetcache: the restore succeeds
# without errors, each trigger exists once and is ENABLE ALWAYS, user-added
# rules survive, and invalidation works in the restored database.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use MeetcacheTest qw(start_redis new_node setup_schema);

my $redis = start_redis();
my $node = new_node('dump', $redis);
$node->safe_psql('postgres', 'CREATE DATABASE src');
setup_schema($node, 'src');
$node->safe_psql('src', q{
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1@x'), ('u2', 'U2', 'u2@x');
INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES
  ('m1', 't0', 'u1', 'inv-m1', 'LIVE'), ('m2', 't0', 'u2', 'inv-m2', 'ENDED');
INSERT INTO participants (id, meeting_id, user_id) VALUES ('p1', 'm1', 'u2');
INSERT INTO chat_messages (id, meeting_id, user_id, message) VALUES ('c1', 'm1', 'u2', 'hi');
INSERT INTO recordings (id, meeting_id) VALUES ('r1', 'm1');
});

# A user-defined family and rule (users may extend the defaults).
my ($ret, $out, $err);
$ret = $node->psql('src', q{
INSERT INTO meetcache.families (name, template, ttl_seconds, description, builtin)
  VALUES ('meeting_title', 'meeting:{id}:title', 60, 'custom', false);
INSERT INTO meetcache.rules (table_name, family, on_insert, on_update, on_delete, description, builtin)
  VALUES ('meetings', 'meeting_title', true, true, true, 'custom', false);
}, stdout => \$out, stderr => \$err);
is($ret, 0, 'custom family and rule added') or diag $err;

my $tables = 'users,meetings,participants,chat_messages,recordings';
my $trig_sql = q{
SELECT string_agg(c.relname || '.' || t.tgname || '=' || t.tgenabled::text, ' ' ORDER BY c.relname, t.tgname)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal AND t.tgname LIKE 'meetcache%'};
my $expected_trig = join ' ',
  map {
	my $tb = $_;
	map { "$tb.meetcache_$_=A" } sort qw(ins upd del trunc)
  } sort split /,/, $tables;
is($node->safe_psql('src', $trig_sql), $expected_trig,
	'source: 4 triggers per table, ENABLE ALWAYS');
my $nrules = $node->safe_psql('src', 'SELECT count(*) FROM meetcache.rules');
my $nfam = $node->safe_psql('src', 'SELECT count(*) FROM meetcache.families');

my $tmp = PostgreSQL::Test::Utils::tempdir();
my $dump_c = "$tmp/src.dump";
my $dump_p = "$tmp/src.sql";
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump_c, '-d', $node->connstr('src') ],
	'pg_dump -Fc');
$node->command_ok([ 'pg_dump', '-Fp', '-f', $dump_p, '-d', $node->connstr('src') ],
	'pg_dump -Fp');

my $plain = slurp_file($dump_p);
my $ncreate = () = $plain =~ /^CREATE TRIGGER meetcache_/mg;
my $nalways = () = $plain =~ /ENABLE ALWAYS TRIGGER meetcache_/g;
is($ncreate, 20, 'plain dump: 20 CREATE TRIGGER meetcache_*');
is($nalways, 20, 'plain dump: 20 ENABLE ALWAYS TRIGGER meetcache_*');

sub run_cmd
{
	my @cmd = @_;
	my ($o, $e) = ('', '');
	my $ok = IPC::Run::run(\@cmd, '<', \undef, '>', \$o, '2>', \$e,
		IPC::Run::timeout(120));
	return ($ok, $o, $e);
}

# custom format -> dst
$node->safe_psql('postgres', 'CREATE DATABASE dst');
my ($ok, $o, $e) = run_cmd('pg_restore', '--exit-on-error', '-d',
	$node->connstr('dst'), $dump_c);
ok($ok, 'pg_restore succeeded');
is($e, '', 'pg_restore printed no error or warning');

# plain format -> dst2
$node->safe_psql('postgres', 'CREATE DATABASE dst2');
($ok, $o, $e) = run_cmd('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d',
	$node->connstr('dst2'), '-f', $dump_p);
ok($ok, 'plain restore with ON_ERROR_STOP succeeded');
unlike($e, qr/ERROR|WARNING/, 'plain restore printed no error or warning');
note $e if $e ne '';

for my $db (qw(dst dst2))
{
	is($node->safe_psql($db, $trig_sql), $expected_trig,
		"$db: each trigger exists once, ENABLE ALWAYS");
	is($node->safe_psql($db, 'SELECT count(*) FROM meetcache.rules'), $nrules,
		"$db: same number of rules");
	is($node->safe_psql($db, 'SELECT count(*) FROM meetcache.families'), $nfam,
		"$db: same number of families");
	is( $node->safe_psql(
			$db, q{SELECT count(*) FROM meetcache.rules WHERE family = 'meeting_title'}),
		'1',
		"$db: the user-defined rule survived");
	my ($r, $o2, $e2) = $node->psql($db, q{
INSERT INTO meetcache.families (name, template, ttl_seconds, description, builtin)
  VALUES ('meeting_title2', 'meeting:{id}:title2', 60, 'custom 2', false);
INSERT INTO meetcache.rules (table_name, family, on_insert, on_update, on_delete, description, builtin)
  VALUES ('meetings', 'meeting_title2', true, true, true, 'custom 2', false);});
	is($r, 0, "$db: another rule can be added after the restore (id sequence restored)")
	  or diag $e2;
	is($node->safe_psql($db, 'SELECT count(*) FROM meetcache.attached'),
		'5', "$db: meetcache.attached lists the 5 tables");
	is($node->safe_psql($db, 'SELECT count(*) FROM meetings'), '2', "$db: data restored");

	# invalidation in the restored database
	my @k = qw(meeting:m1 meeting:invite:inv-m1 meetings:user:u1
	  user:u1:meetings:count meetings:live user:u2:participations meeting:m1:title
	  meeting:m1:title2);
	my @keep = qw(meeting:m2 meeting:m1:participants unrelated);
	$redis->set_keys(@k, @keep);
	$node->safe_psql($db, "UPDATE meetings SET title = 'x' WHERE id = 'm1'");
	is_deeply([ $redis->existing(@k) ], [], "$db: UPDATE meetings deleted its keys (custom rule included)");
	is_deeply([ $redis->existing(@keep) ], \@keep, "$db: unrelated keys kept");

	@k = qw(meeting:m2:participants meeting:m2:participants:count meeting:m2 user:u1:participations);
	$redis->set_keys(@k);
	$node->safe_psql($db, "INSERT INTO participants (id, meeting_id, user_id) VALUES ('p2', 'm2', 'u1')");
	is_deeply([ $redis->existing(@k) ], [], "$db: INSERT participants deleted its keys");

	@k = qw(meeting:m1:chats:recent:50);
	$redis->set_keys(@k);
	$node->safe_psql($db, "DELETE FROM chat_messages WHERE id = 'c1'");
	is_deeply([ $redis->existing(@k) ], [], "$db: DELETE chat_messages deleted its keys");

	@k = qw(meeting:m1:recording);
	$redis->set_keys(@k);
	$node->safe_psql($db, "UPDATE recordings SET status = 'READY' WHERE id = 'r1'");
	is_deeply([ $redis->existing(@k) ], [], "$db: UPDATE recordings deleted its keys");

	@k = qw(user:u1 user:email:u1@x meeting:m1 meetings:user:u1);
	$redis->set_keys(@k);
	$node->safe_psql($db, "SET session_replication_role = replica; UPDATE users SET name = 'N' WHERE id = 'u1'");
	is_deeply([ $redis->existing(@k) ], [],
		"$db: UPDATE users under session_replication_role=replica deleted its keys");
}

# the source database is unaffected
$redis->set_keys('meeting:m2');
$node->safe_psql('src', "UPDATE meetings SET title = 'y' WHERE id = 'm2'");
is_deeply([ $redis->existing('meeting:m2') ], [], 'source database still invalidates');

done_testing();
