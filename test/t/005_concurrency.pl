# Two sessions; savepoints rolled back in one, commits in the other: nothing
# is deleted for rolled-back work, everything committed is deleted, at commit.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema bg_session bg_query);

my $redis = start_redis();
my $node = new_node('conc', $redis);
setup_schema($node);
my $sql = "INSERT INTO users (id, name, email) VALUES "
  . join(', ', map { "('u$_', 'U$_', 'u$_\@x')" } 1 .. 8) . ";\n"
  . "INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES "
  . join(', ', map { "('m$_', 't0', 'u$_', 'inv-m$_', 'ENDED')" } 1 .. 8) . ";\n";
$node->safe_psql('postgres', $sql);

# keys only meeting m$i (hosted by u$i, ENDED, no participants) invalidates
sub mkeys
{
	my $i = shift;
	return ("meeting:m$i", "meeting:invite:inv-m$i", "meetings:user:u$i",
		"user:u$i:meetings:count");
}
my @all = map { mkeys($_) } 1 .. 8;

my $sa = bg_session($node);
my $sb = bg_session($node);
$redis->set_keys(@all);

# A: open transaction, work rolled back in savepoints
my ($out, $err) = bg_query($sa, q{
BEGIN;
UPDATE meetings SET title = 'a' WHERE id = 'm1';
SAVEPOINT s1;
UPDATE meetings SET title = 'a' WHERE id = 'm2';
ROLLBACK TO SAVEPOINT s1;
SAVEPOINT s2;
UPDATE meetings SET title = 'a' WHERE id = 'm4';
SAVEPOINT s3;
UPDATE meetings SET title = 'a' WHERE id = 'm5';
RELEASE SAVEPOINT s3;
ROLLBACK TO SAVEPOINT s2;
SAVEPOINT s4;
UPDATE meetings SET title = 'a' WHERE id = 'm6';
RELEASE SAVEPOINT s4;
});
is($err, '', 'session A: statements ran');
is_deeply([ $redis->existing(@all) ], \@all, 'nothing deleted before commit');

# B commits while A is open; B also rolls back a transaction
($out, $err) = bg_query($sb, "UPDATE meetings SET title = 'b' WHERE id = 'm3'");
is($err, '', 'session B: commit');
bg_query($sb, "BEGIN; UPDATE meetings SET title = 'b' WHERE id = 'm7'; ROLLBACK;");
is_deeply([ $redis->existing(mkeys(3)) ], [], 'B committed: keys of m3 deleted');
my @rest = map { mkeys($_) } 1, 2, 4, 5, 6, 7, 8;
is_deeply([ $redis->existing(@rest) ], \@rest,
	'keys of uncommitted (A) and rolled-back (B) work untouched');

# A commits
($out, $err) = bg_query($sa, 'COMMIT');
is($err, '', 'session A: commit');
is_deeply([ $redis->existing(mkeys(1), mkeys(6)) ], [],
	'A committed: keys of m1 and m6 (released savepoint) deleted');
my @kept = map { mkeys($_) } 2, 4, 5, 7, 8;
is_deeply([ $redis->existing(@kept) ], \@kept,
	'keys of the rolled-back savepoints (m2, m4, m5) and of B\'s rollback (m7) untouched');

# A failed statement inside a savepoint, then the same rows touched again
$redis->set_keys(@all);
($out, $err) = bg_query($sa, q{
BEGIN;
SAVEPOINT s1;
UPDATE meetings SET title = 'c' WHERE id = 'm2';
UPDATE meetings SET host_id = 'nobody' WHERE id = 'm8';
ROLLBACK TO SAVEPOINT s1;
UPDATE meetings SET title = 'c' WHERE id = 'm4';
COMMIT;
});
like($err, qr/foreign key/, 'failing statement in a savepoint');
is_deeply([ $redis->existing(mkeys(4)) ], [], 'keys of m4 deleted');
my @k2 = map { mkeys($_) } 2, 8;
is_deeply([ $redis->existing(@k2) ], \@k2, 'keys of the failed savepoint (m2, m8) untouched');

# A transaction that fails as a whole deletes nothing
$redis->set_keys(@all);
($out, $err) = bg_query($sb, q{
BEGIN;
UPDATE meetings SET title = 'd' WHERE id = 'm5';
UPDATE meetings SET host_id = 'nobody' WHERE id = 'm6';
COMMIT;
});
like($err, qr/foreign key/, 'failing transaction');
is_deeply([ $redis->existing(@all) ], \@all, 'aborted transaction deleted nothing');

# Both sessions commit concurrently overlapping keys
$redis->set_keys(@all);
bg_query($sa, "BEGIN; UPDATE meetings SET title = 'e' WHERE id = 'm1';");
bg_query($sb, "BEGIN; UPDATE meetings SET title = 'e' WHERE id = 'm2';");
bg_query($sa, 'COMMIT');
is_deeply([ $redis->existing(mkeys(2)) ], [ mkeys(2) ], 'B still open: m2 keys kept');
bg_query($sb, 'COMMIT');
is_deeply([ $redis->existing(mkeys(1), mkeys(2)) ], [], 'both committed: keys deleted');

# TRUNCATE in a rolled-back savepoint deletes nothing; committed TRUNCATE does
$redis->set_keys('meeting:m1:recording', 'meeting:m1:chats:recent:50');
bg_query($sa, 'BEGIN; SAVEPOINT s; TRUNCATE recordings, chat_messages; ROLLBACK TO SAVEPOINT s; COMMIT;');
is_deeply([ $redis->existing('meeting:m1:recording', 'meeting:m1:chats:recent:50') ],
	[ 'meeting:m1:recording', 'meeting:m1:chats:recent:50' ],
	'TRUNCATE rolled back to a savepoint: keys untouched');

# meetcache.max_keys overflow (whole families) inside a rolled-back savepoint
$redis->set_keys(@all, 'user:zz', 'user:email:zz@x');
($out, $err) = bg_query($sa, q{
BEGIN;
SET LOCAL meetcache.max_keys = 6;
UPDATE meetings SET title = 'f' WHERE id = 'm1';
SAVEPOINT s;
INSERT INTO users (id, name, email) SELECT 'v' || g, 'V', 'v' || g || '@x' FROM generate_series(1, 20) g;
ROLLBACK TO SAVEPOINT s;
COMMIT;
});
note "stderr: $err";
is_deeply([ $redis->existing(mkeys(1)) ], [], 'overflow rolled back: keys of m1 deleted');
my @k3 = ((map { mkeys($_) } 2 .. 8), 'user:zz', 'user:email:zz@x');
is_deeply([ $redis->existing(@k3) ], \@k3,
	'overflow in a rolled-back savepoint: no family deleted');

# committed overflow deletes the whole families
($out, $err) = bg_query($sa, q{
BEGIN;
SET LOCAL meetcache.max_keys = 6;
INSERT INTO users (id, name, email) SELECT 'w' || g, 'W', 'w' || g || '@x' FROM generate_series(1, 20) g;
COMMIT;
});
is_deeply([ $redis->existing('user:zz', 'user:email:zz@x') ], [],
	'committed overflow: whole user families deleted');

$sa->quit;
$sb->quit;
done_testing();
