/*
 * worker.c
 *	  The background workers (shared_preload_libraries only):
 *	    - "meetcache launcher", one per cluster, connected to no database:
 *	      retries keys of failed sync deliveries from the retry queue, pings
 *	      Redis while the circuit breaker is open, and starts drains;
 *	    - "meetcache drain", one short-lived process per database at a
 *	      time: flushes families when keys were lost, then drains
 *	      meetcache.queue in batches, and exits when idle.
 *
 * Drains exit after a short idle period and when Redis does not answer,
 * so none ever holds a database long enough to block DROP DATABASE (which
 * waits five seconds for other sessions).  What Redis refuses is set aside
 * (logged, counted), never retried in a loop that holds up the rest.  The launcher polls every
 * meetcache.poll_interval, so rows nobody woke it for (COMMIT PREPARED)
 * are still drained.  Both loops read as a list of named steps; the state
 * they share with the backends (database slots, the breaker, the retry
 * ring) is read and changed only through shared.c's functions.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#if PG_VERSION_NUM >= 140000
#include "utils/wait_event.h"
#endif

#include "meetcache.h"
#include "shared.h"

PGDLLEXPORT void mc_launcher_main(Datum arg);
PGDLLEXPORT void mc_drain_main(Datum arg);

#define MAX_DRAINS 4			/* drains running at once */
#define DRAIN_IDLE_MS 500		/* a drain exits after this long idle */
#define DRAIN_GATHER_MS 2		/* pause after a partial batch */
#define BACKOFF_MAX_MS 5000
#define NO_EXT_RECHECK_MS 10000 /* databases without the extension */
#define DELIVERED_MAX_AGE_MS 60000
#define VACUUM_EVERY_ROWS 10000 /* a drain vacuums the queue this often: the
								 * dead index entries its scans skip stay few */

void
mc_worker_register(void)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 1;
	strlcpy(w.bgw_library_name, "meetcache", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "mc_launcher_main", BGW_MAXLEN);
	strlcpy(w.bgw_name, "meetcache launcher", BGW_MAXLEN);
	strlcpy(w.bgw_type, "meetcache launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&w);
}

/* re-read the configuration after a SIGHUP; true if it was */
static bool
reload_config(void)
{
	if (!ConfigReloadPending)
		return false;
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	return true;
}

/* ---- launcher ---- */

typedef struct DrainHandle
{
	Oid			db;
	BackgroundWorkerHandle *handle;
} DrainHandle;

static DrainHandle drains[MC_MAX_DBS];

/* what the launcher's loop carries from one round to the next */
typedef struct Launcher
{
	bool		down;			/* Redis does not answer: the breaker is open */
	bool		was_down;		/* ... in the previous round */
	int			ping_backoff;	/* ms between PINGs while down */
	TimestampTz next_ping;
	TimestampTz next_poll;		/* of every database */
	TimestampTz next_due;		/* a database's backoff ends (0: none) */
	TimestampTz next_purge;		/* of the delivered set */
} Launcher;

/* is drains[i] a drain still starting or running?  Forgets it if not. */
static bool
handle_alive(int i)
{
	pid_t		pid;
	BgwHandleStatus st;

	if (drains[i].handle == NULL)
		return false;
	st = GetBackgroundWorkerPid(drains[i].handle, &pid);
	if (st == BGWH_STARTED || st == BGWH_NOT_YET_STARTED)
		return true;
	pfree(drains[i].handle);
	drains[i].handle = NULL;
	return false;
}

static bool
drain_running(Oid db)
{
	for (int i = 0; i < MC_MAX_DBS; i++)
		if (drains[i].handle && drains[i].db == db && handle_alive(i))
			return true;
	return false;
}

static int
drains_running(void)
{
	int			n = 0;

	for (int i = 0; i < MC_MAX_DBS; i++)
		if (handle_alive(i))
			n++;
	return n;
}

static bool
start_drain(Oid db)
{
	BackgroundWorker w;
	BackgroundWorkerHandle *h;
	int			free_i = -1;

	for (int i = 0; i < MC_MAX_DBS; i++)
		if (drains[i].handle == NULL)
		{
			free_i = i;
			break;
		}
	if (free_i < 0)
		return false;
	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(w.bgw_library_name, "meetcache", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "mc_drain_main", BGW_MAXLEN);
	snprintf(w.bgw_name, BGW_MAXLEN, "meetcache drain for database %u", db);
	strlcpy(w.bgw_type, "meetcache drain", BGW_MAXLEN);
	w.bgw_main_arg = ObjectIdGetDatum(db);
	w.bgw_notify_pid = MyProcPid;
	{
		/* the handle outlives the launcher's per-loop memory */
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		bool		ok = RegisterDynamicBackgroundWorker(&w, &h);

		MemoryContextSwitchTo(old);
		if (!ok)
			return false;
	}
	drains[free_i].db = db;
	drains[free_i].handle = h;
	return true;
}

/* connectable databases; slots and lookup hand-offs of dropped ones are freed */
static void
refresh_databases(void)
{
	Oid			dbs[MC_MAX_DBS * 4];
	int			ndbs = 0;
	Oid			hdbs[MC_MAX_DBS];
	bool		hfound[MC_MAX_DBS] = {false};
	int			nhdbs;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext oldcxt = CurrentMemoryContext;

	/* before the scan: a database whose hand-offs were read and that the
	 * scan does not see was dropped (a session of it made them) */
	nhdbs = mc_handoff_dbs(hdbs, lengthof(hdbs));
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database d = (Form_pg_database) GETSTRUCT(tup);

		for (int i = 0; i < nhdbs; i++)
			hfound[i] |= hdbs[i] == d->oid;
		/* -2: a database left invalid by an interrupted DROP DATABASE */
		if (!d->datallowconn || d->datistemplate || d->datconnlimit == -2)
			continue;
		if (ndbs < lengthof(dbs))
			dbs[ndbs++] = d->oid;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(oldcxt);
	mc_db_slots_sync(dbs, ndbs);
	for (int i = 0; i < nhdbs; i++)
		if (!hfound[i])
			mc_handoff_forget_db(hdbs[i]);
}

static int
due_cmp(const void *a, const void *b)
{
	TimestampTz x = ((const McDueDb *) a)->last_start;
	TimestampTz y = ((const McDueDb *) b)->last_start;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/*
 * Start drains for databases with work (or due for a poll), the one
 * served longest ago first: with more databases than MAX_DRAINS, every
 * database gets its turn.  Returns when a database waiting out its
 * backoff is due (0: none), so the launcher wakes up for it.
 */
static TimestampTz
schedule_drains(bool poll_due)
{
	TimestampTz now = GetCurrentTimestamp();
	McDueDb    *due = palloc(sizeof(McDueDb) * MC_MAX_DBS);
	TimestampTz next_due;
	int			ndue = mc_db_due(poll_due, NO_EXT_RECHECK_MS, now, due, &next_due);
	int			running = drains_running();
	static TimestampTz last_complaint = 0;

	qsort(due, ndue, sizeof(McDueDb), due_cmp);
	for (int i = 0; i < ndue && running < MAX_DRAINS; i++)
	{
		if (drain_running(due[i].db))
			continue;
		if (!start_drain(due[i].db))
		{
			/* no free background worker slot: try again next round */
			if (now - last_complaint >= (int64) 60 * 1000000)
			{
				ereport(LOG,
						(errmsg("meetcache launcher: could not start a drain worker"),
						 errhint("Raise max_worker_processes.")));
				last_complaint = now;
			}
			break;
		}
		running++;
		mc_db_drain_started(due[i].db, now);
	}
	mc_launcher_report_drains(running);
	return next_due;
}

static bool
send_entries(McRetryEntry *e, int n, McErr *err)
{
	int			nk = 0,
				np = 0;
	McStr	   *keys,
			   *pats;
	McInvResult res;
	bool		ok;

	for (int i = 0; i < n; i++)
	{
		nk += e[i].nkeys;
		np += e[i].npatterns;
	}
	keys = palloc(sizeof(McStr) * Max(nk, 1));
	pats = palloc(sizeof(McStr) * Max(np, 1));
	nk = np = 0;
	for (int i = 0; i < n; i++)
	{
		memcpy(keys + nk, e[i].keys, sizeof(McStr) * e[i].nkeys);
		nk += e[i].nkeys;
		memcpy(pats + np, e[i].patterns, sizeof(McStr) * e[i].npatterns);
		np += e[i].npatterns;
	}
	ok = mc_redis_invalidate(keys, nk, pats, np,
							 TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 mc_commit_timeout + nk / 1000),
							 mc_commit_timeout, &res, err);
	mc_stat_add(MC_STAT_COMMANDS, res.commands);
	if (ok)
	{
		mc_stat_add(MC_STAT_KEYS_SENT, res.keys_sent);
		mc_stat_add(MC_STAT_KEYS_DELETED, res.keys_deleted);
	}
	else
	{
		mc_stat_add(MC_STAT_WORKER_FAILURES, 1);
		mc_stat_error(err->msg);
	}
	return ok;
}

/*
 * Deliver the retry queue; false when Redis did not answer.  When Redis
 * answers but refuses (an ACL, a read-only replica), the entries are tried
 * one by one, and one that is still refused is set aside: its database
 * flushes its families instead, and a WARNING says why.  A refusal never
 * holds up the rest.
 */
static bool
deliver_retries(void)
{
	McRetryEntry *e;
	uint64		end;
	int			n;
	McErr		err;

	n = mc_retry_peek(&e, &end);
	if (n == 0)
		return true;
	if (!send_entries(e, n, &err))
	{
		if (err.sqlstate == ERRCODE_CONNECTION_FAILURE)
			return false;
		for (int i = 0; i < n; i++)
		{
			if (send_entries(&e[i], 1, &err))
				continue;
			if (err.sqlstate == ERRCODE_CONNECTION_FAILURE)
				return false;	/* nothing consumed: all retried later */
			ereport(WARNING,
					(errmsg("meetcache launcher: redis refused to delete %d keys of a committed transaction: %s",
							e[i].nkeys + e[i].npatterns, err.msg),
					 errdetail("The cache families of database %u will be flushed instead.", e[i].db)));
			mc_db_request_flush(e[i].db);
		}
	}
	mc_retry_consume(end, n);
	mc_stat_add(MC_STAT_RETRIES, n);
	ereport(LOG,
			(errmsg("meetcache: delivered %d retried transactions", n)));
	return true;
}

/* while the breaker is open, only a PING may touch Redis: still down? */
static bool
redis_down(Launcher *l)
{
	TimestampTz now = GetCurrentTimestamp();
	McErr		err;

	if (!mc_breaker_open())
		return false;
	if (now < l->next_ping)
		return true;
	pgstat_report_activity(STATE_RUNNING, "meetcache launcher: waiting for redis to answer PING");
	if (mc_redis_ping(TimestampTzPlusMilliseconds(now, mc_command_timeout), &err))
	{
		mc_breaker_reset();
		l->ping_backoff = 100;
		return false;
	}
	l->ping_backoff = Min(l->ping_backoff * 2, Min(mc_poll_interval, BACKOFF_MAX_MS));
	l->next_ping = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), l->ping_backoff);
	return true;
}

/* deliver the retry queue; false when Redis did not answer (breaker tripped) */
static bool
retry_failed_deletes(Launcher *l)
{
	pgstat_report_activity(STATE_RUNNING, "meetcache launcher: retrying failed deletes");
	if (deliver_retries())
		return true;
	mc_breaker_trip();
	l->next_ping = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), l->ping_backoff);
	return false;
}

/* log Redis going away and coming back; once back, drains may start at once */
static void
note_redis_change(Launcher *l)
{
	if (l->was_down && !l->down)
	{
		ereport(LOG, (errmsg("meetcache: redis is reachable again")));
		mc_db_clear_backoff();
		l->next_poll = 0;
	}
	if (l->down && !l->was_down)
		ereport(LOG, (errmsg("meetcache: redis is unreachable; committing sessions hand their keys to the worker until it answers again")));
	l->was_down = l->down;
}

/* poll every database each poll_interval, start the drains due */
static void
start_due_drains(Launcher *l, TimestampTz now)
{
	l->next_due = 0;
	if (now >= l->next_poll)
	{
		refresh_databases();
		l->next_poll = TimestampTzPlusMilliseconds(now, mc_poll_interval);
		if (!l->down)
			l->next_due = schedule_drains(true);
	}
	else if (!l->down)
		l->next_due = schedule_drains(false);
	else
		mc_launcher_report_drains(drains_running());
}

/* forget delivered rows nobody drained, every ten seconds */
static void
purge_delivered(Launcher *l, TimestampTz now)
{
	if (now < l->next_purge)
		return;
	mc_delivered_purge(now - (int64) DELIVERED_MAX_AGE_MS * 1000);
	l->next_purge = TimestampTzPlusMilliseconds(now, 10000);
}

/* until a wake, the next poll, the next backoff's end or the next PING */
static void
launcher_sleep(Launcher *l)
{
	long		timeout = (l->next_poll - GetCurrentTimestamp()) / 1000;

	if (l->next_due != 0)
		timeout = Min(timeout, (l->next_due - GetCurrentTimestamp()) / 1000);
	if (l->down)
		timeout = Min(timeout, Max((l->next_ping - GetCurrentTimestamp()) / 1000, 0));
	timeout = Max(timeout, 1);
	pgstat_report_activity(STATE_IDLE, NULL);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 timeout, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

void
mc_launcher_main(Datum arg)
{
	Launcher	l = {.ping_backoff = 100};
	MemoryContext loop_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("meetcache launcher");
	if (!mc_launcher_attach())
		proc_exit(0);
	ereport(LOG, (errmsg("meetcache launcher started")));

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "meetcache launcher",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
		if (reload_config())
			mc_launcher_url_changed();
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);
		l.down = redis_down(&l) || !retry_failed_deletes(&l);
		note_redis_change(&l);
		start_due_drains(&l, GetCurrentTimestamp());
		purge_delivered(&l, GetCurrentTimestamp());
		pgstat_report_stat(false);
		launcher_sleep(&l);
	}
	/* exit 1: if somebody terminated us, the postmaster starts us again */
	proc_exit(1);
}

/* ---- drain ---- */

static bool drain_failed = false;

static void
drain_exit(int code, Datum arg)
{
	mc_drain_detach(drain_failed || code != 0, BACKOFF_MAX_MS);
}

/* run fn in a transaction of its own; pg_stat_activity shows what */
static bool
in_xact(const char *activity, bool (*fn) (void *arg, McErr *err), void *arg, McErr *err)
{
	bool		ok;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, activity);
	PushActiveSnapshot(GetTransactionSnapshot());
	ok = fn(arg, err);
	PopActiveSnapshot();
	if (ok)
		CommitTransactionCommand();
	else
		AbortCurrentTransaction();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return ok;
}

typedef struct FlushArgs
{
	MemoryContext cxt;			/* where the patterns go (outlives the xact) */
	McStr	   *pats;
	int			n;
} FlushArgs;

static bool
patterns_fn(void *arg, McErr *err)
{
	FlushArgs  *a = (FlushArgs *) arg;
	MemoryContext old = MemoryContextSwitchTo(a->cxt);
	McStr	   *pats = mc_queue_family_patterns(&a->n);

	a->pats = palloc(sizeof(McStr) * Max(a->n, 1));
	for (int i = 0; i < a->n; i++)
	{
		a->pats[i].s = pnstrdup(pats[i].s, pats[i].len);
		a->pats[i].len = pats[i].len;
	}
	MemoryContextSwitchTo(old);
	return true;
}

#define MAX_SKIP 1000			/* rows this drain sets aside */

typedef struct PassArgs
{
	int			batch;			/* rows to take */
	int64	   *skip;			/* ids not to take */
	int			nskip;
	int			rows;			/* rows taken */
	int64		first_id;		/* lowest id taken */
	bool		more;			/* the pass stopped at a limit */
	bool		take_handoffs;	/* take the lookups handed over in memory */
	int			handoffs;		/* lookups taken from shared memory */
} PassArgs;

static bool
pass_fn(void *arg, McErr *err)
{
	PassArgs   *a = (PassArgs *) arg;

	return mc_queue_drain_pass(a->batch, a->skip, a->nskip, &a->rows,
							   &a->first_id, &a->more, a->take_handoffs,
							   &a->handoffs, err);
}

static bool
has_extension_fn(void *arg, McErr *err)
{
	*(bool *) arg = OidIsValid(get_extension_oid("meetcache", true));
	return true;
}

/* Redis did not answer: leave, and come back after a backoff */
static void
drain_failure(McErr *err)
{
	drain_failed = true;
	if (mc_breaker_applies() && err->sqlstate == ERRCODE_CONNECTION_FAILURE)
		mc_breaker_trip();
	ereport(LOG,
			(errmsg("meetcache drain: %s; will retry", err->msg)));
	proc_exit(0);
}

/* what a drain carries from one round to the next */
typedef struct Drain
{
	Oid			db;
	MemoryContext flush_cxt;	/* the patterns of a flush */
	int			batch;			/* rows a pass takes, after a refusal fewer */
	int64		skip[MAX_SKIP]; /* rows Redis refused, set aside */
	int			nskip;
	int64		since_vacuum;	/* rows drained since the last vacuum */
	int			split;			/* after a refusal of rows with hand-offs: 2, next
								 * pass the hand-offs alone; 1, rows alone */
	bool		did_work;
	TimestampTz idle_since;
} Drain;

/* connect to the database and take its slot; exits if there is none */
static void
drain_init(Drain *dr)
{
	bool		attached;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	if (!mc_shared_ready())
		proc_exit(0);
	BackgroundWorkerInitializeConnectionByOid(dr->db, InvalidOid, 0);
	pgstat_report_appname("meetcache drain");

	/*
	 * The queue is tiny and churning, so its statistics mislead the
	 * planner: the drain's query wants the id index and a TID scan, always.
	 * And no database setting may make the drain read-only or cancel it.
	 */
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_sort", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	dr->flush_cxt = AllocSetContextCreate(TopMemoryContext, "meetcache flush",
										  ALLOCSET_DEFAULT_SIZES);
	attached = mc_drain_attach(dr->db);
	before_shmem_exit(drain_exit, 0);
	if (!attached)
		proc_exit(0);
}

/* flush every family of the database, for the given flush epoch */
static void
flush_families(Drain *dr, uint32 epoch)
{
	FlushArgs	fa = {dr->flush_cxt, NULL, 0};
	McErr		err;

	/* the patterns come from the catalog; the SCAN needs no xact */
	MemoryContextReset(dr->flush_cxt);
	(void) in_xact("meetcache drain: flushing every cache family", patterns_fn, &fa, &err);
	if (!mc_queue_flush(fa.pats, fa.n, &err))
	{
		if (err.sqlstate == ERRCODE_CONNECTION_FAILURE)
		{
			mc_db_request_flush(dr->db);
			drain_failure(&err);
		}
		/* Redis refuses: nothing more a flush could do */
		mc_stat_add(MC_STAT_WORKER_FAILURES, 1);
		mc_stat_error(err.msg);
		ereport(WARNING,
				(errmsg("meetcache drain: redis refused to flush the cache families: %s", err.msg)));
	}
	else
		ereport(LOG, (errmsg("meetcache drain: flushed every cache family")));
	mc_drain_flushed(epoch);
}

/*
 * Redis answered a pass but refused: find the row it refuses, one row per
 * pass, and set it aside (it stays queued for a later drain); the rest
 * goes on.
 */
static void
pass_refused(Drain *dr, PassArgs *pa, McErr *err)
{
	mc_stat_add(MC_STAT_WORKER_FAILURES, 1);
	mc_stat_error(err->msg);
	if (err->sqlstate == ERRCODE_CONNECTION_FAILURE || dr->nskip == MAX_SKIP)
		drain_failure(err);
	if (pa->batch > 1)
	{
		dr->batch = 1;
		return;
	}
	dr->skip[dr->nskip++] = pa->first_id;
	ereport(WARNING,
			(errmsg("meetcache drain: redis refused to delete the keys of queue row %lld: %s",
					(long long) pa->first_id, err->msg),
			 errdetail("The row stays in meetcache.queue; this drain goes on with the others.")));
}

/*
 * Redis answered a pass that held lookup hand-offs (recheck.c) but refused:
 * find out whether they are to blame, with a pass of them alone first
 * (split 2), then passes of rows alone (split 1: a row Redis refuses is
 * set aside there as usual).  Hand-offs refused alone are dropped and the
 * database's families flushed instead (they have no row to set aside).
 */
static void
handoffs_refused(Drain *dr, PassArgs *pa, McErr *err)
{
	mc_stat_add(MC_STAT_WORKER_FAILURES, 1);
	mc_stat_error(err->msg);
	if (pa->rows > 0)
	{
		dr->split = 2;
		return;
	}
	if (dr->split == 2)
		dr->split = 1;			/* then the rows, without them */
	mc_handoff_done();
	mc_db_request_flush(dr->db);
	ereport(WARNING,
			(errmsg("meetcache drain: redis refused to delete the keys of handed-over lookups: %s", err->msg),
			 errdetail("Every cache family of this database will be flushed instead.")));
}

/*
 * A pass takes up to drain_batch rows, and stops early at its byte budget
 * (queue.c): a few rows of a bulk transaction can hold a hundred thousand
 * keys each, and a pass holds its keys in memory.  After a refusal the
 * batch is one row, and doubles back from there.  False after a refusal.
 */
static bool
drain_pass(Drain *dr, PassArgs *pa)
{
	McErr		err;

	pa->batch = dr->split == 2 ? 0 : Min(dr->batch, mc_drain_batch);
	pa->take_handoffs = dr->split != 1;
	pa->skip = dr->skip;
	pa->nskip = dr->nskip;
	if (!in_xact("meetcache drain: deleting the keys of queue rows", pass_fn, pa, &err))
	{
		if (err.sqlstate != ERRCODE_CONNECTION_FAILURE && pa->handoffs > 0)
		{
			handoffs_refused(dr, pa, &err);
			return false;
		}
		pass_refused(dr, pa, &err);
		return false;
	}
	mc_queue_forget_delivered();
	if (dr->split > 0)
		dr->split--;			/* the hand-offs went through: the rows next */
	else if (pa->rows >= pa->batch)
		dr->batch = Min(dr->batch * 2, mc_drain_batch);
	dr->since_vacuum += pa->rows;
	if (dr->since_vacuum >= VACUUM_EVERY_ROWS)
	{
		mc_queue_vacuum();
		dr->since_vacuum = 0;
	}
	return true;
}

/*
 * Work was done: under load every commit sets our latch, so let a few rows
 * gather instead of running one transaction per commit.
 */
static void
drain_gather(Drain *dr)
{
	dr->did_work = true;
	dr->idle_since = GetCurrentTimestamp();
	(void) WaitLatch(NULL, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 DRAIN_GATHER_MS, PG_WAIT_EXTENSION);
}

/*
 * Time to leave?  A drain that found nothing leaves at once; one that
 * worked lingers briefly, since more commits usually follow.
 */
static bool
drain_idle(Drain *dr)
{
	return !dr->did_work ||
		GetCurrentTimestamp() - dr->idle_since >= (int64) DRAIN_IDLE_MS * 1000;
}

void
mc_drain_main(Datum arg)
{
	Drain		dr = {.db = DatumGetObjectId(arg), .batch = mc_drain_batch};
	bool		has_ext = false;
	McErr		err;

	drain_init(&dr);
	(void) in_xact("meetcache drain: looking for the extension", has_extension_fn, &has_ext, &err);
	if (!has_ext)
	{
		mc_drain_no_extension();
		proc_exit(0);
	}
	for (;;)
	{
		uint32		epoch;
		bool		flush;
		PassArgs	pa;

		CHECK_FOR_INTERRUPTS();
		(void) reload_config();
		flush = mc_drain_take_work(&epoch);
		if (flush)
			flush_families(&dr, epoch);
		if (!drain_pass(&dr, &pa))
			continue;			/* refused: again, smaller or without the row */
		if (pa.more)
			continue;			/* more to come */
		if (pa.rows > 0 || pa.handoffs > 0 || flush)
			drain_gather(&dr);
		if (drain_idle(&dr))
		{
			if (mc_drain_leave())
				break;
			continue;			/* work came meanwhile */
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 DRAIN_IDLE_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}
