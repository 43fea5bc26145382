/*
 * queue.c
 *	  The durable queue table meetcache.queue: one row per transaction
 *	  holding its deduplicated, prefixed keys (and family patterns), written
 *	  in that transaction just before it commits or prepares; and the drain
 *	  pass that deletes committed rows' keys from Redis and then the rows.
 *
 * Rows are inserted directly, without privilege checks, so any role whose
 * writes fire the triggers can queue without privileges on the table.  A
 * drain pass deletes its batch first and commits only after Redis acknowledged
 * the UNLINKs: on any failure the transaction aborts and the rows are
 * still there.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/vacuum.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_node.h"
#include "parser/parser.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "meetcache.h"

static ArrayType *
str_array(McStr *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = PointerGetDatum(cstring_to_text_with_len(v[i].s, v[i].len));
	return construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT);
}

/*
 * Write one queue row; returns its id.  Called at PRE_COMMIT and
 * PRE_PREPARE, where an error still aborts the transaction cleanly.
 *
 * The row is formed and inserted directly (heap and index), not through
 * SPI and the executor: this runs once per writing transaction, and the
 * table has no triggers, rules, policies or constraints beyond NOT NULL.
 * No privilege is checked: writers need none on the table.
 */
int64
mc_queue_write(McStr *keys, int nkeys, McStr *patterns, int npatterns)
{
	Oid			relid;
	Relation	rel;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	HeapTuple	tup;
	int64		id;

	relid = get_relname_relid("queue", get_namespace_oid("meetcache", false));
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table meetcache.queue does not exist"),
				 errhint("Reinstall the extension: DROP EXTENSION meetcache CASCADE; CREATE EXTENSION meetcache.")));
	rel = table_open(relid, RowExclusiveLock);
	if (RelationGetDescr(rel)->natts != 4)
		elog(ERROR, "meetcache.queue has %d columns, expected 4",
			 RelationGetDescr(rel)->natts);
	id = nextval_internal(getIdentitySequence(relid, 1, false), false);
	values[0] = Int64GetDatum(id);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[2] = PointerGetDatum(str_array(keys, nkeys));
	if (npatterns > 0)
		values[3] = PointerGetDatum(str_array(patterns, npatterns));
	else
		nulls[3] = true;
	tup = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	/* heap insert (toasting large arrays) plus the primary key entry */
	CatalogTupleInsert(rel, tup);
	heap_freetuple(tup);
	table_close(rel, NoLock);
	mc_stat_add(MC_STAT_QUEUE_ROWS_WRITTEN, 1);
	return id;
}

static McStr *
array_strs(Datum d, int *n)
{
	ArrayType  *a = DatumGetArrayTypeP(d);
	Datum	   *elems;
	bool	   *nulls;
	int			ne;
	McStr	   *out;
	int			k = 0;

	deconstruct_array(a, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &ne);
	out = palloc(sizeof(McStr) * Max(ne, 1));
	for (int i = 0; i < ne; i++)
	{
		text	   *t;

		if (nulls[i])
			continue;
		t = DatumGetTextPP(elems[i]);
		out[k].s = VARDATA_ANY(t);
		out[k].len = VARSIZE_ANY_EXHDR(t);
		k++;
	}
	*n = k;
	return out;
}

typedef struct StrVec
{
	McStr	   *v;
	int			n;
	int			cap;
} StrVec;

static void
vec_add(StrVec *vec, McStr *s, int n)
{
	if (vec->n + n > vec->cap)
	{
		vec->cap = Max(vec->cap * 2, vec->n + n + 64);
		vec->v = vec->v ? repalloc_huge(vec->v, sizeof(McStr) * vec->cap)
			: palloc(sizeof(McStr) * vec->cap);
	}
	memcpy(vec->v + vec->n, s, sizeof(McStr) * n);
	vec->n += n;
}

/*
 * One drain pass, inside a transaction the caller started and will commit
 * (true) or abort (false).  Takes up to batch rows in id order, skipping
 * rows another drain holds; rows whose backend already deleted their keys
 * are removed without sending.  *rows is the number of rows taken, *nkeys
 * the keys they held.
 */
bool
mc_queue_drain_pass(int batch, int *rows, int *nkeys, McErr *err)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = Int32GetDatum(batch);
	StrVec		keys = {NULL, 0, 0};
	StrVec		pats = {NULL, 0, 0};
	int			skipped = 0;
	bool		ok = true;
	McInvResult res;

	memset(err, 0, sizeof(*err));
	*rows = 0;
	*nkeys = 0;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "meetcache: SPI_connect failed");
	if (plan == NULL)
	{
		Oid			types[1] = {INT4OID};

		/*
		 * Rows are never updated, so the locked rows' ctids are stable: a
		 * TID scan deletes them, whatever the planner thinks of the table's
		 * size.  One generic plan, not a new plan per pass.
		 */
		SPIPlanPtr	p = SPI_prepare_cursor("DELETE FROM meetcache.queue WHERE ctid = ANY (ARRAY("
										   "SELECT ctid FROM meetcache.queue "
										   "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)) "
										   "RETURNING id, keys, patterns",
										   1, types, CURSOR_OPT_GENERIC_PLAN);

		if (p == NULL)
			elog(ERROR, "meetcache: could not prepare the drain query: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		plan = p;
	}
	if (SPI_execute_plan(plan, &arg, NULL, false, 0) != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "meetcache: the drain query failed");
	*rows = (int) SPI_processed;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, td, 1, &isnull));
		Datum		d;
		int			n;
		McStr	   *v;

		if (mc_delivered_take(MyDatabaseId, id))
		{
			skipped++;
			continue;
		}
		d = SPI_getbinval(tup, td, 2, &isnull);
		if (!isnull)
		{
			v = array_strs(d, &n);
			vec_add(&keys, v, n);
		}
		d = SPI_getbinval(tup, td, 3, &isnull);
		if (!isnull)
		{
			v = array_strs(d, &n);
			vec_add(&pats, v, n);
		}
	}
	*nkeys = keys.n + pats.n;
	if (keys.n > 0 || pats.n > 0)
	{
		/* a second per thousand keys on top of the commit deadline */
		TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														   mc_commit_timeout + keys.n / 1000);

		ok = mc_redis_invalidate(keys.v, keys.n, pats.v, pats.n, deadline,
								 mc_commit_timeout, &res, err);
		mc_stat_add(MC_STAT_COMMANDS, res.commands);
		if (ok)
		{
			mc_stat_add(MC_STAT_QUEUE_KEYS_SENT, res.keys_sent);
			mc_stat_add(MC_STAT_KEYS_SENT, res.keys_sent);
			mc_stat_add(MC_STAT_KEYS_DELETED, res.keys_deleted);
		}
	}
	if (ok)
	{
		mc_stat_add(MC_STAT_QUEUE_ROWS_DONE, *rows);
		mc_stat_add(MC_STAT_QUEUE_ROWS_SKIPPED, skipped);
	}
	SPI_finish();
	return ok;
}

/*
 * VACUUM the queue from the drain, between transactions: its rows live for
 * milliseconds, and autovacuum visits a database only once per naptime.
 * SKIP_LOCKED: if autovacuum is at it already, there is nothing to do.
 * Must be called outside a transaction; runs its own.
 */
void
mc_queue_vacuum(void)
{
	List	   *parsed;
	RawStmt    *raw;
	ParseState *pstate;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	parsed = raw_parser("VACUUM (SKIP_LOCKED) meetcache.queue", RAW_PARSE_DEFAULT);
	raw = linitial_node(RawStmt, parsed);
	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = "VACUUM (SKIP_LOCKED) meetcache.queue";
	ExecVacuum(pstate, (VacuumStmt *) raw->stmt, true);
	CommitTransactionCommand();
}

/* delete every family's keys under the key prefix (after lost keys) */
bool
mc_queue_flush_families(McErr *err)
{
	List	   *globs = mc_family_globs(mc_key_prefix);
	McStr	   *pats = palloc(sizeof(McStr) * Max(list_length(globs), 1));
	int			n = 0;
	ListCell   *lc;
	McInvResult res;
	bool		ok;

	memset(err, 0, sizeof(*err));
	foreach(lc, globs)
		pats[n++] = *(McStr *) lfirst(lc);
	if (n == 0)
		return true;
	ok = mc_redis_invalidate(NULL, 0, pats, n,
							 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), mc_commit_timeout),
							 mc_commit_timeout, &res, err);
	mc_stat_add(MC_STAT_COMMANDS, res.commands);
	if (ok)
	{
		mc_stat_add(MC_STAT_FAMILY_FLUSHES, 1);
		mc_stat_add(MC_STAT_KEYS_DELETED, res.keys_deleted);
	}
	return ok;
}

/* for meetcache.pending: did the row's own backend delete its keys? */
PG_FUNCTION_INFO_V1(meetcache_queue_row_delivered);
Datum
meetcache_queue_row_delivered(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(mc_delivered_contains(MyDatabaseId, PG_GETARG_INT64(0)));
}
