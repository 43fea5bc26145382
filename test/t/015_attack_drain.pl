# Drains run as the bootstrap superuser inside each database.
#  1. Nothing a database owner (not a superuser) plants in that database may
#     run in them: she shadows the built-in operators and functions the
#     drain's queries and the family flush's catalog load would resolve, puts
#     public first in the database's search_path, and her objects would make
#     her a superuser.  The keys are still deleted, and nothing of hers ran.
#  2. A drain pass holds a bounded number of bytes: queue rows of several
#     megabytes of keys each are taken a few at a time (the drains' DEBUG1
#     lines say what each pass took), and all of them are delivered.

use strict; use warnings;
use PostgreSQL::Test::Utils; use Test::More;
use MeetcacheTest qw(start_redis new_node setup_schema poll_sql poll_until stats);

my $redis = start_redis();
my $node = new_node('attack', $redis, log_statement => 'none',
  conf => "meetcache.commit_timeout = '500ms'\n");

# ---- 1. search_path hijacks ----

$node->safe_psql('postgres', q{CREATE ROLE mallory LOGIN; CREATE DATABASE victim OWNER mallory;});
setup_schema($node, 'victim');
$node->safe_psql('victim', q{
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO mallory;
INSERT INTO users (id, name, email) VALUES ('u1', 'U', 'u1@x');
INSERT INTO meetings (id, title, host_id, invite_code, status) VALUES
  ('m1', 't', 'u1', 'i1', 'ENDED'), ('m2', 't', 'u1', 'i2', 'ENDED');
ALTER DATABASE victim SET meetcache.delivery = 'queue';});

my $mallory = $node->connstr('victim') . ' user=mallory';
# pwned: what ran with superuser rights, and in which kind of process
$node->safe_psql('victim', q{
CREATE TABLE public.pwned (via text, backend_type text);
CREATE FUNCTION public.pwn(via text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, public AS $$
BEGIN
  IF current_setting('is_superuser') = 'on' THEN
    INSERT INTO public.pwned
      SELECT via, backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid();
    EXECUTE 'ALTER ROLE mallory SUPERUSER';
  END IF;
END $$;
-- the drain pass: ctid = ..., id <> ALL (...)
CREATE FUNCTION public.tid_eq(tid, tid) RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog, public AS $$
BEGIN PERFORM public.pwn('operator =(tid, tid)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = tid, RIGHTARG = tid, FUNCTION = public.tid_eq);
CREATE FUNCTION public.int8_ne(bigint, bigint) RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog, public AS $$
BEGIN PERFORM public.pwn('operator <>(bigint, bigint)'); RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$;
CREATE OPERATOR public.<> (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.int8_ne);
-- the rule catalog load behind the family flush: jsonb_each, array_agg
CREATE FUNCTION public.jsonb_each(j jsonb, OUT key text, OUT value jsonb) RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN PERFORM public.pwn('jsonb_each(jsonb)'); RETURN QUERY SELECT * FROM pg_catalog.jsonb_each(j); END $$;
CREATE FUNCTION public.agg_final(text[]) RETURNS text[] LANGUAGE plpgsql
SET search_path = pg_catalog, public AS $$
BEGIN PERFORM public.pwn('array_agg(text)'); RETURN $1; END $$;
CREATE AGGREGATE public.array_agg(text) (SFUNC = pg_catalog.array_append, STYPE = text[],
  FINALFUNC = public.agg_final);
ALTER DATABASE victim SET search_path = public, pg_catalog;}, connstr => $mallory);
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}),
  'f', 'mallory is not a superuser');

# the superuser's own queries in victim: pg_catalog first, and nothing written
my $su = 'SET search_path = pg_catalog; ';
my $drain_ran = $su . q{SELECT coalesce(string_agg(DISTINCT via, ', '), '') FROM public.pwned
  WHERE backend_type = 'meetcache drain'};
my $no_drain = q{SELECT count(*) FROM pg_stat_activity
  WHERE backend_type = 'meetcache drain' AND datname = 'victim'};

# a queue row, drained by a drain started after the planting (its plans are new)
ok(poll_sql($node, 'postgres', $no_drain, '0', 20), 'no drain connected to victim');
$redis->set_keys('meeting:m1');
$node->safe_psql('victim', q{UPDATE meetings SET title = 'x' WHERE id = 'm1'}, connstr => $mallory);
ok(poll_sql($node, 'victim', $su . 'SELECT count(*) FROM meetcache.queue', '0', 20),
  'the queue row was drained');
is_deeply([ $redis->existing('meeting:m1') ], [], 'its key was deleted');
is($node->safe_psql('victim', $drain_ran), '', 'nothing of mallory\'s ran in the drain pass');

# the family flush after an unclean stop loads the rule catalog in the drain
$redis->set_keys('meeting:m2');
$node->stop('immediate');
$node->start;
ok(poll_until(20, sub { !$redis->existing('meeting:m2') }), 'the drain flushed the families');
ok(poll_sql($node, 'postgres', $no_drain, '0', 20), 'the drain left');
is($node->safe_psql('victim', $drain_ran), '', 'nothing of mallory\'s ran in the family flush');
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}),
  'f', 'mallory is still not a superuser');

# ---- 2. a drain pass holds at most 8 MB of keys (but always one row) ----

my $budget = 8 * 1024 * 1024;
my ($ntx, $nper) = (10, 3000);	# keys of about 1000 bytes: some 3 MB a row
$node->safe_psql('postgres', q{CREATE DATABASE bulk});
$node->safe_psql('bulk', q{
CREATE EXTENSION meetcache;
CREATE TABLE blobs (id text PRIMARY KEY);
INSERT INTO meetcache.families (name, template, ttl_seconds) VALUES ('blob', 'blob:{id}', 600);
INSERT INTO meetcache.rules (table_name, family, args) VALUES ('blobs', 'blob', NULL);
SELECT meetcache.attach('blobs');
ALTER DATABASE bulk SET meetcache.delivery = 'queue';
ALTER DATABASE bulk SET log_min_messages = 'debug1';});
my $id = sub { my ($t, $g) = @_; return "$t-$g-" . ('x' x 980); };
my @sample = map { ('blob:' . $id->($_, 1), 'blob:' . $id->($_, $nper)) } 1 .. $ntx;
$redis->set_many(@sample);
my $s0 = stats($node, 'bulk', qw(queue_rows_done queue_keys_sent));
my $log_from = -s $node->logfile;

$redis->freeze;
for my $t (1 .. $ntx)
{
	$node->safe_psql('bulk', qq{INSERT INTO blobs
	  SELECT '$t-' || g || '-' || repeat('x', 980) FROM generate_series(1, $nper) g});
}
is($node->safe_psql('bulk', 'SELECT count(*) FROM meetcache.queue'), $ntx,
  "$ntx queue rows wait while redis is frozen");
$redis->thaw;
ok(poll_sql($node, 'bulk', 'SELECT count(*) FROM meetcache.queue', '0', 60),
  'the queue drained after the thaw');
my $s1 = stats($node, 'bulk', qw(queue_rows_done queue_keys_sent));
is($s1->{queue_rows_done} - $s0->{queue_rows_done}, $ntx, 'every row was delivered');
is($s1->{queue_keys_sent} - $s0->{queue_keys_sent}, $ntx * $nper, 'every key was sent');
is_deeply([ $redis->existing_many(@sample) ], [], 'the sampled keys were deleted');

my $log = substr(slurp_file($node->logfile), $log_from);
my @passes = $log =~ /meetcache drain pass: (\d+) queue rows, \d+ keys and patterns \(\d+ lookups\), (\d+) bytes/g;
my @over;
my $most = 0;
while (my ($rows, $bytes) = splice @passes, 0, 2)
{
	push @over, "$rows rows, $bytes bytes" if $rows > 1 && $bytes > $budget;
	$most = $rows if $rows > $most;
}
note "largest pass: $most rows";
is_deeply(\@over, [], 'no pass of more than one row took more than 8 MB');
ok($most > 1 && $most < $ntx, 'passes took several rows, not all of them');
done_testing();
