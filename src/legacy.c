/*
 * legacy.c
 *	  C functions that only the frozen 0.1.0 SQL script uses.  The 0.2.0
 *	  library still serves them so that a database on 0.1.0 keeps working
 *	  (and can run ALTER EXTENSION meetcache UPDATE) after the new library
 *	  is installed; 0.2.0's script drops the SQL objects behind them.
 *
 *	  meetcache._allow_trigger_ddl(regclass), _trigger_ddl_allowed(oid):
 *	  the 0.1.0 attach()/detach() allowance; _guard_snapshot(),
 *	  _guard_before(): the 0.1.0 guard's single before-snapshot.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

#include "meetcache.h"


#define MAX_ALLOWED 64
static Oid	allowed_rel[MAX_ALLOWED];
static int	nallowed = 0;
static LocalTransactionId allowed_lxid = InvalidLocalTransactionId;

#if PG_VERSION_NUM >= 170000
#define MY_LXID (MyProc->vxid.lxid)
#else
#define MY_LXID (MyProc->lxid)
#endif

PG_FUNCTION_INFO_V1(meetcache_allow_trigger_ddl);
Datum
meetcache_allow_trigger_ddl(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);

	if (allowed_lxid != MY_LXID)
	{
		nallowed = 0;
		allowed_lxid = MY_LXID;
	}
	for (int i = 0; i < nallowed; i++)
		if (allowed_rel[i] == relid)
			PG_RETURN_VOID();
	if (nallowed == MAX_ALLOWED)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cannot attach or detach more than %d tables in one transaction", MAX_ALLOWED)));
	allowed_rel[nallowed++] = relid;
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(meetcache_trigger_ddl_allowed);
Datum
meetcache_trigger_ddl_allowed(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);

	if (allowed_lxid == MY_LXID)
		for (int i = 0; i < nallowed; i++)
			if (allowed_rel[i] == relid)
				PG_RETURN_BOOL(true);
	PG_RETURN_BOOL(false);
}

/*
 * The guard compares the meetcache triggers before and after each ALTER
 * TABLE, ALTER TRIGGER, CREATE TRIGGER and DROP TRIGGER: only a change
 * counts, so pg_dump's CREATE TRIGGER followed by one ENABLE ALWAYS
 * TRIGGER per trigger passes.  The snapshot is taken at ddl_command_start
 * (meetcache._guard_snapshot) and read back at ddl_command_end
 * (meetcache._guard_before()).
 */
typedef struct GuardTrig
{
	Oid			tgoid;
	Oid			relid;
	NameData	name;
	char		state;
} GuardTrig;

static GuardTrig *snap = NULL;
static int	snap_n = 0;

PG_FUNCTION_INFO_V1(meetcache_guard_snapshot);
Datum
meetcache_guard_snapshot(PG_FUNCTION_ARGS)
{
	int			lvl = mc_settings_pin(false);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "meetcache: SPI_connect failed");
	if (SPI_execute("SELECT t.oid, t.tgrelid, t.tgname, t.tgenabled FROM pg_catalog.pg_trigger t "
					"WHERE t.tgfoid OPERATOR(pg_catalog.=) 'meetcache.invalidate_trigger()'::pg_catalog.regprocedure",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "meetcache: could not read pg_trigger");
	if (snap)
		pfree(snap);
	snap_n = (int) SPI_processed;
	snap = MemoryContextAlloc(TopMemoryContext, sizeof(GuardTrig) * Max(snap_n, 1));
	for (int i = 0; i < snap_n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;

		snap[i].tgoid = DatumGetObjectId(SPI_getbinval(tup, td, 1, &isnull));
		snap[i].relid = DatumGetObjectId(SPI_getbinval(tup, td, 2, &isnull));
		namestrcpy(&snap[i].name, DatumGetCString(DirectFunctionCall1(nameout,
																	  SPI_getbinval(tup, td, 3, &isnull))));
		snap[i].state = DatumGetChar(SPI_getbinval(tup, td, 4, &isnull));
	}
	SPI_finish();
	mc_settings_restore(lvl);
	PG_RETURN_VOID();
}

/* the snapshot: (tgoid, relid, tgname, tgenabled) of every meetcache trigger */
PG_FUNCTION_INFO_V1(meetcache_guard_before);
Datum
meetcache_guard_before(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TupleDesc	desc;
	Tuplestorestate *ts;
	MemoryContext oldcxt;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	desc = CreateTupleDescCopy(desc);
	ts = tuplestore_begin_heap(true, false, work_mem);
	MemoryContextSwitchTo(oldcxt);
	for (int i = 0; i < snap_n; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = ObjectIdGetDatum(snap[i].tgoid);
		values[1] = ObjectIdGetDatum(snap[i].relid);
		values[2] = NameGetDatum(&snap[i].name);
		values[3] = CharGetDatum(snap[i].state);
		tuplestore_putvalues(ts, desc, values, nulls);
	}
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = ts;
	rsinfo->setDesc = desc;
	return (Datum) 0;
}

