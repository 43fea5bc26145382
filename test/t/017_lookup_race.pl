# Lookup rules and concurrent links (issue 10).  A lookup rule (a user's
# rename reaches the meetings they host, the participant lists they are on,
# the chats they wrote in; a meeting's title reaches its participants'
# participation lists) runs at statement time.  A row another transaction
# links to that user (or meeting) after the lookup and before our commit must
# not keep a value cached in between:
#
#   1. A: BEGIN; UPDATE users SET name = 'NewName' WHERE id = 'u1';
#   2. B (autocommit) links a row to u1, e.g. UPDATE meetings SET host_id = 'u1'
#      WHERE id = 'm9' (the FK's KEY SHARE lock does not wait for A); its own
#      rules delete meeting:m9
#   3. C: cache_get_or_set('meeting:m9', <query with the host's name>) stores
#      'OldName' (u1's committed name)
#   4. A: COMMIT
#
# Once the queue is empty, the key must be absent or hold what its query
# returns now.  Every lookup family of the default rules (docs/keys.md), linked
# by INSERT or UPDATE, on both reference schemas (snake_case in database
# postgres, Prisma camelCase with enum types in database camel, and the
# snake_case one without indexes on the lookup columns in database noindex,
# where lookups are SPI queries rather than index probes), in each delivery
# mode.  The fill queries are MeetcacheTest::fill_sql's.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use MeetcacheTest qw(start_redis new_node setup_schema with_columns fill_sql
  lookup_rows_sql cache_old bg_session bg_query bg_send bg_wait_for);

my $redis = start_redis();
my $node = new_node('lookup_race', $redis,
	log_statement => 'none',
	conf => "meetcache.poll_interval = 100\n");
# "noindex": the snake schema without the indexes on the lookup columns, so
# that the lookups take the SPI query instead of the index probe
my %db = (snake => 'postgres', camel => 'camel', noindex => 'noindex');
my %variant = (snake => 'snake', camel => 'camel', noindex => 'snake');
$node->safe_psql('postgres', 'CREATE DATABASE camel');
$node->safe_psql('postgres', 'CREATE DATABASE noindex');
for my $v (sort keys %db)
{
	setup_schema($node, $db{$v}, $variant{$v});
	$node->safe_psql($db{$v}, fill_sql($variant{$v}));
}
$node->safe_psql('noindex', q{
DO $$ DECLARE i regclass; BEGIN
  FOR i IN SELECT x.indexrelid::regclass FROM pg_index x
           WHERE x.indrelid IN ('meetings'::regclass, 'participants'::regclass, 'chat_messages'::regclass)
             AND NOT x.indisprimary AND NOT x.indisunique LOOP
    EXECUTE format('DROP INDEX %s', i);
  END LOOP;
END $$;});

my $reset = lookup_rows_sql();

# u1 hosts, joins and writes nothing when A renames it, so A's lookups find
# nothing; B then links a row to u1.
my $rename_user = "UPDATE users SET name = 'NewName' WHERE id = 'u1'";
my $host_m9 = "UPDATE meetings SET {host_id} = 'u1' WHERE id = 'm9'";
# [ name, A's statement, B's statement, key C fills, what C must cache ]
my @cases = (
	[ 'meeting (host moved)', $rename_user, $host_m9, 'meeting:m9', 'OldName' ],
	[ 'meeting_by_invite (host moved)', $rename_user, $host_m9, 'meeting:invite:inv-m9', 'OldName' ],
	[ 'user_meetings (host moved)', $rename_user, $host_m9, 'meetings:user:u1', 'OldName' ],
	[ 'live_meetings (host moved)', $rename_user, $host_m9, 'meetings:live', 'OldName' ],
	[
		'live_meetings (meeting inserted)', $rename_user,
		"INSERT INTO meetings (id, title, {host_id}, {invite_code}, status) VALUES ('m7', 'T7', 'u1', 'inv-m7', 'LIVE')",
		'meetings:live', 'OldName'
	],
	[
		'scheduled_meetings (host moved)', $rename_user,
		"UPDATE meetings SET {host_id} = 'u1' WHERE id = 'm8'",
		'meetings:scheduled', 'OldName'
	],
	[
		'meeting_participants (participant inserted)', $rename_user,
		"INSERT INTO participants (id, {meeting_id}, {user_id}) VALUES ('p9', 'm9', 'u1')",
		'meeting:m9:participants', 'OldName'
	],
	[
		'meeting_participants (participant moved)', $rename_user,
		"UPDATE participants SET {user_id} = 'u1' WHERE id = 'p1'",
		'meeting:m9:participants', 'OldName'
	],
	[
		'recent_chats (message inserted)', $rename_user,
		"INSERT INTO chat_messages (id, {meeting_id}, {user_id}, message) VALUES ('c9', 'm9', 'u1', 'new')",
		'meeting:m9:chats:recent:50', 'OldName'
	],
	[
		'recent_chats (message moved)', $rename_user,
		"UPDATE chat_messages SET {user_id} = 'u1' WHERE id = 'c1'",
		'meeting:m9:chats:recent:50', 'OldName'
	],
	[
		'user_participations (participant inserted)',
		"UPDATE meetings SET title = 'NewTitle' WHERE id = 'm9'",
		"INSERT INTO participants (id, {meeting_id}, {user_id}) VALUES ('p9', 'm9', 'u3')",
		'user:u3:participations', 'OldTitle'
	],
	[
		'user_participations (participant moved)',
		"UPDATE meetings SET title = 'NewTitle' WHERE id = 'm9'",
		"UPDATE participants SET {meeting_id} = 'm9' WHERE id = 'p2'",
		'user:u3:participations', 'OldTitle'
	],
);

# Polls $sql in session $s until it returns 't' (at most 30 s); true if it did.
sub wait_true
{
	my ($s, $sql) = @_;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		return 1 if bg_query($s, $sql) eq 't';
		usleep(10_000);
	}
	return 0;
}
# every queue row gone: the drains have done all their work
my $all_drained = 'SELECT count(*) = 0 FROM meetcache.pending';
# every queued key delivered (in sync+queue the backend delivers its own
# keys, and its row waits for a drain's next pass)
my $all_delivered = 'SELECT count(*) = 0 FROM meetcache.pending WHERE NOT delivered';

my $t0 = time;
my $runs = 0;
for my $v (sort keys %db)
{
	my %s = map { $_ => bg_session($node, $db{$v}) } qw(a b c);
	for my $mode ('sync', 'queue', 'sync+queue')
	{
		bg_query($s{$_}, "SET meetcache.delivery = '$mode'") for qw(a b c);
		my @fail;
		for my $c (@cases)
		{
			my ($name, $asql, $bsql, $key, $old) = @$c;
			my $what = "$v/$mode/$name";
			my $q = sub { with_columns($variant{$v}, $_[0]) };
			$runs++;

			# (the reset's keys are deleted at its commit, not by a drain)
			my ($out, $err) = bg_query($s{b},
				"BEGIN; SET LOCAL meetcache.delivery = 'sync';\n" . $q->($reset) . 'COMMIT;');
			if ($err ne '')
			{
				push @fail, "$what: reset failed: $err";
				next;
			}
			$redis->cli('FLUSHALL');

			# 1. A's lookup
			($out, $err) = bg_query($s{a}, 'BEGIN; ' . $q->($asql));
			push @fail, "$what: A: $err" if $err ne '';
			# 2. B links a row and commits (its own keys delivered)
			my $tag = bg_send($s{b}, $q->($bsql));
			my ($done, $bout, $berr) = bg_wait_for($s{b}, $tag, 10);
			push @fail, "$what: B did not finish while A was open" unless $done;
			push @fail, "$what: B: $berr" if $done && $berr ne '';
			push @fail, "$what: B's keys not delivered" unless wait_true($s{c}, $all_delivered);
			# 3. C caches the key with the committed (old) value
			push @fail, cache_old($s{c}, $redis, $key, $old, $what);
			# 4. A commits
			($out, $err) = bg_query($s{a}, 'COMMIT');
			push @fail, "$what: A: COMMIT: $err" if $err ne '';
			push @fail, "$what: queue not empty after A's commit"
			  unless wait_true($s{c}, $all_drained);

			($out, $err) = bg_query($s{c},
				"SELECT CASE WHEN meetcache.cache_get('$key') IS NULL THEN 'absent' "
				  . "WHEN meetcache.cache_get('$key') = fill_now('$key') THEN 'fresh' "
				  . "ELSE 'STALE ' || meetcache.cache_get('$key')::text || ' now ' || fill_now('$key')::text END");
			push @fail, "$what: $key $out $err" unless $out =~ /^(absent|fresh)$/ && $err eq '';
		}
		is(scalar @fail, 0, "$v, $mode: no stale key after a lookup raced a link ("
			  . scalar(@cases) . ' cases)');
		diag $_ for @fail;
	}
	$_->quit for values %s;
}
note sprintf('%d interleavings in %.1fs', $runs, time - $t0);

my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|was terminated by signal|server process .* exited with exit code [^0]/,
	'no crash in the server log');
done_testing();
