# Invalidation cannot be switched off by accident, and meetcache without
# shared_preload_libraries degrades to sync delivery.
#
#   - ALTER TABLE ... DISABLE TRIGGER meetcache_upd / ALL / USER,
#     ENABLE [REPLICA] TRIGGER meetcache_upd (ENABLE would drop ALWAYS) and
#     DROP TRIGGER are refused with SQLSTATE 55000 and a hint naming
#     meetcache.detach, by a superuser and by the table owner, also under
#     session_replication_role = replica, where writes still invalidate;
#     other DDL on attached tables, meetcache.detach()/attach(), DROP TABLE
#     and DROP EXTENSION ... CASCADE still work.
#   - A node without preload: CREATE EXTENSION and sync delivery work, the
#     queue modes are refused (hint: shared_preload_libraries), and so is
#     PREPARE TRANSACTION with pending keys.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema stats run_sql refused all_always);

my $redis = start_redis();
my $node = new_node('guard', $redis, log_statement => 'none');
setup_schema($node);
$node->safe_psql('postgres', q{
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1@x'), ('u2', 'U2', 'u2@x');
INSERT INTO meetings (id, title, host_id, invite_code, status)
  VALUES ('m1', 't0', 'u1', 'inv-m1', 'ENDED'), ('m2', 't0', 'u2', 'inv-m2', 'ENDED');
CREATE ROLE app LOGIN;
CREATE TABLE app_meetings (LIKE meetings INCLUDING ALL);
ALTER TABLE app_meetings OWNER TO app;
SELECT meetcache.attach('app_meetings', 'meetings');
INSERT INTO app_meetings (id, title, host_id, invite_code, status)
  VALUES ('a1', 't0', 'u1', 'inv-a1', 'ENDED');
});

# refused with SQLSTATE 55000 and a hint naming meetcache.detach; the four
# triggers of $o{rel} (default meetings) still ENABLE ALWAYS
sub guard_refused
{
	my ($sql, $name, %o) = @_;
	my $rel = delete $o{rel} // 'meetings';
	my $err = refused($node, 'postgres', $sql, '55000', $name, %o);
	like($err, qr/HINT:  .*meetcache\.detach\(/, "$name: the hint names meetcache.detach");
	is(all_always($node, $rel), 't', "$name: the four triggers are still ENABLE ALWAYS");
	return;
}

is(all_always($node, 'meetings'), 't', 'attached: four triggers, ENABLE ALWAYS');

for my $role ('origin', 'replica')
{
	my $set = "SET session_replication_role = $role;\n";
	my $r = $role eq 'replica' ? ' (replica)' : '';
	guard_refused($set . 'ALTER TABLE meetings DISABLE TRIGGER meetcache_upd',
		"DISABLE TRIGGER meetcache_upd$r");
	guard_refused($set . 'ALTER TABLE meetings DISABLE TRIGGER ALL', "DISABLE TRIGGER ALL$r");
	guard_refused($set . 'ALTER TABLE meetings DISABLE TRIGGER USER', "DISABLE TRIGGER USER$r");
	guard_refused($set . 'ALTER TABLE meetings ENABLE TRIGGER meetcache_upd',
		"ENABLE TRIGGER meetcache_upd (would drop ALWAYS)$r");
	guard_refused($set . 'ALTER TABLE meetings ENABLE REPLICA TRIGGER meetcache_upd',
		"ENABLE REPLICA TRIGGER meetcache_upd$r");
	guard_refused($set . 'ALTER TABLE meetings ADD COLUMN x int, DISABLE TRIGGER meetcache_del',
		"DISABLE TRIGGER among other subcommands$r");
	guard_refused($set . 'DROP TRIGGER meetcache_upd ON meetings', "DROP TRIGGER meetcache_upd$r");
	guard_refused($set . 'DROP TRIGGER meetcache_trunc ON users', "DROP TRIGGER meetcache_trunc ON users$r",
		rel => 'users');
	guard_refused($set . 'BEGIN; ALTER TABLE meetings DISABLE TRIGGER meetcache_ins; COMMIT;',
		"DISABLE TRIGGER in a transaction block$r");
}
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_attribute WHERE attrelid = 'meetings'::regclass AND attname = 'x'"),
	0, 'the refused ALTER TABLE changed nothing');

# the table owner (not a superuser) is refused the same way
guard_refused('ALTER TABLE app_meetings DISABLE TRIGGER meetcache_upd',
	'table owner: DISABLE TRIGGER', user => 'app', rel => 'app_meetings');
guard_refused('ALTER TABLE app_meetings DISABLE TRIGGER ALL',
	'table owner: DISABLE TRIGGER ALL', user => 'app', rel => 'app_meetings');
guard_refused('DROP TRIGGER meetcache_upd ON app_meetings',
	'table owner: DROP TRIGGER', user => 'app', rel => 'app_meetings');

# Writes under session_replication_role = replica still invalidate, in
# sync and in queue delivery
my $chk = MeetcacheTest::Checker->new($node, $redis);
{
	my @k1 = $chk->seed($chk->keys_of('meetings', "t.id = 'm1'"));
	my @k2 = $chk->seed($chk->keys_of('meetings', "t.id = 'm2'"));
	my @ka = $chk->seed($chk->keys_of('app_meetings', "t.id = 'a1'"));
	# app_meetings keys are those of meeting a1 under the meetings rules
	is_deeply([ sort @ka ],
		[ sort $chk->affected('meetings', undef, '{"id": "a1", "host_id": "u1", "invite_code": "inv-a1", "status": "ENDED"}') ],
		'keys of the attached copy follow the meetings rules');
	$redis->set_keys('unrelated:key');
	my @ku = $chk->seed($chk->affected('users', undef, '{"id": "u1", "email": "u1@x"}'));
	my ($rc, $out, $err) = run_sql($node, 'postgres', q{
SET session_replication_role = replica;
UPDATE meetings SET title = 'r1' WHERE id = 'm1';
SET meetcache.delivery = 'queue';
UPDATE meetings SET title = 'r2' WHERE id = 'm2';
UPDATE app_meetings SET title = 'r2' WHERE id = 'a1';
BEGIN;
UPDATE users SET name = 'rolled back' WHERE id = 'u1';
ROLLBACK;}, verbose => 1);
	is($rc, 0, 'replica: writes succeed') or diag($err);
	$chk->must_delete(@k1, @k2, @ka);
	$chk->must_survive('unrelated:key', @ku);
	$chk->verify('replica: writes still invalidate (sync and queue)');
}

# Things that must keep working
my ($rc, $out, $err) = run_sql($node, 'postgres', q{
ALTER TABLE meetings ADD COLUMN note text;
ALTER TABLE meetings DROP COLUMN note;
ALTER TABLE meetings ENABLE ALWAYS TRIGGER meetcache_upd;
CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER my_trg AFTER UPDATE ON meetings FOR EACH STATEMENT EXECUTE FUNCTION noop();
ALTER TABLE meetings DISABLE TRIGGER my_trg;
DROP TRIGGER my_trg ON meetings;}, verbose => 1);
is($rc, 0, 'other DDL on an attached table works (columns, ENABLE ALWAYS, own triggers)')
  or diag($err);
is(all_always($node, 'meetings'), 't', 'still four ENABLE ALWAYS triggers');

($rc, $out, $err) = run_sql($node, 'postgres', q{SELECT meetcache.detach('meetings');}, verbose => 1);
is($rc, 0, 'meetcache.detach works') or diag($err);
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_trigger WHERE tgrelid = 'meetings'::regclass AND tgname LIKE 'meetcache%'"),
	0, 'detach dropped the triggers');
{
	my @k = $chk->seed($chk->keys_of('meetings', "t.id = 'm1'"));
	$node->safe_psql('postgres', "UPDATE meetings SET title = 'd1' WHERE id = 'm1'");
	$chk->must_survive(@k);
	$chk->verify('detached: writes no longer invalidate', timeout => 1);
}
($rc, $out, $err) = run_sql($node, 'postgres', q{SELECT meetcache.attach('meetings');}, verbose => 1);
is($rc, 0, 'meetcache.attach again') or diag($err);
is(all_always($node, 'meetings'), 't', 'attached again: four ENABLE ALWAYS triggers');
{
	my @k = $chk->seed($chk->keys_of('meetings', "t.id = 'm1'"));
	$node->safe_psql('postgres', "UPDATE meetings SET title = 'a1' WHERE id = 'm1'");
	$chk->must_delete(@k);
	$chk->verify('attached again: writes invalidate');
}

($rc, $out, $err) = run_sql($node, 'postgres', 'DROP TABLE app_meetings', verbose => 1);
is($rc, 0, 'DROP TABLE of an attached table works') or diag($err);

$node->safe_psql('postgres', 'CREATE DATABASE scratch');
setup_schema($node, 'scratch');
($rc, $out, $err) = run_sql($node, 'scratch', 'DROP EXTENSION meetcache CASCADE', verbose => 1);
is($rc, 0, 'DROP EXTENSION meetcache CASCADE works') or diag($err);
is($node->safe_psql('scratch',
		"SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'meetcache%'") . '/'
	  . $node->safe_psql('scratch',
		"SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'meetcache%'"),
	'0/0', 'DROP EXTENSION CASCADE removed the table and event triggers');
($rc, $out, $err) = run_sql($node, 'scratch', 'ALTER TABLE meetings DISABLE TRIGGER ALL', verbose => 1);
is($rc, 0, 'without the extension, trigger DDL is free again') or diag($err);

###########################################################################
# Without shared_preload_libraries
my $np = new_node('nopreload', $redis, preload => 0, log_statement => 'none',
	conf => "max_prepared_transactions = 5\n");
is($np->safe_psql('postgres', 'SHOW shared_preload_libraries'), '',
	'no preload: shared_preload_libraries is empty');
($rc, $out, $err) = run_sql($np, 'postgres', MeetcacheTest::schema_sql()
	  . "\nCREATE EXTENSION meetcache; SELECT meetcache.attach_defaults();", verbose => 1);
is($rc, 0, 'no preload: CREATE EXTENSION and attach_defaults work') or diag($err);
SKIP:
{
	# 15: the number of tests in this block
	skip 'meetcache cannot be loaded without preload', 15 if $rc != 0;
	$np->safe_psql('postgres', q{
INSERT INTO users (id, name, email) VALUES ('u1', 'U1', 'u1@x');
INSERT INTO meetings (id, title, host_id, invite_code, status)
  VALUES ('m1', 't0', 'u1', 'inv-m1', 'ENDED');
CREATE TABLE not_attached (x int);});
	is( $np->safe_psql('postgres',
			"SELECT meetcache.key('meeting', 'x'); SHOW meetcache.delivery"),
		"meeting:x\nsync", 'no preload: meetcache.delivery defaults to sync');
	my $st = stats($np, 'postgres', qw(scope worker_state redis_state));
	is_deeply($st, { scope => 'backend', worker_state => 'not preloaded', redis_state => 'unknown' },
		'no preload: stats say so');
	is($np->safe_psql('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'meetcache%'"),
		0, 'no preload: no meetcache worker');

	# sync delivery, from a backend whose first use of meetcache is the write
	my $npchk = MeetcacheTest::Checker->new($np, $redis);
	{
		my @k = $npchk->seed($npchk->keys_of('meetings', "t.id = 'm1'"));
		$np->safe_psql('postgres', "UPDATE meetings SET title = 't1' WHERE id = 'm1'");
		is_deeply([ $redis->existing(@k) ], [], 'no preload: the commit deleted the keys (sync)');
	}

	for my $mode ('queue', 'sync+queue')
	{
		($rc, $out, $err) = run_sql($np, 'postgres',
			"SELECT meetcache.key('meeting', 'x');\nSET meetcache.delivery = '$mode';", verbose => 1);
		isnt($rc, 0, "no preload: SET meetcache.delivery = '$mode' fails");
		like($err, qr/ERROR:  55000:/, "no preload: delivery '$mode': SQLSTATE 55000");
		like($err, qr/HINT:  .*shared_preload_libraries/,
			"no preload: delivery '$mode': the hint names shared_preload_libraries");
	}

	{
		my @k = $npchk->seed($npchk->keys_of('meetings', "t.id = 'm1'"));
		($rc, $out, $err) = run_sql($np, 'postgres', q{
BEGIN;
UPDATE meetings SET title = 'p1' WHERE id = 'm1';
PREPARE TRANSACTION 'np1';}, verbose => 1);
		like($err, qr/ERROR:  55000: cannot prepare a transaction that has pending cache invalidations/,
			'no preload: PREPARE TRANSACTION with pending keys is refused');
		like($err, qr/HINT:  .*shared_preload_libraries/,
			'no preload: PREPARE refusal: the hint names shared_preload_libraries');
		is($np->safe_psql('postgres',
				"SELECT (SELECT title FROM meetings WHERE id = 'm1') || '/' || (SELECT count(*) FROM pg_prepared_xacts)"),
			't1/0', 'no preload: the refused transaction was rolled back, nothing prepared');
		is_deeply([ $redis->existing(@k) ], [ @k ], 'no preload: keys of the refused transaction kept');
		($rc, $out, $err) = run_sql($np, 'postgres', q{
BEGIN;
INSERT INTO not_attached VALUES (1);
PREPARE TRANSACTION 'np2';
COMMIT PREPARED 'np2';}, verbose => 1);
		is($rc, 0, 'no preload: PREPARE TRANSACTION without cache keys works') or diag($err);
	}
}

for my $n ($node, $np)
{
	my $log = slurp_file($n->logfile);
	unlike($log, qr/PANIC|was terminated by signal|server process .* exited with exit code/,
		$n->name . ': no crash in the server log');
}
done_testing();
