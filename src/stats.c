/*
 * stats.c
 *	  Counters behind meetcache.stats: in shared memory when the library is
 *	  preloaded (cluster-wide; shared.c reserves the space and hands it over
 *	  at startup), otherwise in the backend's own memory.  The worker's
 *	  columns come from shared.c's status snapshot.
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
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
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
 * entries, bytes and size.  Returns the next column.
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

PG_FUNCTION_INFO_V1(meetcache_stats);
Datum
meetcache_stats(PG_FUNCTION_ARGS)
{
	McStatsShared *s = get_stats();
	TupleDesc	tupdesc;
#define NEXTRA 12
	Datum		values[MC_STAT__COUNT + NEXTRA];
	bool		nulls[MC_STAT__COUNT + NEXTRA] = {0};
	char		errbuf[sizeof(s->last_error)];
	char		shown[4 * sizeof(s->last_error)];
	TimestampTz errtime,
				resettime;
	int			i;

	if (!has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function meetcache.stats()"),
				 errdetail("Only superusers and roles with the privileges of pg_read_all_stats may read meetcache's cluster-wide counters."),
				 errhint("A superuser can allow it with: GRANT pg_read_all_stats TO %s;",
						 quote_identifier(GetUserNameFromId(GetUserId(), false)))));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != MC_STAT__COUNT + NEXTRA)
		elog(ERROR, "meetcache.stats() has %d columns, expected %d",
			 tupdesc->natts, MC_STAT__COUNT + NEXTRA);
	tupdesc = BlessTupleDesc(tupdesc);

	values[0] = CStringGetTextDatum(stats_shared ? "cluster" : "backend");
	for (i = 0; i < MC_STAT__COUNT; i++)
		values[i + 1] = Int64GetDatum((int64) pg_atomic_read_u64(&s->counters[i]));
	SpinLockAcquire(&s->mutex);
	strlcpy(errbuf, s->last_error, sizeof(errbuf));
	errtime = s->last_error_time;
	resettime = s->reset_time;
	SpinLockRelease(&s->mutex);
	i = MC_STAT__COUNT + 1;
	/* written by a process of another database, maybe in another encoding */
	if (errbuf[0] && mc_excerpt(shown, sizeof(shown), errbuf, strlen(errbuf)) > 0)
		values[i] = CStringGetTextDatum(shown);
	else
		nulls[i] = true;
	if (errtime)
		values[i + 1] = TimestampTzGetDatum(errtime);
	else
		nulls[i + 1] = true;
	values[i + 2] = TimestampTzGetDatum(resettime);
	i += 3;
	i = put_shared_status(values, nulls, i);
	/* every column set, as the SQL declaration has them */
	Assert(i == MC_STAT__COUNT + NEXTRA);
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
