/*
 * trigger.c
 *	  The C trigger function attached to user tables, the check run by
 *	  meetcache.attach(), and the affected_keys() dry run.  All three share
 *	  one path: rules.c turns rows into keys, and a sink decides where the
 *	  keys go (the transaction's pending set, or a result set).
 *
 *	  TRUNCATE (and a table rewrite, through guard.c) record the patterns
 *	  of every family the table's rules can produce.
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

/* every family of a list (TRUNCATE, a rewrite, rows moved), deleted after commit */
void
mc_invalidate_families(List *families)
{
	ListCell   *lc;

	foreach(lc, families)
		mc_pending_add_family((McFamily *) lfirst(lc));
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
	mc_pending_check_not_committing(rel);
	/* first: whatever follows, this transaction writes rel (recheck.c) */
	mc_recheck_note_trigger_fn(fcinfo->flinfo->fn_oid);
	mc_recheck_wrote(rel);
	name = trig->tg_trigger->tgnargs >= 1 ? trig->tg_trigger->tgargs[0]
		: RelationGetRelationName(rel);
	rr = mc_rel_rules(rel, name, false);

	if (TRIGGER_FIRED_BY_TRUNCATE(trig->tg_event))
	{
		mc_invalidate_families(mc_rel_families(rr));
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
		McSink		sink = {mc_pending_sink, mc_pending_covered, NULL, mc_key_prefix,
		mc_pending_full};

		mc_collect(rr, rel, event, trig->tg_oldtable, trig->tg_newtable,
				   oldslot, newslot, &sink,
				   mc_shared_ready() && mc_queue_keeps_lookups());
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
	int			n;

	mc_rules_reload();
	n = mc_check_rel(rel, name);
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

	/* the whole family: shown as its pattern */
	values[0] = key ? PointerGetDatum(cstring_to_text_with_len(key, len))
		: CStringGetTextDatum(family->tmpl->glob);
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
	int			lvl = mc_settings_pin(false);

	sql = psprintf("SELECT pg_catalog.jsonb_populate_record(NULL::%s, $1)",
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
	mc_settings_restore(lvl);
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
		McSink		out = {srf_sink, NULL, &sink, ""};

		mc_collect(rr, rel, event, oldts, newts, oldslot, newslot, &out, false);
		ExecDropSingleTupleTableSlot(oldslot);
		ExecDropSingleTupleTableSlot(newslot);
	}
	table_close(rel, AccessShareLock);

	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = sink.ts;
	rsinfo->setDesc = sink.desc;
	return (Datum) 0;
}

