
# MeetcacheTest: helpers for meetcache's TAP tests.
#
#   use MeetcacheTest;
#   my $redis = MeetcacheTest::start_redis();            # private redis-server
#   my $node  = MeetcacheTest::new_node('main', $redis);  # preloaded PG cluster
#   MeetcacheTest::setup_schema($node);                  # reference schema + attach
#   $redis->cli('SET', 'meeting:m1', '1');
#   $redis->freeze; $redis->thaw; $redis->restart(keep_data => 1); $redis->stop;
#
# Every redis-server started here listens on a free 127.0.0.1 port and is
# killed when the test script exits (PostgreSQL::Test::Cluster stops its nodes).

package MeetcacheTest;

use strict;
use warnings;

use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(time usleep);

our @EXPORT_OK = qw(start_redis new_node setup_schema schema_sql free_port
  bg_session bg_query bg_send bg_wait_for elapsed);

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

# The reference schema (snake_case columns), as SQL text.
sub schema_sql
{
	return PostgreSQL::Test::Utils::slurp_file("$repo/test/fixtures/meet_snake.sql");
}

# A started PostgreSQL::Test::Cluster node preloading meetcache, pointing at
# $redis (a MeetcacheTest::Redis).  Options:
#   url  => 'redis://...'   instead of $redis->url
#   conf => "extra = 'lines'\n"
#   log_statement => 'none' (the Cluster default is 'all')
sub new_node
{
	my ($name, $redis, %o) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	my $url = $o{url} // $redis->url;
	my $conf = "shared_preload_libraries = 'meetcache'\n"
	  . "meetcache.redis_url = '$url'\n";
	$conf .= "log_statement = '$o{log_statement}'\n" if defined $o{log_statement};
	$conf .= $o{conf} if defined $o{conf};
	$node->append_conf('postgresql.conf', $conf);
	$node->start;
	return $node;
}

# Reference schema + CREATE EXTENSION + attach_defaults in database $db.
sub setup_schema
{
	my ($node, $db) = @_;
	$db //= 'postgres';
	$node->safe_psql($db, schema_sql());
	$node->safe_psql($db,
		"CREATE EXTENSION meetcache; SELECT meetcache.attach_defaults();");
	return;
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

1;
