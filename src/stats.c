/*
 * stats.c
 *	  Counters behind meetcache.stats: in shared memory when the library is
 *	  preloaded (cluster-wide; shared.c reserves the space and hands it over
 *	  at startup), otherwise in the backend's own memory.  The worker's
 *	  columns come from shared.c's status snapshot, the cluster's from the
 *	  topology it keeps.
 *
 * meetcache_stats fills the columns its caller's SQL declaration names,
 * by name: meetcache.stats() and meetcache.cluster_stats() are two
 * declarations of it, and a 0.1.0 installation running this library before
 * ALTER EXTENSION UPDATE gets its own row.
 *
 * Counters are lock-free atomics, safe to bump from a commit callback.  The
 * last error is copied under a spinlock; no allocation happens here.
 *
 * Reading them (meetcache.stats()) needs the privileges of pg_read_all_stats:
 * they are cluster-wide and tell one database's activity to another's users.
 *
 * mc_excerpt is the one way text from Redis (a value, an error reply, an
 * error message built from one) goes into a message or into last_error:
 * bounded, printable, valid in the database encoding.  It neither allocates
 * nor throws, so the commit path may use it.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "meetcache.h"

typedef struct McStatsShared
{
	pg_atomic_uint64 counters[MC_STAT__COUNT];
	slock_t		mutex;
	TimestampTz last_error_time;
	TimestampTz reset_time;
	char		last_error[256];
} McStatsShared;

static McStatsShared local_stats;
static McStatsShared *stats = NULL;
static bool stats_shared = false;

static void
stats_init_struct(McStatsShared *s)
{
	for (int i = 0; i < MC_STAT__COUNT; i++)
		pg_atomic_init_u64(&s->counters[i], 0);
	SpinLockInit(&s->mutex);
	s->last_error_time = 0;
	s->reset_time = GetCurrentTimestamp();
	s->last_error[0] = '\0';
}

static McStatsShared *
get_stats(void)
{
	if (stats == NULL)
	{
		stats_init_struct(&local_stats);
		stats = &local_stats;
	}
	return stats;
}

Size
mc_stats_shmem_size(void)
{
	return MAXALIGN(sizeof(McStatsShared));
}

/* shared.c's startup hook, under AddinShmemInitLock: the counters live here */
void
mc_stats_shmem_attach(void *place, bool init)
{
	if (init)
		stats_init_struct(place);
	stats = place;
	stats_shared = true;
}

void
mc_stat_add(McCounter c, uint64 n)
{
	pg_atomic_fetch_add_u64(&get_stats()->counters[c], n);
}

/*
 * Render len bytes of s into out (outsize bytes, at least 8, NUL included)
 * for a message: bytes below 0x20, 0x7f and bytes that do not form a valid
 * character of the database encoding become \xNN; a character is copied
 * whole or not at all, and a cut excerpt ends with "...".  Returns the
 * length written.
 */
int
mc_excerpt(char *out, int outsize, const char *s, int len)
{
	int			enc = GetDatabaseEncoding();
	int			o = 0;

	for (int i = 0; i < len;)
	{
		unsigned char c = (unsigned char) s[i];
		int			n = 1;		/* input bytes of this character */
		char		esc[5];
		const char *unit = s + i;
		int			ulen;

		if (IS_HIGHBIT_SET(c))
			n = pg_encoding_verifymbchar(enc, s + i, len - i);
		if (c < 0x20 || c == 0x7f || n <= 0)
		{
			snprintf(esc, sizeof(esc), "\\x%02x", c);
			unit = esc;
			n = 1;
		}
		ulen = unit == esc ? 4 : n;
		/* room for this character, and for "..." unless it is the last */
		if (o + ulen + (i + n < len ? 3 : 0) > outsize - 1)
		{
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		memcpy(out + o, unit, ulen);
		o += ulen;
		i += n;
	}
	out[o] = '\0';
	return o;
}

/* record the last error; the text must never hold a password */
void
mc_stat_error(const char *msg)
{
	McStatsShared *s = get_stats();
	char		shown[sizeof(s->last_error)];

	mc_excerpt(shown, sizeof(shown), msg, strlen(msg));
	pg_atomic_fetch_add_u64(&s->counters[MC_STAT_REDIS_ERRORS], 1);
	SpinLockAcquire(&s->mutex);
	strlcpy(s->last_error, shown, sizeof(s->last_error));
	s->last_error_time = GetCurrentTimestamp();
	SpinLockRelease(&s->mutex);
}


/*
 * The shared state's columns from values[i] on: worker_state, launcher_pid,
 * drains_running, redis_state, redis_down_since, and the retry queue's
 * entries, bytes and size (extra_cols' order).  Returns the next column.
 */
static int
put_shared_status(Datum *values, bool *nulls, int i)
{
	McSharedStatus st;

	mc_shared_status(&st);
	if (!st.preloaded)
	{
		values[i] = CStringGetTextDatum("not preloaded");
		nulls[i + 1] = nulls[i + 2] = true;
	}
	else
	{
		values[i] = CStringGetTextDatum(st.launcher_pid ? "running" : "stopped");
		if (st.launcher_pid)
			values[i + 1] = Int32GetDatum(st.launcher_pid);
		else
			nulls[i + 1] = true;
		values[i + 2] = Int32GetDatum(st.drains_running);
	}
	i += 3;
	if (!st.preloaded || st.launcher_pid == 0)
	{
		values[i] = CStringGetTextDatum("unknown");
		nulls[i + 1] = true;
	}
	else if (st.breaker_open)
	{
		values[i] = CStringGetTextDatum("down");
		values[i + 1] = TimestampTzGetDatum(st.breaker_since);
	}
	else
	{
		values[i] = CStringGetTextDatum("up");
		nulls[i + 1] = true;
	}
	i += 2;
	if (!st.preloaded)
		nulls[i] = nulls[i + 1] = nulls[i + 2] = true;
	else
	{
		values[i] = Int64GetDatum((int64) st.retry_entries);
		values[i + 1] = Int64GetDatum((int64) st.retry_bytes);
		values[i + 2] = Int64GetDatum((int64) st.retry_size);
	}
	return i + 3;
}

/* the counters' columns */
static const char *const counter_names[] = {
	[MC_STAT_KEYS_QUEUED] = "keys_queued",
	[MC_STAT_PATTERNS_QUEUED] = "patterns_queued",
	[MC_STAT_OVERFLOWS] = "overflows",
	[MC_STAT_XACTS_DELIVERED] = "xacts_delivered",
	[MC_STAT_KEYS_SENT] = "keys_sent",
	[MC_STAT_KEYS_DELETED] = "keys_deleted",
	[MC_STAT_COMMANDS] = "commands",
	[MC_STAT_DELIVERY_FAILURES] = "delivery_failures",
	[MC_STAT_REDIS_ERRORS] = "redis_errors",
	[MC_STAT_CACHE_HITS] = "cache_hits",
	[MC_STAT_CACHE_MISSES] = "cache_misses",
	[MC_STAT_CACHE_BYPASSES] = "cache_bypasses",
	[MC_STAT_LEASE_WAITS] = "lease_waits",
	[MC_STAT_LEASE_REFUSED] = "lease_refused",
	[MC_STAT_LEASE_TIMEOUTS] = "lease_timeouts",
	[MC_STAT_QUEUE_ROWS_WRITTEN] = "queue_rows_written",
	[MC_STAT_QUEUE_ROWS_DONE] = "queue_rows_done",
	[MC_STAT_QUEUE_ROWS_SKIPPED] = "queue_rows_skipped",
	[MC_STAT_QUEUE_KEYS_SENT] = "queue_keys_sent",
	[MC_STAT_HANDOFFS] = "handoffs",
	[MC_STAT_RETRIES] = "retries",
	[MC_STAT_RETRY_OVERFLOWS] = "retry_overflows",
	[MC_STAT_FAMILY_FLUSHES] = "family_flushes",
	[MC_STAT_WORKER_FAILURES] = "worker_failures",
	[MC_STAT_BREAKER_TRIPS] = "breaker_trips",
	[MC_STAT_MOVED_REDIRECTS] = "moved_redirects",
	[MC_STAT_ASK_REDIRECTS] = "ask_redirects",
	[MC_STAT_SLOT_MAP_LOADS] = "slot_map_loads",
	[MC_STAT_LOOKUPS_SETTLED] = "lookups_settled",
	[MC_STAT_LOOKUP_HANDOFFS] = "lookup_handoffs",
};

StaticAssertDecl(lengthof(counter_names) == MC_STAT__COUNT,
				 "every counter has a column");

/* the other columns, in the order the values are computed */
static const struct
{
	const char *name;
	Oid			type;
}			extra_cols[] = {
	{"scope", TEXTOID},
	{"last_error", TEXTOID},
	{"last_error_at", TIMESTAMPTZOID},
	{"stats_reset", TIMESTAMPTZOID},
	/* put_shared_status */
	{"worker_state", TEXTOID},
	{"launcher_pid", INT4OID},
	{"drains_running", INT4OID},
	{"redis_state", TEXTOID},
	{"redis_down_since", TIMESTAMPTZOID},
	{"retry_queue_entries", INT8OID},
	{"retry_queue_bytes", INT8OID},
	{"retry_queue_size", INT8OID},
	/* put_topology */
	{"cluster_nodes", INT4OID},
	{"cluster_topology", TEXTOID},
	{"slot_map_loaded_at", TIMESTAMPTZOID},
};

#define NEXTRA lengthof(extra_cols)
#define NCOLS (MC_STAT__COUNT + NEXTRA)

/* a column's name and type: the counters first, then extra_cols */
static const char *
col_name(int c, Oid *type)
{
	*type = c < MC_STAT__COUNT ? INT8OID : extra_cols[c - MC_STAT__COUNT].type;
	return c < MC_STAT__COUNT ? counter_names[c] : extra_cols[c - MC_STAT__COUNT].name;
}

/*
 * The topology's columns from values[i] on: cluster_nodes, cluster_topology
 * ("host:port=slots,..." in the map's order) and slot_map_loaded_at, when
 * some process loaded a slot map for this session's meetcache.redis_url;
 * NULL otherwise (a single server, or no map loaded yet).
 */
static void
put_topology(Datum *values, bool *nulls, int i)
{
	McTopology *t = palloc(sizeof(McTopology));
	StringInfoData buf;

	mc_topology_read(t);
	if (t->nnodes == 0 || t->url_hash != mc_url_hash)
	{
		nulls[i] = nulls[i + 1] = nulls[i + 2] = true;
		return;
	}
	initStringInfo(&buf);
	for (int n = 0; n < t->nnodes; n++)
		appendStringInfo(&buf, "%s%s=%d", n ? "," : "", t->nodes[n].name, t->nodes[n].slots);
	values[i] = Int32GetDatum(t->nnodes);
	values[i + 1] = CStringGetTextDatum(buf.data);
	values[i + 2] = TimestampTzGetDatum(t->loaded_at);
}

PG_FUNCTION_INFO_V1(meetcache_stats);
Datum
meetcache_stats(PG_FUNCTION_ARGS)
{
	McStatsShared *s = get_stats();
	TupleDesc	tupdesc;
	Datum		all[NCOLS];
	bool		allnulls[NCOLS] = {0};
	Datum	   *values;
	bool	   *nulls;
	Datum	   *extra = all + MC_STAT__COUNT;
	bool	   *extranulls = allnulls + MC_STAT__COUNT;
	char		errbuf[sizeof(s->last_error)];
	char		shown[4 * sizeof(s->last_error)];
	TimestampTz errtime,
				resettime;

	if (!has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function meetcache.%s()",
						get_func_name(fcinfo->flinfo->fn_oid)),
				 errdetail("Only superusers and roles with the privileges of pg_read_all_stats may read meetcache's cluster-wide counters."),
				 errhint("A superuser can allow it with: GRANT pg_read_all_stats TO %s;",
						 quote_identifier(GetUserNameFromId(GetUserId(), false)))));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	for (int i = 0; i < MC_STAT__COUNT; i++)
		all[i] = Int64GetDatum((int64) pg_atomic_read_u64(&s->counters[i]));
	extra[0] = CStringGetTextDatum(stats_shared ? "cluster" : "backend");
	SpinLockAcquire(&s->mutex);
	strlcpy(errbuf, s->last_error, sizeof(errbuf));
	errtime = s->last_error_time;
	resettime = s->reset_time;
	SpinLockRelease(&s->mutex);
	/* written by a process of another database, maybe in another encoding */
	if (errbuf[0] && mc_excerpt(shown, sizeof(shown), errbuf, strlen(errbuf)) > 0)
		extra[1] = CStringGetTextDatum(shown);
	else
		extranulls[1] = true;
	if (errtime)
		extra[2] = TimestampTzGetDatum(errtime);
	else
		extranulls[2] = true;
	extra[3] = TimestampTzGetDatum(resettime);
	put_topology(extra, extranulls, put_shared_status(extra, extranulls, 4));

	/* the columns the caller's declaration has, by name */
	values = palloc(sizeof(Datum) * Max(1, tupdesc->natts));
	nulls = palloc(sizeof(bool) * Max(1, tupdesc->natts));
	for (int a = 0; a < tupdesc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, a);
		int			c;
		Oid			type = InvalidOid;

		for (c = 0; c < NCOLS; c++)
			if (strcmp(col_name(c, &type), NameStr(att->attname)) == 0)
				break;
		if (c == NCOLS || type != att->atttypid)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
					 errmsg("meetcache.%s() has a column \"%s\" this meetcache library does not provide",
							get_func_name(fcinfo->flinfo->fn_oid), NameStr(att->attname)),
					 errhint("Install the meetcache library of the extension's version, or run ALTER EXTENSION meetcache UPDATE.")));
		values[a] = all[c];
		nulls[a] = allnulls[c];
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

PG_FUNCTION_INFO_V1(meetcache_stats_reset);
Datum
meetcache_stats_reset(PG_FUNCTION_ARGS)
{
	McStatsShared *s = get_stats();

	for (int i = 0; i < MC_STAT__COUNT; i++)
		pg_atomic_write_u64(&s->counters[i], 0);
	SpinLockAcquire(&s->mutex);
	s->last_error[0] = '\0';
	s->last_error_time = 0;
	s->reset_time = GetCurrentTimestamp();
	SpinLockRelease(&s->mutex);
	PG_RETURN_VOID();
}
