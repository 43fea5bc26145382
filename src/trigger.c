/*
 * trigger.c
 *	  The C trigger function attached to user tables, the check run by
 *	  meetcache.attach(), and the affected_keys() dry run.  All three share
 *	  one path: rules.c turns rows into keys, and a sink decides where the
 *	  keys go (the transaction's pending set, or a result set).
 *
 *	  Also the guard's memory: which tables attach()/detach() may change
 *	  triggers on in this transaction (the event triggers ask), and
 *	  invalidate_all().
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/tuplestore.h"

#include "meetcache.h"

/* the logical table name a relation is attached under, if any */
static char *
attached_name(Relation rel)
{
	TriggerDesc *td = rel->trigdesc;

	if (td)
		for (int i = 0; i < td->numtriggers; i++)
		{
			Trigger    *t = &td->triggers[i];

			if (strncmp(t->tgname, "meetcache_", 10) == 0 && t->tgnargs >= 1)
				return pstrdup(t->tgargs[0]);
		}
	return NULL;
}

PG_FUNCTION_INFO_V1(meetcache_invalidate_trigger);
Datum
meetcache_invalidate_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trig = (TriggerData *) fcinfo->context;
	Relation	rel;
	const char *name;
	struct McRelRules *rr;
	int			event;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("meetcache.invalidate_trigger() must be called as a trigger"),
				 errhint("Use meetcache.attach() to create the triggers.")));
	if (!TRIGGER_FIRED_AFTER(trig->tg_event) || !TRIGGER_FIRED_FOR_STATEMENT(trig->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("meetcache.invalidate_trigger() must be fired AFTER ... FOR EACH STATEMENT"),
				 errhint("Use meetcache.attach() to create the triggers.")));

	rel = trig->tg_relation;
	name = trig->tg_trigger->tgnargs >= 1 ? trig->tg_trigger->tgargs[0]
		: RelationGetRelationName(rel);
	rr = mc_rel_rules(rel, name, false);

	if (TRIGGER_FIRED_BY_TRUNCATE(trig->tg_event))
	{
		ListCell   *lc;
		StringInfoData buf;

		initStringInfo(&buf);
		foreach(lc, mc_rel_families(rr))
		{
			McFamily   *f = (McFamily *) lfirst(lc);

			resetStringInfo(&buf);
			if (f->tmpl->nargs == 0)
			{
				mc_render(&buf, f->tmpl, mc_key_prefix, NULL);
				mc_pending_sink(NULL, buf.data, buf.len, f, 0);
			}
			else
			{
				mc_append_glob_escaped(&buf, mc_key_prefix, strlen(mc_key_prefix));
				appendStringInfoString(&buf, f->tmpl->glob);
				mc_pending_add_pattern(buf.data, buf.len);
			}
		}
		return PointerGetDatum(NULL);
	}

	if (TRIGGER_FIRED_BY_INSERT(trig->tg_event))
		event = MC_EV_INSERT;
	else if (TRIGGER_FIRED_BY_UPDATE(trig->tg_event))
		event = MC_EV_UPDATE;
	else
		event = MC_EV_DELETE;

	if (trig->tg_oldtable == NULL && trig->tg_newtable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("meetcache trigger \"%s\" on \"%s\" has no transition table",
						trig->tg_trigger->tgname, RelationGetRelationName(rel)),
				 errhint("Re-create the triggers with meetcache.attach().")));

	if (mc_rel_nrules(rr) > 0)
	{
		TupleDesc	desc = RelationGetDescr(rel);
		TupleTableSlot *oldslot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
		TupleTableSlot *newslot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);

		mc_collect(rr, rel, event, trig->tg_oldtable, trig->tg_newtable,
				   oldslot, newslot, mc_key_prefix, mc_pending_sink, NULL);
		ExecDropSingleTupleTableSlot(oldslot);
		ExecDropSingleTupleTableSlot(newslot);
	}
	return PointerGetDatum(NULL);
}

/*
 * meetcache._check_table(regclass, text) -> integer
 *	  Compile the rules of a logical table against a relation, so a missing
 *	  column or lookup table is an error at attach time, not at a write.
 */
PG_FUNCTION_INFO_V1(meetcache_check_table);
Datum
meetcache_check_table(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Relation	rel = table_open(relid, AccessShareLock);
	struct McRelRules *rr = mc_rel_rules(rel, name, true);
	int			n = mc_rel_nrules(rr);

	table_close(rel, AccessShareLock);
	PG_RETURN_INT32(n);
}

/* trigger on meetcache.rules / families: make every backend reload them */
PG_FUNCTION_INFO_V1(meetcache_rules_changed);
Datum
meetcache_rules_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trig = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "meetcache._rules_changed() must be called as a trigger");
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trig->tg_relation));
	return PointerGetDatum(NULL);
}

/* ---- affected_keys ---- */

typedef struct SrfSink
{
	Tuplestorestate *ts;
	TupleDesc	desc;
} SrfSink;

static void
srf_sink(void *arg, const char *key, int len, McFamily *family, int rule_id)
{
	SrfSink    *s = (SrfSink *) arg;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	values[0] = PointerGetDatum(cstring_to_text_with_len(key, len));
	values[1] = CStringGetTextDatum(family->name);
	values[2] = Int32GetDatum(rule_id);
	tuplestore_putvalues(s->ts, s->desc, values, nulls);
}

static Tuplestorestate *
row_store(Relation rel, Datum jsonrow)
{
	Tuplestorestate *ts = tuplestore_begin_heap(false, false, work_mem);
	char	   *sql;
	Datum		arg = jsonrow;
	Oid			argtype = JSONBOID;
	bool		isnull;
	Datum		rec;
	HeapTupleHeader th;
	HeapTupleData tmp;
	MemoryContext outer = CurrentMemoryContext;

	sql = psprintf("SELECT jsonb_populate_record(NULL::%s, $1)",
				   quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											  RelationGetRelationName(rel)));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, 1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "meetcache: could not build a row of \"%s\"", RelationGetRelationName(rel));
	rec = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	{
		MemoryContext old = MemoryContextSwitchTo(outer);

		th = DatumGetHeapTupleHeaderCopy(rec);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	tmp.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tmp.t_self);
	tmp.t_tableOid = RelationGetRelid(rel);
	tmp.t_data = th;
	tuplestore_puttuple(ts, &tmp);
	return ts;
}

/*
 * meetcache._affected_keys(regclass, old jsonb, new jsonb)
 *	  -> SETOF (key text, family text, rule_id int), unprefixed.
 */
PG_FUNCTION_INFO_V1(meetcache_affected_keys);
Datum
meetcache_affected_keys(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	char	   *name;
	struct McRelRules *rr;
	SrfSink		sink;
	MemoryContext oldcxt;
	Tuplestorestate *oldts = NULL,
			   *newts = NULL;
	int			event;
	TupleDesc	desc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (PG_ARGISNULL(0) || (PG_ARGISNULL(1) && PG_ARGISNULL(2)))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("affected_keys needs a table and an old row, a new row, or both"),
				 errhint("Pass NULL as the old row for an INSERT and as the new row for a DELETE.")));

	rel = table_open(relid, AccessShareLock);
	name = attached_name(rel);
	if (name == NULL)
		name = pstrdup(RelationGetRelationName(rel));
	rr = mc_rel_rules(rel, name, false);
	if (!PG_ARGISNULL(1))
		oldts = row_store(rel, PG_GETARG_DATUM(1));
	if (!PG_ARGISNULL(2))
		newts = row_store(rel, PG_GETARG_DATUM(2));
	event = oldts == NULL ? MC_EV_INSERT : newts == NULL ? MC_EV_DELETE : MC_EV_UPDATE;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	sink.desc = CreateTupleDescCopy(desc);
	sink.ts = tuplestore_begin_heap(true, false, work_mem);
	MemoryContextSwitchTo(oldcxt);

	{
		TupleDesc	rd = RelationGetDescr(rel);
		TupleTableSlot *oldslot = MakeSingleTupleTableSlot(rd, &TTSOpsMinimalTuple);
		TupleTableSlot *newslot = MakeSingleTupleTableSlot(rd, &TTSOpsMinimalTuple);

		mc_collect(rr, rel, event, oldts, newts, oldslot, newslot, "", srf_sink, &sink);
		ExecDropSingleTupleTableSlot(oldslot);
		ExecDropSingleTupleTableSlot(newslot);
	}
	table_close(rel, AccessShareLock);

	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = sink.ts;
	rsinfo->setDesc = sink.desc;
	return (Datum) 0;
}

/* ---- the guard: trigger DDL allowed for attach()/detach() ---- */

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
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "meetcache: SPI_connect failed");
	if (SPI_execute("SELECT t.oid, t.tgrelid, t.tgname, t.tgenabled FROM pg_catalog.pg_trigger t "
					"WHERE t.tgfoid = 'meetcache.invalidate_trigger()'::pg_catalog.regprocedure",
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

/* every key under the prefix, deleted when this transaction commits */
PG_FUNCTION_INFO_V1(meetcache_invalidate_all);
Datum
meetcache_invalidate_all(PG_FUNCTION_ARGS)
{
	StringInfoData pat;

	initStringInfo(&pat);
	mc_append_glob_escaped(&pat, mc_key_prefix, strlen(mc_key_prefix));
	appendStringInfoChar(&pat, '*');
	mc_pending_add_pattern(pat.data, pat.len);
	pfree(pat.data);
	PG_RETURN_VOID();
}
