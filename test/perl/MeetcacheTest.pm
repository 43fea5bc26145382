
# MeetcacheTest: helpers for meetcache's TAP tests.
#
#   use MeetcacheTest;
#   my $redis = MeetcacheTest::start_redis();            # private redis-server
#   my $node  = MeetcacheTest::new_node('main', $redis);  # preloaded PG cluster
#   MeetcacheTest::setup_schema($node);                  # reference schema + attach
#   MeetcacheTest::setup_schema($node, 'camel', 'camel'); # the camelCase one
#   $redis->cli('SET', 'meeting:m1', '1');
#   $redis->freeze; $redis->thaw; $redis->restart(keep_data => 1); $redis->stop;
#
# Every redis-server started here listens on a free 127.0.0.1 port and is
# killed when the test script exits (PostgreSQL::Test::Cluster stops its nodes).
#
# SQL in a new session: run_sql (exit code, stdout, stderr), refused (an
# error with a given SQLSTATE), all_always (the triggers of a table are
# intact); make_rows (users hosting meetings).  Server log and config:
# log_since, reload_and_wait, write_secret_file, no_secret.
#
# Fault tests: poll_until / poll_sql (bounded waits), stats($node) (a hash of
# meetcache.stats), wait_redis_state, wait_queue_empty, run_load/finish_load
# (pgbench write load: failed transactions, max latency), $redis->set_many /
# existing_many (thousands of keys at once), under_load/kill_under_load (an
# action under pgbench: zero failed transactions), load_options (PGOPTIONS
# per delivery mode), and MeetcacheTest::Checker ("nothing lost": keys that
# committed changes must delete, keys that must survive, a bounded wait,
# two assertions).  lease_race: the lease stress test (006, 023) against
# one server or a cluster.

package MeetcacheTest;

use strict;
use warnings;

use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use File::Temp ();
use IO::Socket::INET;
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(time usleep);

our @EXPORT_OK = qw(start_redis new_node setup_schema schema_sql free_port run_matrix
  under_load kill_under_load
  with_columns fill_sql lookup_rows_sql cache_old make_rows
  run_sql refused all_always
  bg_session bg_query bg_send bg_wait_for elapsed
  poll_until poll_sql stats wait_redis_state wait_queue_empty run_load
  finish_load load_options lease_race log_since reload_and_wait write_secret_file no_secret);

my $repo = $ENV{MEETCACHE_REPO}
  // File::Spec->rel2abs(dirname(__FILE__) . '/../..');


# A free TCP port on 127.0.0.1, chosen by the kernel.
sub free_port
{
	my $s = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Proto => 'tcp',
		Listen => 1,
		ReuseAddr => 1) or die "cannot find a free port: $!";
	my $port = $s->sockport;
	close $s;
	return $port;
}

sub start_redis { return MeetcacheTest::Redis->new(@_); }

# A reference schema as SQL text: 'snake' (default, snake_case columns) or
# 'camel' (Prisma's camelCase columns and enum types).
sub schema_sql
{
	my ($variant) = @_;
	$variant //= 'snake';
	return PostgreSQL::Test::Utils::slurp_file("$repo/test/fixtures/meet_$variant.sql");
}

# $sql with the {column} placeholders of the reference schemas (host_id,
# invite_code, meeting_id, user_id, sent_at) replaced by the physical column
# names of schema $variant ('snake' or 'camel').
my %camel_cols = (
	host_id => '"hostId"',
	invite_code => '"inviteCode"',
	meeting_id => '"meetingId"',
	user_id => '"userId"',
	sent_at => '"sentAt"');
sub with_columns
{
	my ($variant, $sql) = @_;
	$sql =~ s/\{(\w+)\}/
	  exists $camel_cols{$1} ? ($variant eq 'camel' ? $camel_cols{$1} : $1) : "{$1}"/ge;
	return $sql;
}

# The rows of the lookup race tests (017, 027), with with_columns
# placeholders: users u1 (hosts, joins and writes nothing), u2 (hosts m9 and
# m8, joins m9, writes both chats) and u3 (joins m8); m9 LIVE, m8 SCHEDULED.
sub lookup_rows_sql
{
	return <<'SQL';
DELETE FROM chat_messages; DELETE FROM participants; DELETE FROM meetings; DELETE FROM users;
INSERT INTO users (id, name, email) VALUES
  ('u1', 'OldName', 'u1@x'), ('u2', 'Host2', 'u2@x'), ('u3', 'User3', 'u3@x');
INSERT INTO meetings (id, title, {host_id}, {invite_code}, status) VALUES
  ('m9', 'OldTitle', 'u2', 'inv-m9', 'LIVE'), ('m8', 'T8', 'u2', 'inv-m8', 'SCHEDULED');
INSERT INTO participants (id, {meeting_id}, {user_id}) VALUES ('p1', 'm9', 'u2'), ('p2', 'm8', 'u3');
INSERT INTO chat_messages (id, {meeting_id}, {user_id}, message) VALUES ('c1', 'm9', 'u2', 'hello'), ('c2', 'm8', 'u2', 'hi');
SQL
}

# Session $s (bg_session, with fill_sql's functions) fills $key with
# cache_get_or_set; returns the failures (none: it holds $old, the value
# a stale read would keep), each prefixed with $what.
sub cache_old
{
	my ($s, $redis, $key, $old, $what) = @_;
	my @fail;
	my ($out, $err) = bg_query($s,
		"SELECT meetcache.cache_get_or_set('$key', fill_query('$key'), 600)");
	push @fail, "$what: C: $err" if $err ne '';
	my $cached = $redis->cli('GET', $key);
	push @fail, "$what: precondition: C did not cache '$old' in $key (got '$cached')"
	  unless index($cached, $old) >= 0;
	return @fail;
}

# SQL creating, in schema $variant, the application's queries of the default
# key scheme (docs/keys.md): fill_query(key) is the text of the query that
# fills key (one jsonb column, always one row, with the embedded names and
# titles), for cache_get_or_set; fill_now(key) runs it and returns its result.
sub fill_sql
{
	my ($variant) = @_;
	my $host = q{jsonb_build_object('id', u.id, 'name', u.name)};
	# only the live list embeds participant counts (docs/keys.md: a
	# participant change invalidates meetings:live, not the other lists)
	my $list = q{SELECT coalesce(jsonb_agg(x.j ORDER BY x.id), '[]') FROM (SELECT m.id, }
	  . qq{jsonb_build_object('id', m.id, 'title', m.title, 'host', $host) AS j }
	  . q{FROM meetings m JOIN users u ON u.id = m.{host_id} WHERE %s ORDER BY m.id LIMIT 20) x};
	my $live = q{SELECT coalesce(jsonb_agg(x.j ORDER BY x.id), '[]') FROM (SELECT m.id, }
	  . qq{jsonb_build_object('id', m.id, 'title', m.title, 'host', $host, 'participants', }
	  . q{(SELECT count(*) FROM participants p WHERE p.{meeting_id} = m.id)) AS j }
	  . q{FROM meetings m JOIN users u ON u.id = m.{host_id} WHERE %s ORDER BY m.id LIMIT 20) x};
	my $sql = <<"SQL";
CREATE FUNCTION fill_query(k text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS \$f\$
DECLARE a text[];
BEGIN
  IF k = 'meetings:live' THEN
    RETURN format(\$q\$$live\$q\$, \$c\$m.status = 'LIVE'\$c\$);
  END IF;
  IF k = 'meetings:scheduled' THEN
    RETURN format(\$q\$$list\$q\$, \$c\$m.status = 'SCHEDULED'\$c\$);
  END IF;
  a := regexp_match(k, '^meetings:user:(.+)\$');
  IF a IS NOT NULL THEN
    RETURN format(\$q\$$list\$q\$, format('m.{host_id} = %L', a[1]));
  END IF;
  a := regexp_match(k, '^meeting:invite:(.+)\$');
  IF a IS NOT NULL THEN
    RETURN format(\$q\$SELECT (SELECT jsonb_build_object('id', m.id, 'title', m.title, 'status', m.status, 'host', $host)
      FROM meetings m JOIN users u ON u.id = m.{host_id} WHERE m.{invite_code} = %L)\$q\$, a[1]);
  END IF;
  a := regexp_match(k, '^meeting:([^:]+)\$');
  IF a IS NOT NULL THEN
    RETURN format(\$q\$SELECT (SELECT jsonb_build_object('id', m.id, 'title', m.title, 'host', $host,
        'participants', (SELECT count(*) FROM participants p WHERE p.{meeting_id} = m.id),
        'chats', (SELECT count(*) FROM chat_messages c WHERE c.{meeting_id} = m.id))
      FROM meetings m JOIN users u ON u.id = m.{host_id} WHERE m.id = %L)\$q\$, a[1]);
  END IF;
  a := regexp_match(k, '^meeting:([^:]+):participants\$');
  IF a IS NOT NULL THEN
    RETURN format(\$q\$SELECT coalesce(jsonb_agg(jsonb_build_object('id', p.id, 'user', $host) ORDER BY p.id), '[]')
      FROM participants p JOIN users u ON u.id = p.{user_id} WHERE p.{meeting_id} = %L\$q\$, a[1]);
  END IF;
  a := regexp_match(k, '^meeting:([^:]+):chats:recent:50\$');
  IF a IS NOT NULL THEN
    RETURN format(\$q\$SELECT coalesce(jsonb_agg(x.j ORDER BY x.t DESC, x.id DESC), '[]')
      FROM (SELECT c.id, c.{sent_at} AS t, jsonb_build_object('id', c.id, 'message', c.message, 'user', $host) AS j
            FROM chat_messages c JOIN users u ON u.id = c.{user_id} WHERE c.{meeting_id} = %L
            ORDER BY c.{sent_at} DESC, c.id DESC LIMIT 50) x\$q\$, a[1]);
  END IF;
  a := regexp_match(k, '^user:([^:]+):participations\$');
  IF a IS NOT NULL THEN
    RETURN format(\$q\$SELECT coalesce(jsonb_agg(jsonb_build_object('id', p.id,
        'meeting', jsonb_build_object('id', m.id, 'title', m.title, 'status', m.status)) ORDER BY p.id), '[]')
      FROM participants p JOIN meetings m ON m.id = p.{meeting_id} WHERE p.{user_id} = %L\$q\$, a[1]);
  END IF;
  RAISE EXCEPTION 'no fill query for key %', k;
END \$f\$;
CREATE FUNCTION fill_now(k text) RETURNS jsonb LANGUAGE plpgsql AS \$f\$
DECLARE r jsonb;
BEGIN
  EXECUTE fill_query(k) INTO r;
  RETURN r;
END \$f\$;
SQL
	return with_columns($variant, $sql);
}

# A started PostgreSQL::Test::Cluster node preloading meetcache, pointing at
# $redis (a MeetcacheTest::Redis).  Options:
#   url  => 'redis://...'   instead of $redis->url
#   conf => "extra = 'lines'\n"
#   log_statement => 'none' (the Cluster default is 'all')
#   preload => 0            shared_preload_libraries stays empty
sub new_node
{
	my ($name, $redis, %o) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	my $url = $o{url} // $redis->url;
	my $preload = (!defined $o{preload} || $o{preload}) ? 'meetcache' : '';
	my $conf = "shared_preload_libraries = '$preload'\n"
	  . "meetcache.redis_url = '$url'\n";
	$conf .= "log_statement = '$o{log_statement}'\n" if defined $o{log_statement};
	$conf .= $o{conf} if defined $o{conf};
	$node->append_conf('postgresql.conf', $conf);
	$node->start;
	return $node;
}

# Reference schema ($variant: see schema_sql) + CREATE EXTENSION +
# attach_defaults in database $db.
sub setup_schema
{
	my ($node, $db, $variant) = @_;
	$db //= 'postgres';
	$node->safe_psql($db, schema_sql($variant));
	$node->safe_psql($db,
		"CREATE EXTENSION meetcache; SELECT meetcache.attach_defaults();");
	return;
}

# The pg_regress invalidation matrix (test/sql/matrix_$variant.sql, 'snake' or
# 'camel') on this node, in a new database of its own, through whatever
# transport the node's meetcache.redis_url uses; its output is compared with
# expected/matrix_$variant.out as pg_regress would. Returns (ok, diff).
sub run_matrix
{
	my ($node, $variant) = @_;
	my $db = "matrix_$variant";
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	my $out = $node->basedir . "/matrix_$variant.out";
	local $ENV{PGOPTIONS} = '-c meetcache.commit_timeout=10s';
	local $ENV{PGTZ} = 'PST8PDT';
	local $ENV{PGDATESTYLE} = 'Postgres, MDY';
	local $ENV{LC_MESSAGES} = 'C';
	my $cwd = File::Spec->rel2abs('.');
	chdir $repo or die "chdir $repo: $!";
	# as pg_regress runs it: echo all, errors into the same file
	my $rc = system('psql -X -a -q -v HIDE_TABLEAM=on -v HIDE_TOAST_COMPRESSION=on '
		  . "-h '" . $node->host . "' -p " . $node->port . " -d $db "
		  . "-f test/sql/matrix_$variant.sql >'$out' 2>&1") >> 8;
	chdir $cwd;
	my $diff = `diff -u '$repo/expected/matrix_$variant.out' '$out'`;
	return ($rc == 0 && $? == 0, "psql exit $rc\n" . $diff);
}

# $action->() under a pgbench write load: run_load(%load) in the
# background, the action once $running_sql returns t; asserts that pgbench
# ended without an error or a failed transaction and returns its result
# (finish_load).
sub under_load
{
	my ($node, $what, $running_sql, $action, %load) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $l = run_load($node, %load, background => 1);
	Test::More::ok(poll_sql($node, 'postgres', $running_sql), "$what: load running");
	$action->();
	my $r = finish_load($l);
	Test::More::note(sprintf('%s: rc %s, %s transactions, %s failed, max latency %.3fs',
		$what, $r->{rc}, $r->{processed} // '?', $r->{failed} // '?', $r->{max_latency}));
	Test::More::is($r->{rc}, 0, "$what: pgbench succeeded")
	  or Test::More::diag($r->{stdout} . $r->{stderr});
	Test::More::ok(defined $r->{processed} && $r->{processed} > 0 && $r->{failed} == 0,
		"$what: zero failed transactions");
	Test::More::unlike($r->{stderr}, qr/ERROR|FATAL|PANIC|abort/i, "$what: no error");
	return $r;
}

# A Redis ($victim, a RedisServer) killed with SIGKILL under a pgbench write
# load (under_load).
sub kill_under_load
{
	my ($node, $victim, $what, $running_sql, %load) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return under_load(
		$node, $what,
		$running_sql,
		sub {
			kill 'KILL', $victim->pid;
			waitpid($victim->pid, 0);
			$victim->{pid} = undef;
		},
		%load);
}

# Users u<prefix><g> hosting ENDED meetings m<prefix><g> (invite code
# inv-m<prefix><g>), g = 1 .. $count, in database $db: each prefix has keys
# of its own.
sub make_rows
{
	my ($node, $db, $prefix, $count) = @_;
	$node->safe_psql($db, qq{
INSERT INTO users (id, name, email)
  SELECT 'u$prefix' || g, 'U', 'u$prefix' || g || '\@x' FROM generate_series(1, $count) g;
INSERT INTO meetings (id, title, host_id, invite_code, status)
  SELECT 'm$prefix' || g, 't0', 'u$prefix' || g, 'inv-m$prefix' || g, 'ENDED' FROM generate_series(1, $count) g;
});
	return;
}

# $sql in a new psql session on database $db.  Options:
#   user => 'role'        connect as that role (-U)
#   verbose => 1          \set VERBOSITY verbose (SQLSTATEs in stderr)
#   delivery => 'queue'   SET meetcache.delivery first
#   redis_url => 'redis://...'   SET meetcache.redis_url first
#   on_error_stop => 0    go on after errors (default: stop)
#   timeout => 60         seconds (default 60)
# Returns (exit code, stdout, stderr).
sub run_sql
{
	my ($node, $db, $sql, %o) = @_;
	my ($out, $err) = ('', '');
	$sql = "SET meetcache.redis_url = '$o{redis_url}';\n$sql" if defined $o{redis_url};
	$sql = "SET meetcache.delivery = '$o{delivery}';\n$sql" if defined $o{delivery};
	$sql = "\\set VERBOSITY verbose\n$sql" if $o{verbose};
	my $rc = $node->psql($db, $sql,
		stdout => \$out, stderr => \$err,
		timeout => $o{timeout} // 60,
		on_error_stop => $o{on_error_stop} // 1,
		extra_params => [ defined $o{user} ? ('-U', $o{user}) : () ]);
	return ($rc, $out // '', $err // '');
}

# Two assertions: $sql (run_sql options in %o, verbose always) fails, with
# SQLSTATE $state.  Returns stderr.
sub refused
{
	my ($node, $db, $sql, $state, $name, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($rc, $out, $err) = run_sql($node, $db, $sql, %o, verbose => 1);
	Test::More::isnt($rc, 0, "$name: refused");
	Test::More::like($err, qr/ERROR:  $state:/, "$name: SQLSTATE $state")
	  or Test::More::diag($err);
	return $err;
}

# 't' if relation $rel is attached with its four meetcache triggers, all
# ENABLE ALWAYS; 'f' otherwise (also when not attached).
sub all_always
{
	my ($node, $rel, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		"SELECT coalesce(bool_and(triggers = 4 AND enabled_always), false) "
		  . "FROM meetcache.attached WHERE relation = to_regclass('$rel')");
}

# The node's server log from byte $pos on.
sub log_since
{
	my ($node, $pos) = @_;
	return PostgreSQL::Test::Utils::slurp_file($node->logfile, $pos);
}

# pg_reload_conf(), then wait (bounded) until the postmaster, which new
# backends copy, has re-read the configuration.  True if it did.
sub reload_and_wait
{
	my ($node, $secs) = @_;
	my $reloads = sub {
		my $n = () = PostgreSQL::Test::Utils::slurp_file($node->logfile)
		  =~ /received SIGHUP, reloading configuration files/g;
		return $n;
	};
	my $before = $reloads->();
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	return poll_until($secs // 20, sub { $reloads->() > $before }) ? 1 : 0;
}

# Replaces file $path atomically (rename) with $content, mode $mode
# (default 0600, as meetcache.redis_password_file requires).
sub write_secret_file
{
	my ($path, $content, $mode) = @_;
	open(my $fh, '>', "$path.tmp") or die "cannot write $path.tmp: $!";
	print $fh $content;
	close $fh;
	chmod $mode // 0600, "$path.tmp";
	rename("$path.tmp", $path) or die "cannot rename to $path: $!";
	return;
}

# One assertion: $text holds none of @secrets.
sub no_secret
{
	my ($text, $what, @secrets) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my @found = grep { index($text // '', $_) >= 0 } @secrets;
	my $ok = Test::More::ok(!@found, "$what: no password in it");
	Test::More::diag("found: @found") unless $ok;
	return $ok;
}

# A BackgroundPsql session that survives errors, with a per-query timeout.
sub bg_session
{
	my ($node, $db, %o) = @_;
	my $s = $node->background_psql($db // 'postgres',
		on_error_stop => 0,
		timeout => $o{timeout} // 60);
	$s->set_query_timer_restart;
	return $s;
}

# Run $sql in a session; returns (stdout, stderr) of that query only.
sub bg_query
{
	my ($s, $sql) = @_;
	$s->{stderr} = '';
	my ($out) = $s->query($sql);
	my $err = $s->{stderr};
	$s->{stderr} = '';
	chomp $out if defined $out;
	return wantarray ? ($out, $err) : $out;
}

# Send $sql without waiting; returns a tag for bg_wait_for.
my $send_cnt = 0;
sub bg_send
{
	my ($s, $sql) = @_;
	my $tag = 'MEETCACHE_DONE_' . (++$send_cnt);
	$s->{stdout} = '';
	$s->{stderr} = '';
	$s->{stdin} .= "$sql\n;\n\\echo '$tag'\n\\warn '$tag'\n";
	$s->{run}->pump_nb;
	return $tag;
}

# Wait at most $secs seconds for the statement sent with tag $tag to finish.
# Returns (finished?, stdout, stderr).
sub bg_wait_for
{
	my ($s, $tag, $secs) = @_;
	my $deadline = time + $secs;
	while (time < $deadline)
	{
		$s->{run}->pump_nb;
		last
		  if $s->{stdout} =~ /\Q$tag\E\n/ && $s->{stderr} =~ /\Q$tag\E\n/;
		usleep(20_000);
	}
	my $done = ($s->{stdout} =~ /\Q$tag\E\n/ && $s->{stderr} =~ /\Q$tag\E\n/) ? 1 : 0;
	my ($out, $err) = ($s->{stdout}, $s->{stderr});
	$out =~ s/\Q$tag\E\n//;
	$err =~ s/\Q$tag\E\n//;
	if ($done)
	{
		$s->{stdout} = '';
		$s->{stderr} = '';
	}
	chomp $out;
	return ($done, $out, $err);
}

# Seconds taken by $code->().  Returns (seconds, result list...).
sub elapsed
{
	my ($code) = @_;
	my $t0 = time;
	my @r = $code->();
	return (time - $t0, @r);
}

# Calls $code->() until it returns true, at most $secs seconds (every
# 50 ms).  Returns the last result (false on timeout).
sub poll_until
{
	my ($secs, $code) = @_;
	my $deadline = time + $secs;
	while (1)
	{
		my $r = $code->();
		return $r if $r;
		return $r if time >= $deadline;
		usleep(50_000);
	}
}

# Runs $sql (new psql each time, so it survives a server restart) until
# its output is $expected (default 't'), at most $secs seconds (default 20).
# Returns 1, or 0 after a diag of the last output.
sub poll_sql
{
	my ($node, $db, $sql, $expected, $secs) = @_;
	$expected //= 't';
	$secs //= 20;
	my ($out, $err) = ('', '');
	my $ok = poll_until(
		$secs,
		sub {
			($out, $err) = ('', '');
			$node->psql($db, $sql, stdout => \$out, stderr => \$err,
				timeout => 30);
			chomp $out;
			return $out eq $expected;
		});
	Test::More::diag("poll_sql timed out after ${secs}s: $sql\n"
		  . "  expected: $expected\n  got: $out\n  stderr: $err")
	  unless $ok;
	return $ok ? 1 : 0;
}

# Columns of meetcache.stats in database $db, as a hash.
sub stats
{
	my ($node, $db, @cols) = @_;
	@cols = qw(worker_state launcher_pid redis_state queue_depth
	  retry_queue_entries breaker_trips handoffs retries retry_overflows
	  family_flushes queue_rows_written queue_rows_done queue_rows_skipped
	  worker_failures delivery_failures)
	  unless @cols;
	my $out = $node->safe_psql($db // 'postgres',
		'SELECT ' . join(" || '|' || ", map { "coalesce(${_}::text, '')" } @cols)
		  . ' FROM meetcache.stats');
	my @v = split /\|/, $out, -1;
	my %h;
	@h{@cols} = @v;
	return \%h;
}

# Bounded waits on meetcache.stats.
sub wait_redis_state
{
	my ($node, $state, $secs, $db) = @_;
	return poll_sql($node, $db // 'postgres',
		'SELECT redis_state FROM meetcache.stats', $state, $secs // 20);
}

sub wait_queue_empty
{
	my ($node, $db, $secs) = @_;
	# rows whose keys wait, and rows whose lookups wait to be resolved again
	# (a backend that delivered its keys wakes the drain for those at once)
	return poll_sql($node, $db // 'postgres',
		'SELECT s.queue_depth = 0 AND coalesce(s.retry_queue_entries, 0) = 0 AND '
		  . 'NOT EXISTS (SELECT FROM meetcache.pending p WHERE p.nlookups > 0) FROM meetcache.stats s',
		't', $secs // 20);
}

# Write load with pgbench: several sessions, each transaction one script.
#   run_load($node,
#     scripts => [ [ $sql, $weight ], ... ],
#     clients => 4, seconds => 3, db => 'postgres',
#     rate => 500,      # transactions per second in all (pgbench -R)
#     options => '-c meetcache.delivery=queue',   # PGOPTIONS of every session
#     background => 1)   # returns a handle for finish_load instead
# Returns a hash: rc, processed, failed, max_latency (seconds, over every
# transaction, from pgbench's per-transaction log, schedule lag of -R
# not counted), stdout, stderr.
my $load_cnt = 0;
sub run_load
{
	my ($node, %o) = @_;
	my $dir = File::Spec->rel2abs(
		File::Temp::tempdir(
			'load_XXXX',
			DIR => $PostgreSQL::Test::Utils::tmp_check,
			CLEANUP => 1));
	my @cmd = (
		'pgbench', '-n',
		'-h' => $node->host,
		'-p' => $node->port,
		'-c' => $o{clients} // 4,
		'-j' => $o{jobs} // 2,
		'-T' => $o{seconds} // 3,
		'-l', "--log-prefix=$dir/tx");
	push @cmd, '-R' => $o{rate} if $o{rate};
	my $i = 0;
	for my $sc (@{ $o{scripts} })
	{
		my ($sql, $w) = @$sc;
		my $f = "$dir/script" . (++$i) . '.sql';
		open my $fh, '>', $f or die "$f: $!";
		print $fh $sql;
		close $fh;
		push @cmd, '-f', "$f\@" . ($w // 1);
	}
	push @cmd, $o{db} // 'postgres';
	my $h = {
		dir => $dir,
		stdout => '',
		stderr => '',
		seconds => $o{seconds} // 3,
		rate => $o{rate},
	};
	local $ENV{PGOPTIONS} = $o{options} // '';
	$h->{run} = IPC::Run::start(\@cmd, '<', \undef, '>', \$h->{stdout},
		'2>', \$h->{stderr},
		IPC::Run::timeout(($o{seconds} // 3) + 120));
	return $h if $o{background};
	return finish_load($h);
}

# PGOPTIONS of a write load in delivery mode $mode (sync, queue,
# sync+queue): the modes that deliver at commit wait at most 300 ms
sub load_options
{
	my ($mode) = @_;
	return "-c meetcache.delivery=$mode"
	  . ($mode eq 'queue' ? '' : ' -c meetcache.commit_timeout=300ms');
}

sub finish_load
{
	my ($h) = @_;
	my $ok = eval { $h->{run}->finish; 1 };
	my %r = (
		rc => $ok ? $h->{run}->result(0) : -1,
		stdout => $h->{stdout},
		stderr => $h->{stderr} . ($ok ? '' : "\n(pgbench: $@)"));
	$r{processed} = $1
	  if $h->{stdout} =~ /number of transactions actually processed: (\d+)/;
	$r{failed} = $1 if $h->{stdout} =~ /number of failed transactions: (\d+)/;
	$r{failed} //= 0 if defined $r{processed};
	my $max = 0;
	my $n = 0;
	opendir(my $d, $h->{dir}) or die "$h->{dir}: $!";
	for my $f (grep { /^tx\./ } readdir $d)
	{
		open my $fh, '<', "$h->{dir}/$f" or die "$f: $!";
		while (<$fh>)
		{
			my @c = split;
			next unless @c >= 3 && $c[2] =~ /^\d+$/;
			my $lat = $c[2];
			# with -R, "time" counts from the scheduled start
			$lat -= $c[6] if $h->{rate} && @c >= 7 && $c[6] =~ /^\d+$/;
			$n++;
			$max = $lat if $lat > $max;
		}
		close $fh;
	}
	closedir $d;
	$r{logged} = $n;
	$r{max_latency} = $max / 1e6;
	return \%r;
}

###########################################################################
# The lease race (006 a, 023): readers call cache_get_or_set on
# meeting:m1..m$nmeet while writers update those meetings; afterwards no
# key in Redis may differ from what its query returns now, and with
# meetcache.lease_check = off the same harness must find stale keys.
#
#   lease_race($node, $redis, name => 'cluster', during => sub { ... });
#
# $redis is a MeetcacheTest::Redis or ::RedisCluster; the meetings
# m1..m$nmeet exist.  Options: secs (8), readers (6), sleep (0.005: the
# readers' query sleeps that long), nmeet (50), name (a prefix of the
# assertions' names), during (runs while the readers and writers of the
# lease_check = on run do; the stress waits for it).
sub lease_race
{
	my ($node, $redis, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $p = defined $o{name} ? "$o{name}: " : '';
	my $on = lease_stress($node, $redis, %o, label => "${p}leases on", lease_check => 1);
	Test::More::cmp_ok($on->{reads}, '>', 100, "${p}leases on: readers made progress");
	Test::More::cmp_ok($on->{writes}, '>', 100, "${p}leases on: writers made progress");
	Test::More::cmp_ok($on->{checked}, '>', 0, "${p}leases on: some keys are cached at the end");
	Test::More::is_deeply($on->{stale}, [], "${p}leases on: ZERO stale keys");
	Test::More::cmp_ok($on->{lease_refused}, '>', 0,
		"${p}leases on: invalidations overtook lease holders (lease_refused > 0): the race was exercised");
	Test::More::is_deeply($on->{leases_left}, [], "${p}leases on: no lease key left behind");

	# Without leases about 5 of the 50 keys end up stale (4-10 in trials); a
	# run with none is rare (under 1 %), so allow up to three runs before
	# concluding that the harness cannot see the race.
	my $off;
	for my $try (1 .. 3)
	{
		$off = lease_stress($node, $redis, %o, during => undef,
			label => "${p}leases off (run $try)", lease_check => 0);
		last if @{ $off->{stale} };
	}
	Test::More::cmp_ok($off->{reads}, '>', 100, "${p}leases off: readers made progress");
	Test::More::cmp_ok(scalar @{ $off->{stale} }, '>', 0,
		"${p}leases off: the same harness finds stale keys (it can fail)");
	Test::More::note("stale with lease_check = off: $_") for @{ $off->{stale} }[ 0 .. 2 ];
	Test::More::is($off->{lease_refused}, 0, "${p}leases off: no lease refusals counted");
	return ($on, $off);
}

# One run of the lease race (options of lease_race, and label,
# lease_check); returns a hash: reads, writes, stats (a line of
# counters), lease_refused, checked (keys compared), stale
# ([ descriptions ]), leases_left ([ lease keys ]).
sub lease_stress
{
	my ($node, $redis, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($label, $secs, $readers) = ($o{label}, $o{secs} // 8, $o{readers} // 6);
	my $nmeet = $o{nmeet} // 50;
	my $sleep = $o{sleep} // 0.005;
	my $dir = File::Temp::tempdir('lease_XXXX', DIR => $PostgreSQL::Test::Utils::tmp_check,
		CLEANUP => 1);
	my $rq = "SELECT title, status, pg_sleep($sleep)::text AS s FROM meetings WHERE id = \$1";
	PostgreSQL::Test::Utils::append_to_file("$dir/reader.sql",
		"\\set id random(1, $nmeet)\n"
		  . "SELECT meetcache.cache_get_or_set('meeting:m' || :id, '$rq', NULL, 'm' || :id);\n");
	PostgreSQL::Test::Utils::append_to_file("$dir/writer.sql",
		"\\set id random(1, $nmeet)\n"
		  . "\\set st random(1, 3)\n"
		  . "UPDATE meetings SET title = 'w' || :client_id || '-' || md5(random()::text), "
		  . "status = (ARRAY['SCHEDULED', 'LIVE', 'ENDED'])[:st] WHERE id = 'm' || :id;\n");
	my $pgbench = $node->installed_command('pgbench');
	my @conn = ('-h', $node->host, '-p', $node->port);
	my $others = "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
	  . 'AND pid <> pg_backend_pid())';

	$redis->flushall;
	$node->safe_psql('postgres', 'SELECT meetcache.stats_reset()');
	my ($rout, $rerr, $wout, $werr) = ('', '', '', '');
	my $rh;
	{
		local %ENV = %ENV;
		if ($o{lease_check}) { delete $ENV{PGOPTIONS}; }
		else { $ENV{PGOPTIONS} = '-c meetcache.lease_check=off'; }
		$rh = IPC::Run::start(
			[
				$pgbench, '-n', @conn, '-c', $readers, '-j', $readers,
				'-T', $secs + 1, '-f', "$dir/reader.sql", 'postgres'
			],
			'<', \undef, '>', \$rout, '2>', \$rerr,
			IPC::Run::timeout($secs + 120));
	}
	# The writers stop a second before the readers: a stale value stored
	# during the writes survives (it is a hit), and nothing deletes it.
	Test::More::ok(poll_sql($node, 'postgres', "SELECT $others >= $readers"),
		"$label: the readers are connected before the writers start");
	my $wh = IPC::Run::start(
		[ $pgbench, '-n', @conn, '-c', 2, '-j', 2, '-T', $secs, '-f', "$dir/writer.sql", 'postgres' ],
		'<', \undef, '>', \$wout, '2>', \$werr,
		IPC::Run::timeout($secs + 120));
	$o{during}->() if $o{during};
	my $rok = eval { $rh->finish };
	my $wok = eval { $wh->finish };
	Test::More::ok($rok, "$label: readers (pgbench) ran without error")
	  or Test::More::diag("$rout\n$rerr\n$@");
	Test::More::ok($wok, "$label: writers (pgbench) ran without error")
	  or Test::More::diag("$wout\n$werr\n$@");
	$node->poll_query_until('postgres', "SELECT $others = 0")
	  or Test::More::diag('other client backends still active');

	my %r;
	($r{reads}) = $rout =~ /number of transactions actually processed: (\d+)/;
	($r{writes}) = $wout =~ /number of transactions actually processed: (\d+)/;
	$r{$_} //= 0 for qw(reads writes);
	my @cols = qw(cache_hits cache_misses cache_bypasses lease_waits lease_refused lease_timeouts);
	my $s = stats($node, 'postgres', @cols);
	$r{stats} = join(' ', map { "$_=$s->{$_}" } @cols);
	$r{lease_refused} = $s->{lease_refused};
	($r{checked}, $r{stale}) = lease_stale_keys($node, $redis);
	$r{leases_left} = [ grep { /mc-lease/ } $redis->scan_keys('*mc-lease*') ];
	Test::More::note(sprintf('%s: %d reads, %d writes; %s; %d keys checked, %d stale',
		$label, $r{reads}, $r{writes}, $r{stats}, $r{checked}, scalar @{ $r{stale} }));
	return \%r;
}

# Keys meeting:mN in Redis whose value differs from what the lease race's
# query returns now.  Returns (number of such keys checked, [ stale
# descriptions ]).
sub lease_stale_keys
{
	my ($node, $redis) = @_;
	my @keys = sort grep { /^meeting:m\d+$/ } $redis->scan_keys('meeting:m*');
	return (0, []) unless @keys;
	my @rows;
	for my $k (@keys)
	{
		my $v = $redis->cli('GET', $k);
		die "unexpected value for $k: $v" if $v =~ /\$mc\$/;
		push @rows, "('$k', \$mc\$$v\$mc\$)";
	}
	my $sql = "SELECT v.k || ' cached ' || v.val || ' now ' || coalesce(cur.j::text, 'null') "
	  . "FROM (VALUES " . join(', ', @rows) . ") v(k, val) "
	  . "LEFT JOIN LATERAL (SELECT to_jsonb(t) AS j FROM ("
	  . "SELECT title, status, pg_sleep(0)::text AS s FROM meetings WHERE id = substr(v.k, 9)) t) cur ON true "
	  . "WHERE v.val::jsonb IS DISTINCT FROM coalesce(cur.j, 'null'::jsonb) ORDER BY v.k";
	my $out = $node->safe_psql('postgres', $sql);
	return (scalar @keys, [ grep { $_ ne '' } split /\n/, $out ]);
}

###########################################################################
package MeetcacheTest::Redis;

use strict;
use warnings;

use File::Spec;
use File::Temp qw(tempdir);
use IPC::Run;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time usleep);

my @all_redis;

# MeetcacheTest::Redis->new(requirepass => 'pw', args => [...], port => N)
sub new
{
	my ($class, %o) = @_;
	my $self = bless {
		dir => File::Spec->rel2abs(
			tempdir(
				'redis_XXXX',
				DIR => $PostgreSQL::Test::Utils::tmp_check,
				CLEANUP => 1)),
		requirepass => $o{requirepass},
		args => $o{args} // [],
		port => $o{port},
		pid => undef,
		frozen => 0,
		cli_auth => [],
	}, $class;
	$self->{cli_auth} = [ '-a', $o{requirepass}, '--no-auth-warning' ]
	  if defined $o{requirepass};
	push @all_redis, $self;
	my $tries = 0;
	while (1)
	{
		$self->{port} //= MeetcacheTest::free_port();
		last if $self->_launch;
		die "cannot start redis-server" if defined $o{port} || ++$tries >= 5;
		$self->{port} = undef;
	}
	return $self;
}

sub port { return $_[0]->{port}; }
sub pid { return $_[0]->{pid}; }
sub dir { return $_[0]->{dir}; }
sub logfile { return "$_[0]->{dir}/redis.log"; }

# redis://[user[:password]@]127.0.0.1:port/db
# url(user => 'app', password => 'pw', db => 3); default: password of
# requirepass (with empty user), db 0.
sub url
{
	my ($self, %o) = @_;
	my $pw = exists $o{password} ? $o{password} : $self->{requirepass};
	my $user = $o{user} // '';
	my $auth = '';
	if (defined $pw) { $auth = "$user:$pw@"; }
	elsif ($user ne '') { $auth = "$user@"; }
	my $db = $o{db} // 0;
	return "redis://${auth}127.0.0.1:$self->{port}/$db";
}

sub _launch
{
	my ($self) = @_;
	my @cmd = (
		'redis-server',
		'--port' => $self->{port},
		'--bind' => '127.0.0.1',
		'--save' => '',
		'--appendonly' => 'no',
		'--daemonize' => 'no',
		'--dir' => $self->{dir},
		'--dbfilename' => 'dump.rdb',
		'--logfile' => '',
		(defined $self->{requirepass}
			? ('--requirepass' => $self->{requirepass}) : ()),
		@{ $self->{args} });
	my $log = $self->logfile;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $log) or POSIX::_exit(126);
		open(STDERR, '>&', \*STDOUT);
		exec(@cmd) or POSIX::_exit(127);
	}
	$self->{pid} = $pid;
	$self->{frozen} = 0;
	my $deadline = time + 10;
	while (time < $deadline)
	{
		if (waitpid($pid, WNOHANG) == $pid)
		{
			$self->{pid} = undef;
			return 0;
		}
		my $pong = $self->_cli_raw('PING');
		return 1 if defined $pong && $pong =~ /PONG/;
		usleep(50_000);
	}
	$self->stop;
	return 0;
}

sub _cli_raw
{
	my ($self, @args) = @_;
	my $out = '';
	IPC::Run::run(
		[
			'redis-cli', '-h', '127.0.0.1', '-p', $self->{port},
			@{ $self->{cli_auth} }, @args
		],
		'<', \undef, '>', \$out, '2>', \my $err,
		IPC::Run::timeout(10)) or return undef;
	return $out;
}

# Runs redis-cli against this server; returns its output without the final
# newline.  Dies if redis-cli fails or takes more than 10 s.
sub cli
{
	my ($self, @args) = @_;
	my $out = '';
	my $err = '';
	my $ok = eval {
		IPC::Run::run(
			[
				'redis-cli', '-h', '127.0.0.1', '-p', $self->{port},
				@{ $self->{cli_auth} }, @args
			],
			'<', \undef, '>', \$out, '2>', \$err,
			IPC::Run::timeout(10));
	};
	die "redis-cli @args failed: $@ $err" unless $ok;
	chomp $out;
	return $out;
}

# SET each key (value: JSON text '1', 600 s expiry); extra redis-cli options
# (e.g. -n 3) may come first in an array ref: set_keys([-n => 3], @keys).
sub set_keys
{
	my ($self, @keys) = @_;
	my @opt = ref $keys[0] ? @{ shift @keys } : ();
	for my $k (@keys)
	{
		my $r = $self->cli(@opt, 'SET', $k, '1', 'EX', '600');
		die "SET $k failed: $r" unless $r eq 'OK';
	}
	return;
}

# The subset of @keys that exist (same optional leading array ref).
sub existing
{
	my ($self, @keys) = @_;
	my @opt = ref $keys[0] ? @{ shift @keys } : ();
	return grep { $self->cli(@opt, 'EXISTS', $_) eq '1' } @keys;
}

# Change the credentials redis-cli uses: set_cli_auth('user', 'pw') or
# set_cli_auth(undef, 'pw') (default user) or set_cli_auth() (none).
sub set_cli_auth
{
	my ($self, $user, $pw) = @_;
	my @a;
	push @a, '--user', $user if defined $user;
	push @a, ($user ? '--pass' : '-a'), $pw, '--no-auth-warning' if defined $pw;
	$self->{cli_auth} = \@a;
	return;
}

# Many commands in one redis-cli run (commands on stdin, one a line;
# arguments must not contain white space).  Returns the reply lines.
sub cli_batch
{
	my ($self, @cmds) = @_;
	my @opt = ref $cmds[0] ? @{ shift @cmds } : ();
	return () unless @cmds;
	my $in = join('', map { "$_\n" } @cmds);
	my $out = '';
	my $err = '';
	my $ok = eval {
		IPC::Run::run(
			[
				'redis-cli', '-h', '127.0.0.1', '-p', $self->{port},
				@{ $self->{cli_auth} }, @opt
			],
			'<', \$in, '>', \$out, '2>', \$err,
			IPC::Run::timeout(60));
	};
	die "redis-cli batch failed: $@ $err" unless $ok;
	my @lines = split /\n/, $out;
	die sprintf("redis-cli batch: %d replies to %d commands: %s",
		scalar @lines, scalar @cmds, substr($out . $err, 0, 300))
	  unless @lines == @cmds;
	return @lines;
}

# set_keys and existing for thousands of keys (one redis-cli process)
sub set_many
{
	my ($self, @keys) = @_;
	my @opt = ref $keys[0] ? (shift @keys) : ();
	my @r = $self->cli_batch(@opt, map { "SET $_ 1 EX 600" } @keys);
	my @bad = grep { $r[$_] ne 'OK' } 0 .. $#r;
	die "SET $keys[$bad[0]] failed: $r[$bad[0]]" if @bad;
	return;
}

sub existing_many
{
	my ($self, @keys) = @_;
	my @opt = ref $keys[0] ? (shift @keys) : ();
	my @r = $self->cli_batch(@opt, map { "EXISTS $_" } @keys);
	return map { $keys[$_] } grep { $r[$_] eq '1' } 0 .. $#r;
}

# The keys matching $pattern (redis-cli --scan), and FLUSHALL; a cluster
# does both on every live master.
sub scan_keys
{
	my ($self, $pattern) = @_;
	return grep { $_ ne '' } split /\n/, $self->cli('--scan', '--pattern', $pattern);
}

sub flushall
{
	my ($self) = @_;
	$self->cli('FLUSHALL');
	return;
}

sub freeze
{
	my ($self) = @_;
	kill 'STOP', $self->{pid} or die "cannot SIGSTOP redis $self->{pid}: $!";
	$self->{frozen} = 1;
	return;
}

sub thaw
{
	my ($self) = @_;
	kill 'CONT', $self->{pid} or die "cannot SIGCONT redis $self->{pid}: $!";
	$self->{frozen} = 0;
	return;
}

sub stop
{
	my ($self) = @_;
	my $pid = $self->{pid};
	return unless $pid;
	kill 'CONT', $pid;
	kill 'TERM', $pid;
	my $deadline = time + 10;
	while (time < $deadline)
	{
		last if waitpid($pid, WNOHANG) != 0;
		usleep(20_000);
	}
	if (kill 0, $pid)
	{
		kill 'KILL', $pid;
		waitpid($pid, 0);
	}
	$self->{pid} = undef;
	$self->{frozen} = 0;
	return;
}

# Restart on the same port.  keep_data => 1 keeps the keys (SAVE + load).
sub restart
{
	my ($self, %o) = @_;
	$self->cli('SAVE') if $o{keep_data};
	$self->stop;
	unlink "$self->{dir}/dump.rdb" unless $o{keep_data};
	$self->_launch or die "redis-server did not restart on port $self->{port}";
	return;
}

# Start a stopped server on the same port; keep_data => 1 loads the last SAVE.
sub start
{
	my ($self, %o) = @_;
	return if $self->{pid};
	unlink "$self->{dir}/dump.rdb" unless $o{keep_data};
	$self->_launch or die "redis-server did not start on port $self->{port}";
	return;
}

END
{
	my $rc = $?;
	$_->stop for @all_redis;
	$? = $rc;
}


###########################################################################
# MeetcacheTest::Checker: "nothing lost".  Records, for committed changes,
# the keys they must delete, and for rolled-back or untouched data, keys
# that must survive; keys are set in Redis before the change.  verify()
# then waits (bounded) until every must-delete key is gone and checks the
# survivors.
#
#   my $chk = MeetcacheTest::Checker->new($node, $redis);
#   my @k = $chk->keys_of('meetings', "id = 'm1'");   # affected_keys()
#   $chk->seed(@k);               # SET them in Redis
#   ... commit the change ...
#   $chk->must_delete(@k);        # or must_survive(@k) if rolled back
#   $chk->verify('after the outage', timeout => 20);
package MeetcacheTest::Checker;

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time usleep);

sub new
{
	my ($class, $node, $redis, %o) = @_;
	return bless {
		node => $node,
		redis => $redis,
		db => $o{db} // 'postgres',
		prefix => $o{prefix} // '',
		del => {},
		keep => {},
	}, $class;
}

# The keys (with the key prefix) that changing each row of $table matching
# $where would delete, from meetcache.affected_keys (the same rules the
# triggers use).  The row is passed as both old and new.
sub keys_of
{
	my ($self, $table, $where) = @_;
	my $out = $self->{node}->safe_psql($self->{db},
		"SELECT DISTINCT k.key FROM $table t, "
		  . "meetcache.affected_keys('$table', to_jsonb(t), to_jsonb(t)) k "
		  . "WHERE $where ORDER BY 1");
	return map { $self->{prefix} . $_ } grep { $_ ne '' } split /\n/, $out;
}

# The keys of one change given as JSON rows (NULL: insert / delete)
sub affected
{
	my ($self, $table, $old, $new) = @_;
	my $q = sub { defined $_[0] ? "'$_[0]'::jsonb" : 'NULL' };
	my $out = $self->{node}->safe_psql($self->{db},
		"SELECT DISTINCT key FROM meetcache.affected_keys('$table', "
		  . $q->($old) . ', ' . $q->($new) . ') ORDER BY 1');
	return map { $self->{prefix} . $_ } grep { $_ ne '' } split /\n/, $out;
}

sub seed
{
	my ($self, @keys) = @_;
	$self->{redis}->set_many(@keys);
	return @keys;
}

sub must_delete
{
	my ($self, @keys) = @_;
	$self->{del}{$_} = 1 for @keys;
	return;
}

sub must_survive
{
	my ($self, @keys) = @_;
	$self->{keep}{$_} = 1 for @keys;
	return;
}

sub counts
{
	my ($self) = @_;
	my @keep = grep { !$self->{del}{$_} } keys %{ $self->{keep} };
	return (scalar keys %{ $self->{del} }, scalar @keep);
}

# must-delete keys still in Redis, after waiting up to $secs for them
sub leftover
{
	my ($self, $secs) = @_;
	my @del = sort keys %{ $self->{del} };
	my @left = @del;
	my $deadline = time + ($secs // 20);
	while (1)
	{
		@left = $self->{redis}->existing_many(@left) if @left;
		last if !@left || time >= $deadline;
		usleep(100_000);
	}
	return @left;
}

# must-survive keys (not also must-delete) missing from Redis
sub missing
{
	my ($self) = @_;
	my @keep = sort grep { !$self->{del}{$_} } keys %{ $self->{keep} };
	my %there = map { $_ => 1 } $self->{redis}->existing_many(@keep);
	return grep { !$there{$_} } @keep;
}

# Two assertions: every must-delete key is gone (waiting up to timeout
# seconds, default 20), every must-survive key is still there (skipped
# with survivors => 0, e.g. after a family flush).  Returns true if both
# hold.  With no key to check (none recorded, or only survivors and
# survivors => 0) it is one failing assertion instead: a check of nothing
# proves nothing.  Clears the recorded keys unless keep => 1.
sub verify
{
	my ($self, $name, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($nd, $nk) = $self->counts;
	my $survivors = !defined $o{survivors} || $o{survivors};
	if ($nd == 0 && !($survivors && $nk > 0))
	{
		fail("$name: the checker has keys to check");
		diag("nothing recorded with must_delete"
			  . ($survivors ? ' or must_survive' : ' (survivors => 0)')
			  . ': did keys_of/affected find no key?');
		$self->reset unless $o{keep};
		return 0;
	}
	my $t0 = time;
	my @left = $self->leftover($o{timeout} // 20);
	my $ok = ok(!@left,
		"$name: all $nd keys of committed changes deleted");
	diag(sprintf("%d of %d keys still in redis after %.1fs, e.g. %s",
			scalar @left, $nd, time - $t0, join(' ', @left[ 0 .. ($#left < 9 ? $#left : 9) ])))
	  if @left;
	note(sprintf('%s: delivered within %.2fs', $name, time - $t0)) unless @left;
	if (!defined $o{survivors} || $o{survivors})
	{
		my @miss = $self->missing;
		$ok = ok(!@miss, "$name: all $nk keys of rolled-back or untouched data kept")
		  && $ok;
		diag(sprintf("%d keys that had to survive are gone, e.g. %s",
				scalar @miss, join(' ', @miss[ 0 .. ($#miss < 9 ? $#miss : 9) ])))
		  if @miss;
	}
	$self->reset unless $o{keep};
	return $ok;
}

sub reset
{
	my ($self) = @_;
	$self->{del} = {};
	$self->{keep} = {};
	return;
}

1;

###########################################################################
# Transports (019_tls, 020_unix_dns): certificates made with openssl,
# redis-servers that also listen on TLS or a Unix socket (their plain port
# stays for redis-cli), and a DNS server that never answers or says
# NXDOMAIN.
package MeetcacheTest;

# In $dir: a CA (ca.crt), a server certificate it signs for localhost and
# 127.0.0.1 (server.crt/.key), a client certificate it signs
# (client.crt/.key), another CA with a server certificate of its own
# for the same names (other.crt/.key), and a server certificate the first CA
# signed for the same names that expired on 2 January 2020
# (expired.crt/.key; `openssl ca`, since `openssl x509 -req` of OpenSSL 3.0
# cannot back-date).  Returns a hash of the paths.
sub make_tls_certs
{
	my ($dir) = @_;
	my %p = map { $_ => "$dir/$_" }
	  qw(ca.crt ca.key server.crt server.key client.crt client.key
	  otherca.crt otherca.key other.crt other.key expired.crt expired.key);
	my $ext = "$dir/san.cnf";
	open(my $fh, '>', $ext) or die "cannot write $ext: $!";
	print $fh "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
	close $fh;
	my $run = sub {
		my $err = '';
		IPC::Run::run([ 'openssl', @_ ], '<', \undef, '>', \my $out, '2>', \$err)
		  or die "openssl @_ failed: $err";
	};
	my @ec = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes');
	for my $ca (qw(ca otherca))
	{
		$run->('req', '-x509', @ec, '-keyout', $p{"$ca.key"}, '-out', $p{"$ca.crt"},
			'-days', '2', '-subj', "/CN=meetcache test $ca");
	}
	for ([ 'server', 'ca', 'localhost' ], [ 'client', 'ca', 'meetcache' ],
		[ 'other', 'otherca', 'localhost' ])
	{
		my ($name, $ca, $cn) = @$_;
		$run->('req', @ec, '-keyout', $p{"$name.key"}, '-out', "$dir/$name.csr",
			'-subj', "/CN=$cn");
		$run->('x509', '-req', '-in', "$dir/$name.csr", '-CA', $p{"$ca.crt"},
			'-CAkey', $p{"$ca.key"}, '-CAcreateserial', '-out', $p{"$name.crt"},
			'-days', '2', ($name eq 'client' ? () : ('-extfile', $ext)));
	}
	my $cacnf = "$dir/ca.cnf";
	open($fh, '>', $cacnf) or die "cannot write $cacnf: $!";
	print $fh "[ca]\ndefault_ca = expired\n[expired]\ndatabase = $dir/index.txt\n"
	  . "new_certs_dir = $dir\nserial = $dir/serial\ndefault_md = sha256\n"
	  . "policy = cn\n[cn]\ncommonName = supplied\n";
	close $fh;
	PostgreSQL::Test::Utils::append_to_file("$dir/index.txt", '');
	PostgreSQL::Test::Utils::append_to_file("$dir/serial", "01\n");
	$run->('req', @ec, '-keyout', $p{'expired.key'}, '-out', "$dir/expired.csr",
		'-subj', '/CN=localhost');
	$run->('ca', '-batch', '-notext', '-config', $cacnf, '-cert', $p{'ca.crt'},
		'-keyfile', $p{'ca.key'}, '-in', "$dir/expired.csr", '-out', $p{'expired.crt'},
		'-startdate', '20200101000000Z', '-enddate', '20200102000000Z',
		'-extfile', $ext);
	chmod 0600, map { $p{$_} } grep { /\.key$/ } keys %p;
	return \%p;
}

# A redis-server that also serves TLS on its tls_port: cert => 'server',
# 'other' or 'expired' (of make_tls_certs $certs), auth_clients => 'no' (default) or 'yes'.
sub start_tls_redis
{
	my (%o) = @_;
	my $c = $o{certs};
	my $cert = $o{cert} // 'server';
	my $tls_port = free_port();
	my $r = start_redis(
		args => [
			'--tls-port' => $tls_port,
			'--tls-cert-file' => $c->{"$cert.crt"},
			'--tls-key-file' => $c->{"$cert.key"},
			'--tls-ca-cert-file' => $c->{'ca.crt'},
			'--tls-auth-clients' => $o{auth_clients} // 'no',
		]);
	$r->{tls_port} = $tls_port;
	return $r;
}

# A redis-server that also listens on the Unix socket $r->{socket};
# requirepass as for start_redis.
sub start_unix_redis
{
	my (%o) = @_;
	my $dir = File::Temp::tempdir('sock_XXXX', DIR => $PostgreSQL::Test::Utils::tmp_check,
		CLEANUP => 1);
	my $sock = File::Spec->rel2abs("$dir/redis.sock");
	my $r = start_redis(%o,
		args => [ '--unixsocket' => $sock, '--unixsocketperm' => '700' ]);
	$r->{socket} = $sock;
	return $r;
}

# A DNS server on a free 127.0.0.1 UDP port: mode 'silent' drops every
# query, 'nxdomain' says no such name.  Returns its port; it is killed when
# the test script exits.
my @dns_pids;
sub start_dns_stub
{
	my ($mode) = @_;
	my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
		Proto => 'udp') or die "cannot bind a UDP port: $!";
	my $port = $sock->sockport;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		while (1)
		{
			my $from = $sock->recv(my $q, 512) or next;
			next if $mode eq 'silent' || length($q) < 12;
			my ($id, $flags) = unpack('n n', $q);
			# QR, the query's RD, RA, RCODE 3; the question, nothing else
			my $head = pack('n6', $id, 0x8183 | ($flags & 0x0100), 1, 0, 0, 0);
			my $qs = substr($q, 12);
			my $end = index($qs, "\0");
			$sock->send($head . substr($qs, 0, $end + 5), 0, $from) if $end >= 0;
		}
	}
	close $sock;
	push @dns_pids, $pid;
	return $port;
}

END
{
	my $rc = $?;
	kill 'KILL', @dns_pids if @dns_pids;
	waitpid($_, 0) for @dns_pids;
	$? = $rc;
}

1;

###########################################################################
# Sentinel (021_sentinel): replicas, sentinels, and who the master is.
package MeetcacheTest;

# A redis-server replicating $master (a MeetcacheTest::Redis).
sub start_replica
{
	my ($master, %o) = @_;
	return start_redis(%o,
		args => [ '--replicaof', '127.0.0.1', $master->port, @{ $o{args} // [] } ]);
}

# Start the stopped server $r again, on its port, as a replica of $master.
sub restart_as_replica
{
	my ($r, $master) = @_;
	$r->{args} = [ '--replicaof', '127.0.0.1', $master->port ];
	$r->start;
	return;
}

# A redis sentinel (a MeetcacheTest::Sentinel) monitoring $master as $o{name}
# (default mymaster): quorum 1, down-after 1000 ms, failover-timeout 5000 ms.
# requirepass => 'pw' gives the sentinel a password of its own.
sub start_sentinel
{
	my ($master, %o) = @_;
	my $name = $o{name} // 'mymaster';
	return MeetcacheTest::Sentinel->new(
		requirepass => $o{requirepass},
		args => [
			'--sentinel', '--sentinel', 'monitor', $name, '127.0.0.1', $master->port, '1',
			'--sentinel', 'down-after-milliseconds', $name, '1000',
			'--sentinel', 'failover-timeout', $name, '5000'
		]);
}

# The port of the master $sentinel names for $name (default mymaster).
sub sentinel_master_port
{
	my ($sentinel, $name) = @_;
	my @r = split /\n/,
	  $sentinel->cli('SENTINEL', 'get-master-addr-by-name', $name // 'mymaster');
	return $r[1];
}

# Wait (at most $secs, default 20) until $sentinel knows $replica as a
# connected replica of $name (default mymaster) and the replica's link is up.
sub wait_sentinel_replica
{
	my ($sentinel, $replica, $secs, $name) = @_;
	return poll_until(
		$secs // 20,
		sub {
			my $info = $replica->cli('INFO', 'replication');
			return 0 unless $info =~ /master_link_status:up/;
			my $list = $sentinel->cli('SENTINEL', 'replicas', $name // 'mymaster');
			my @l = split /\n/, $list;
			# flat name/value pairs per replica: port, then flags "slave"
			for my $i (0 .. $#l - 1)
			{
				next unless $l[$i] eq 'port' && $l[ $i + 1 ] eq $replica->port;
				for my $j ($i .. $#l - 1)
				{
					return $l[ $j + 1 ] eq 'slave' if $l[$j] eq 'flags';
				}
			}
			return 0;
		});
}

# A checker verifies against another server from now on (the promoted replica).
sub MeetcacheTest::Checker::use_redis
{
	my ($self, $redis) = @_;
	$self->{redis} = $redis;
	return;
}

###########################################################################
# redis-server in sentinel mode.  Sentinel wants its (writable)
# configuration file as the first argument: MeetcacheTest::Redis starts it
# through a wrapper named redis-server that puts one first; the sentinel's
# own settings come as --sentinel options.
package MeetcacheTest::Sentinel;

use strict;
use warnings;

our @ISA = ('MeetcacheTest::Redis');

my $real_redis_server;

sub _launch
{
	my ($self) = @_;
	my $bin = "$self->{dir}/bin";
	unless (-x "$bin/redis-server")
	{
		($real_redis_server) = grep { -x $_ }
		  map { "$_/redis-server" } split /:/, $ENV{PATH}
		  unless $real_redis_server;
		die 'redis-server not found in PATH' unless $real_redis_server;
		mkdir $bin;
		open(my $fh, '>', "$self->{dir}/sentinel.conf") or die "sentinel.conf: $!";
		close $fh;
		open($fh, '>', "$bin/redis-server") or die "$bin/redis-server: $!";
		print $fh "#!/bin/sh\nexec '$real_redis_server' '$self->{dir}/sentinel.conf' \"\$@\"\n";
		close $fh;
		chmod 0755, "$bin/redis-server";
	}
	local $ENV{PATH} = "$bin:$ENV{PATH}";
	return $self->SUPER::_launch;
}

1;

###########################################################################
# Redis Cluster (022_cluster, 023_cluster_load): $masters masters with $replicas replicas
# each, on 127.0.0.1 (each node's bus port is a free port of its own).
#
#   my $rc = MeetcacheTest::start_redis_cluster(masters => 3, replicas => 1);
#   $rc->url;                       # redis-cluster://127.0.0.1:p1,...
#   $rc->cli('GET', 'k');           # redis-cli -c on a live node
#   $rc->set_many(@keys); $rc->existing_many(@keys);   # as for one server
#   $rc->master_of('key');          # the node (a MeetcacheTest::Redis) serving it
#   $rc->wait_ok;                   # every live node says cluster_state:ok
#   $rc->masters; $rc->node_id($n); $rc->slots_of($n);
#   $rc->scan_keys('p*'); $rc->flushall;                # every master
#   my @moved = $rc->reshard($from, $to, 100);          # redis-cli --cluster reshard
#   $rc->reset_stats; $rc->redirects->{MOVED};          # INFO errorstats
package MeetcacheTest;

sub start_redis_cluster { return MeetcacheTest::RedisCluster->new(@_); }

package MeetcacheTest::RedisCluster;

use strict;
use warnings;

use Time::HiRes qw(time usleep);

our @ISA = ('MeetcacheTest::Redis');

sub new
{
	my ($class, %o) = @_;
	my $n = ($o{masters} // 3) * (1 + ($o{replicas} // 1));
	my @nodes = map {
		MeetcacheTest::Redis->new(
			args => [
				'--cluster-enabled' => 'yes',
				'--cluster-config-file' => 'nodes.conf',
				'--cluster-node-timeout' => '2000',
				'--cluster-port' => MeetcacheTest::free_port()
			])
	} 1 .. $n;
	my $self = bless { nodes => \@nodes, cli_auth => [] }, $class;
	$self->{port} = $nodes[0]->port;
	my $out = '';
	IPC::Run::run(
		[
			'redis-cli', '--cluster', 'create',
			(map { '127.0.0.1:' . $_->port } @nodes),
			'--cluster-replicas', $o{replicas} // 1, '--cluster-yes'
		],
		'<', \undef, '>&', \$out, IPC::Run::timeout(60))
	  or die "redis-cli --cluster create failed: $out";
	$self->wait_ok;
	return $self;
}

sub nodes { return @{ $_[0]->{nodes} }; }

sub url
{
	my ($self) = @_;
	return 'redis-cluster://'
	  . join(',', map { '127.0.0.1:' . $_->port } $self->nodes);
}

# redis-cli -c (following redirects) runs on the first live node
sub _live
{
	my ($self) = @_;
	my ($n) = grep { $_->pid } $self->nodes;
	die 'no live cluster node' unless $n;
	$self->{port} = $n->port;
	return $n;
}

sub cli
{
	my ($self, @args) = @_;
	return $self->_live->cli('-c', @args);
}

# commands whose second word is their key, each sent to its key's master
sub cli_batch
{
	my ($self, @cmds) = @_;
	my @opt = ref $cmds[0] ? @{ shift @cmds } : ();
	my $owner = $self->_slot_owners;
	my (%by, @out);
	for my $i (0 .. $#cmds)
	{
		my (undef, $key) = split ' ', $cmds[$i];
		push @{ $by{ $owner->[ key_slot($key) ] } }, $i;
	}
	for my $port (keys %by)
	{
		my ($n) = grep { $_->port == $port } $self->nodes;
		my @r = $n->cli_batch([@opt], map { $cmds[$_] } @{ $by{$port} });
		@out[ @{ $by{$port} } ] = @r;
	}
	return @out;
}

# CRC16-XMODEM of the key or its {hash tag}, mod 16384
sub key_slot
{
	my ($key) = @_;
	$key = $1 if $key =~ /^[^{]*\{([^}]+)\}/;
	my $crc = 0;
	for my $c (unpack 'C*', $key)
	{
		$crc ^= $c << 8;
		$crc = ($crc & 0x8000) ? (($crc << 1) ^ 0x1021) & 0xffff : ($crc << 1) & 0xffff
		  for 1 .. 8;
	}
	return $crc % 16384;
}

# slot => port of the live master serving it, as node $n (default: the
# first live one) sees it
sub _slot_owners
{
	my ($self, $n) = @_;
	my @owner;
	for my $line (split /\n/, ($n // $self->_live)->cli('CLUSTER', 'NODES'))
	{
		my @f = split ' ', $line;
		next unless $f[2] =~ /master/ && $f[2] !~ /fail/;
		my ($port) = $f[1] =~ /:(\d+)@/;
		for my $r (@f[ 8 .. $#f ])
		{
			next unless $r =~ /^(\d+)(?:-(\d+))?$/;
			$owner[$_] = $port for $1 .. ($2 // $1);
		}
	}
	return \@owner;
}

# the live master serving $key's slot
sub master_of
{
	my ($self, $key) = @_;
	my $port = $self->_slot_owners->[ key_slot($key) ];
	die "no master serves the slot of $key" unless $port;
	return (grep { $_->port == $port } $self->nodes)[0];
}

# every live node reports cluster_state:ok and no failed node serves slots (60 s)
sub wait_ok
{
	my ($self) = @_;
	my $deadline = time + 60;
	while (time < $deadline)
	{
		my $ok = 1;
		for my $n (grep { $_->pid } $self->nodes)
		{
			my $info = $n->cli('CLUSTER', 'INFO');
			my $nodes = $n->cli('CLUSTER', 'NODES');
			# a failed master that still serves slots: no failover yet
			$ok = 0 if $info !~ /cluster_state:ok/
			  || grep { my @f = split; $f[2] =~ /fail/ && @f > 8 } split /\n/, $nodes;
		}
		return 1 if $ok;
		usleep(100_000);
	}
	die 'the redis cluster did not become ok within 60 s';
}

sub node_id { return $_[1]->cli('CLUSTER', 'MYID'); }

# the slots master $n serves, in order
sub slots_of
{
	my ($self, $n) = @_;
	my $owner = $self->_slot_owners;
	return grep { ($owner->[$_] // 0) == $n->port } 0 .. 16383;
}

# the live masters
sub masters
{
	my ($self) = @_;
	return grep { $_->pid && $_->cli('ROLE') =~ /^master/ } $self->nodes;
}

sub scan_keys
{
	my ($self, $pattern) = @_;
	return map { $_->scan_keys($pattern) } $self->masters;
}

sub flushall
{
	my ($self) = @_;
	$_->cli('FLUSHALL') for $self->masters;
	return;
}

# redis-cli --cluster reshard: $nslots slots of master $from (redis-cli
# takes its lowest) to master $to, keys and all, while clients keep going;
# then waits (30 s) until every live node sees the new owners.  Returns
# the slots that moved.
sub reshard
{
	my ($self, $from, $to, $nslots) = @_;
	my $before = $self->_slot_owners;
	my $out = '';
	IPC::Run::run(
		[
			'redis-cli', '--cluster', 'reshard', '127.0.0.1:' . $from->port,
			'--cluster-from', $self->node_id($from), '--cluster-to', $self->node_id($to),
			'--cluster-slots', $nslots, '--cluster-yes'
		],
		'<', \undef, '>&', \$out, IPC::Run::timeout(120))
	  or die 'redis-cli --cluster reshard failed: ' . substr($out, -2000);
	my @moved;
	MeetcacheTest::poll_until(30, sub {
		my %seen = map { join(',', map { $_ // '' } @{ $self->_slot_owners($_) }) => 1 }
		  grep { $_->pid } $self->nodes;
		my $after = $self->_slot_owners;
		@moved = grep { ($before->[$_] // 0) == $from->port && ($after->[$_] // 0) == $to->port }
		  0 .. 16383;
		return keys %seen == 1;
	}) or die 'the cluster nodes disagree on the slot owners 30 s after a reshard';
	$self->wait_ok;
	return @moved;
}

# CONFIG RESETSTAT on every live node; redirects: the MOVED and ASK
# replies they sent since (INFO errorstats), as { MOVED => n, ASK => n }
sub reset_stats
{
	my ($self) = @_;
	$_->cli('CONFIG', 'RESETSTAT') for grep { $_->pid } $self->nodes;
	return;
}

sub redirects
{
	my ($self) = @_;
	my %n = (MOVED => 0, ASK => 0);
	for my $node (grep { $_->pid } $self->nodes)
	{
		my $info = $node->cli('INFO', 'errorstats');
		$n{$1} += $2 while $info =~ /errorstat_(MOVED|ASK):count=(\d+)/g;
	}
	return \%n;
}

1;
