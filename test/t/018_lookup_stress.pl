# Lookup rules under concurrent links (issue 10), the stress version of
# 017_lookup_race.pl, after 006_leases.pl's stress test: readers (pgbench)
# fill every family of the default key scheme with cache_get_or_set, while
# writers concurrently
#   - move meetings between hosts, add participants and chat messages
#     (default delivery, autocommit), and
#   - rename users and retitle meetings (one pgbench per delivery mode: sync,
#     queue, sync+queue), each sleeping between its UPDATE and its COMMIT so
#     that links made by the others land between its lookup and its commit.
# The writers stop a second before the readers, then the queue drains; every
# key left in Redis must then equal what its query returns now (0 stale
# keys).  The fill queries are MeetcacheTest::fill_sql's (snake_case schema).
#
# The window is wide on purpose (a rename sleeps 0.5 s before its commit, the
# linkers are rate-limited to 200 transactions a second over 100 meetings, so
# that a stale key is not deleted again right away by the next link): without
# the post-commit lookups, a run leaves 5 to 25 stale keys (five trials).
#
# Knobs (environment): MEETCACHE_LOOKUP_SECS (8), MEETCACHE_LOOKUP_READERS (4),
# MEETCACHE_LOOKUP_SLEEP (0.5, seconds between a rename and its commit),
# MEETCACHE_LOOKUP_RATE (200, linker transactions a second in all),
# MEETCACHE_LOOKUP_USERS (10), MEETCACHE_LOOKUP_MEETINGS (100).
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use MeetcacheTest qw(start_redis new_node setup_schema fill_sql poll_sql);

my $SECS = $ENV{MEETCACHE_LOOKUP_SECS} // 8;
my $READERS = $ENV{MEETCACHE_LOOKUP_READERS} // 4;
my $SLEEP = $ENV{MEETCACHE_LOOKUP_SLEEP} // 0.5;
my $RATE = $ENV{MEETCACHE_LOOKUP_RATE} // 200;
my $NUSER = $ENV{MEETCACHE_LOOKUP_USERS} // 10;
my $NMEET = $ENV{MEETCACHE_LOOKUP_MEETINGS} // 100;

my $redis = start_redis();
my $node = new_node('lookup_stress', $redis,
	log_statement => 'none',
	conf => "max_connections = 40\nmeetcache.poll_interval = 100\n");
setup_schema($node);
{
	my @st = qw(SCHEDULED LIVE ENDED);
	my $sql = fill_sql('snake')
	  . "INSERT INTO users (id, name, email) VALUES "
	  . join(', ', map { "('u$_', 'User $_', 'u$_\@x')" } 1 .. $NUSER) . ";\n"
	  . "INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES "
	  . join(', ',
		map { "('m$_', 'title $_', 'u" . (1 + $_ % $NUSER) . "', 'inv-m$_', '$st[$_ % 3]')" }
		  1 .. $NMEET)
	  . ";\n"
	  . "INSERT INTO participants (id, meeting_id, user_id) VALUES "
	  . join(', ', map { "('p$_', 'm" . (1 + $_ % $NMEET) . "', 'u" . (1 + ($_ * 3) % $NUSER) . "')" }
		  1 .. 2 * $NMEET)
	  . ";\n"
	  . "INSERT INTO chat_messages (id, meeting_id, user_id, message) VALUES "
	  . join(', ', map { "('c$_', 'm$_', 'u" . (1 + ($_ * 7) % $NUSER) . "', 'hello')" } 1 .. $NMEET)
	  . ";\n";
	$node->safe_psql('postgres', $sql);
}

my $dir = $PostgreSQL::Test::Utils::tmp_check;
sub script
{
	my ($name, $text) = @_;
	my $f = "$dir/lookup_$name.sql";
	open my $fh, '>', $f or die "$f: $!";
	print $fh $text;
	close $fh;
	return $f;
}
# (pgbench substitutes :name even inside quotes: no variable is named m or u)
my $pick = "\\set mi random(1, $NMEET)\n\\set ui random(1, $NUSER)\n";
my $reader = script('reader', $pick . "\\set fi random(1, 8)\n"
	  . "SELECT meetcache.cache_get_or_set(k, fill_query(k), 600) FROM (SELECT (ARRAY["
	  . "'meeting:m' || :mi, 'meeting:invite:inv-m' || :mi, 'meetings:user:u' || :ui, "
	  . "'meetings:live', 'meetings:scheduled', 'meeting:m' || :mi || ':participants', "
	  . "'meeting:m' || :mi || ':chats:recent:50', 'user:u' || :ui || ':participations'])[:fi] AS k) s;\n");
my @linkers = (
	script('move', $pick . "UPDATE meetings SET host_id = 'u' || :ui WHERE id = 'm' || :mi;\n"),
	script('join', $pick
		  . "INSERT INTO participants (id, meeting_id, user_id) "
		  . "VALUES (gen_random_uuid()::text, 'm' || :mi, 'u' || :ui);\n"),
	script('chat', $pick
		  . "INSERT INTO chat_messages (id, meeting_id, user_id, message) "
		  . "VALUES (gen_random_uuid()::text, 'm' || :mi, 'u' || :ui, md5(random()::text));\n"));
my @renamers = (
	script('rename', $pick
		  . "BEGIN;\nUPDATE users SET name = 'n' || :client_id || '-' || md5(random()::text) WHERE id = 'u' || :ui;\n"
		  . "SELECT pg_sleep($SLEEP);\nCOMMIT;\n"),
	script('retitle', $pick
		  . "BEGIN;\nUPDATE meetings SET title = 't' || :client_id || '-' || md5(random()::text) WHERE id = 'm' || :mi;\n"
		  . "SELECT pg_sleep($SLEEP);\nCOMMIT;\n"));

my $pgbench = $node->installed_command('pgbench');
my @conn = ('-h', $node->host, '-p', $node->port);
sub pgbench
{
	my ($label, $clients, $secs, $rate, $options, @files) = @_;
	my %h = (label => $label, out => '', err => '');
	local $ENV{PGOPTIONS} = $options;
	$h{run} = IPC::Run::start(
		[
			$pgbench, '-n', @conn, '-c', $clients, '-j', $clients, '-T', $secs,
			($rate ? ('-R', $rate) : ()),
			(map { ('-f', $_) } @files), 'postgres'
		],
		'<', \undef, '>', \$h{out}, '2>', \$h{err},
		IPC::Run::timeout($secs + 60));
	return \%h;
}

my $t0 = time;
$node->safe_psql('postgres', 'SELECT meetcache.stats_reset()');
my @runs = (pgbench('readers', $READERS, $SECS + 1, 0, '', $reader));
ok( poll_sql($node, 'postgres',
		"SELECT count(*) >= $READERS FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"),
	'the readers are connected before the writers start');
push @runs, pgbench('linkers', 2, $SECS, $RATE, '', @linkers);
push @runs, pgbench("renamers ($_)", 1, $SECS, 0, "-c meetcache.delivery=$_", @renamers)
  for 'sync', 'queue', 'sync+queue';
for my $h (@runs)
{
	my $ok = eval { $h->{run}->finish };
	ok($ok, "$h->{label}: pgbench ran without error") or diag "$h->{out}\n$h->{err}\n$@";
	my ($n) = $h->{out} =~ /number of transactions actually processed: (\d+)/;
	cmp_ok($n // 0, '>=', 5, "$h->{label}: made progress");
	note "$h->{label}: " . ($n // 0) . ' transactions';
}

ok( poll_sql($node, 'postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'client backend' "
		  . "AND pid <> pg_backend_pid()"),
	'all sessions ended');
ok(poll_sql($node, 'postgres', 'SELECT count(*) = 0 FROM meetcache.pending'),
	'the queue is empty');

my $keys = q{WITH v AS (SELECT key, meetcache.cache_get(key) AS cached, fill_now(key) AS now
  FROM meetcache.cache_keys('*', 100000) WHERE key NOT LIKE 'mc-lease%')};
my $checked = $node->safe_psql('postgres', "$keys SELECT count(*) FROM v");
my @stale = split /\n/, $node->safe_psql('postgres',
	"$keys SELECT key || ' cached ' || cached::text || ' now ' || now::text "
	  . 'FROM v WHERE cached IS DISTINCT FROM now ORDER BY key');
note $node->safe_psql('postgres',
	"SELECT format('hits=%s misses=%s bypasses=%s lease_refused=%s', "
	  . "cache_hits, cache_misses, cache_bypasses, lease_refused) FROM meetcache.stats");
cmp_ok($checked, '>', 20, "some keys are cached at the end ($checked)");
is(scalar @stale, 0, "ZERO stale keys after concurrent renames and links ($checked checked)");
if (@stale)
{
	my %fam;
	for (@stale)
	{
		my ($k) = split / /;
		(my $f = $k) =~ s/[mu]\d+/N/g;
		$fam{$f}++;
	}
	diag "stale keys by family: " . join(', ', map { "$_ $fam{$_}" } sort keys %fam);
	diag $_ for @stale[ 0 .. ($#stale < 9 ? $#stale : 9) ];
}
note sprintf('stress run in %.1fs', time - $t0);

my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|was terminated by signal|server process .* exited with exit code [^0]/,
	'no crash in the server log');
done_testing();
