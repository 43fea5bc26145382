/*
 * queue.c
 *	  The durable queue table meetcache.queue: one row per transaction
 *	  holding its deduplicated, prefixed keys (and family patterns) and the
 *	  lookups to resolve again after commit, written in that transaction
 *	  just before it commits or prepares; and the drain pass that resolves
 *	  the rows' lookups again (rules.c), deletes the keys from Redis and
 *	  then the rows.
 *
 * Rows are inserted directly, without privilege checks, so any role whose
 * writes fire the triggers can queue without privileges on the table; the
 * table's OID, identity sequence and primary key are found once per
 * backend and kept until a relcache invalidation of the table (QueueInfo),
 * so writing a row scans no catalog.
 *
 * A pass also takes the lookups committed transactions handed over in
 * shared memory instead of a row (recheck.c), and frees them once it
 * committed.
 * A drain pass deletes its batch first and commits only after Redis
 * acknowledged the UNLINKs: on any failure the transaction aborts and the
 * rows are still there.  It commits with synchronous_commit = off (set
 * locally in its own transaction), so it never waits for its fsync: a
 * crash can then lose the delete of rows whose keys were already sent,
 * and those rows are taken and sent again after recovery.  That is
 * harmless for every kind of record a row holds:
 *	  - keys: UNLINK of a key already gone does nothing; one a reader set
 *		again since is merely deleted once more (a miss, never stale);
 *	  - patterns: the SCAN and UNLINK of a family run again, the same way;
 *	  - lookups: resolved again, from a snapshot newer than the row's
 *		commit, so what they find is deleted as on a first drain; a key the
 *		first send deleted and they no longer find was either left deleted
 *		or filled again after that commit, from current data;
 *	  - delivered marks (sync+queue): shared memory, gone with the crash, so
 *		such rows are sent again too, never skipped wrongly.
 * The row writers' commits stay synchronous: a committed write is never
 * without its row.  Where the table is plain, the pass deletes its rows
 * straight from the heap (it holds their row locks), without SPI.
 *
 * A pass holds at most PASS_BYTES of keys, patterns and
 * lookups in memory, unless its first row alone holds more.  A database
 * still on 0.1.0's table (no lookups column) is served as before.
 *
 * Every query sent through SPI here is schema-qualified and runs with
 * search_path pinned (mc_settings_pin): drains run as the bootstrap
 * superuser, so nothing a database owner creates may stand in for a
 * built-in function, operator or type.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/heapam.h"
#include "access/relation.h"
#include "access/xact.h"
#include "access/table.h"
#include "utils/memutils.h"
#include "catalog/pg_index.h"
#include "catalog/pg_authid.h"
#include "access/genam.h"
#include "catalog/dependency.h"
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
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "meetcache.h"

/* lookup entries a pass takes from the hand-offs in shared memory */
#define HANDOFF_PASS_MAX 4096

/* raw (detoasted) bytes of keys, patterns and lookups one drain pass takes */
#define PASS_BYTES (8 * 1024 * 1024)

/* id, enqueued_at, keys, patterns, lookups */
#define QUEUE_NATTS 5
/* a database still on 0.1.0 (until ALTER EXTENSION UPDATE) has no lookups */
#define QUEUE_NATTS_010 4

static ArrayType *
str_array(McStr *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = PointerGetDatum(cstring_to_text_with_len(v[i].s, v[i].len));
	return construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT);
}

/*
 * What a backend knows about meetcache.queue, found once and kept until a
 * relcache invalidation of the table (or of everything) arrives
 * (mc_queue_relcache_inval, called from rules.c's callback: one callback
 * slot for both).  Dropping or re-creating the table, ALTER EXTENSION
 * UPDATE adding a column, an index, a trigger or row security all
 * invalidate it.
 */
typedef struct QueueInfo
{
	bool		valid;			/* relid is the table's; cleared by invalidations */
	bool		known;			/* the rest is set for relid */
	Oid			relid;
	Oid			seqid;			/* the identity sequence of id */
	Oid			indexoid;		/* the primary key, when plain */
	bool		plain;			/* rows go straight into heap and index */
	bool		legacy;			/* 0.1.0's table, without lookups */
} QueueInfo;

static QueueInfo queue_info;

void
mc_queue_relcache_inval(Oid relid)
{
	if (!OidIsValid(relid) || relid == queue_info.relid)
		queue_info.valid = queue_info.known = false;
}

/* meetcache.queue's columns, as the install scripts make them */
static const char *const queue_columns[QUEUE_NATTS] =
{"id", "enqueued_at", "keys", "patterns", "lookups"};
static Oid	queue_types[QUEUE_NATTS] =
{INT8OID, TIMESTAMPTZOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};

/*
 * The columns the extension made, in its order, none dropped or added: 0.2.0's
 * five, or 0.1.0's first four (no lookups), and no CHECK constraint.
 */
static bool
queue_shape_is_ours(TupleDesc td)
{
	if ((td->natts != QUEUE_NATTS && td->natts != QUEUE_NATTS_010) ||
		(td->constr != NULL && td->constr->num_check > 0))
		return false;
	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(td, i);

		if (att->attisdropped || att->atttypid != queue_types[i] ||
			strcmp(NameStr(att->attname), queue_columns[i]) != 0)
			return false;
	}
	return true;
}

/*
 * Can the row go straight into the heap and its primary key?  Only while
 * the table is as the extension made it: one plain index on id, no
 * triggers, no row security.  Anything else an administrator added goes
 * through SPI, which honours it.
 */
static bool
queue_is_plain(Relation rel, Oid *indexoid)
{
	List	   *idx;
	bool		plain;

	*indexoid = InvalidOid;
	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relhastriggers ||
		rel->rd_rel->relhasrules || rel->rd_rel->relrowsecurity ||
		!queue_shape_is_ours(RelationGetDescr(rel)))
		return false;
	idx = RelationGetIndexList(rel);
	plain = list_length(idx) == 1;
	if (plain)
	{
		Relation	ind = index_open(linitial_oid(idx), AccessShareLock);

		plain = ind->rd_index->indisprimary &&
			ind->rd_index->indnatts == 1 && ind->rd_index->indkey.values[0] == 1 &&
			heap_attisnull(ind->rd_indextuple, Anum_pg_index_indexprs, NULL) &&
			heap_attisnull(ind->rd_indextuple, Anum_pg_index_indpred, NULL);
		*indexoid = RelationGetRelid(ind);
		index_close(ind, AccessShareLock);
	}
	list_free(idx);
	return plain;
}

/*
 * Open meetcache.queue for a row (RowExclusiveLock), or NULL when it does
 * not exist.  The name is resolved only when no valid OID is known; an
 * invalidation arriving while the lock is taken (the table was dropped or
 * changed meanwhile) sends it round again.
 */
static Relation
queue_open(void)
{
	Relation	rel;

	for (;;)
	{
		if (!queue_info.valid)
		{
			Oid			nsp = get_namespace_oid("meetcache", true);

			queue_info.relid = OidIsValid(nsp) ? get_relname_relid("queue", nsp) : InvalidOid;
			if (!OidIsValid(queue_info.relid))
				return NULL;
			queue_info.valid = true;
			queue_info.known = false;
		}
		rel = try_relation_open(queue_info.relid, RowExclusiveLock);
		if (rel != NULL && queue_info.valid)
			break;
		if (rel != NULL)
			relation_close(rel, RowExclusiveLock);
		queue_info.valid = false;
	}
	if (!queue_info.known)
	{
#if PG_VERSION_NUM >= 170000
		queue_info.seqid = getIdentitySequence(rel, 1, false);
#else
		queue_info.seqid = getIdentitySequence(queue_info.relid, 1, false);
#endif
		queue_info.plain = queue_is_plain(rel, &queue_info.indexoid);
		/* by name, as queue_is_legacy(): a DBA's added or dropped column counts too */
		queue_info.legacy = get_attnum(queue_info.relid, "lookups") == InvalidAttrNumber;
		queue_info.known = true;
	}
	return rel;
}

/* the row into the heap (toasting large arrays) and its primary key entry */
static void
queue_insert_plain(Relation rel, Datum *values, bool *nulls)
{
	HeapTuple	tup = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	Relation	idx = index_open(queue_info.indexoid, RowExclusiveLock);

	simple_heap_insert(rel, tup);
	(void) index_insert(idx, values, nulls, &tup->t_self, rel, UNIQUE_CHECK_YES,
						false, NULL);
	index_close(idx, RowExclusiveLock);
	heap_freetuple(tup);
}

static void
queue_insert_spi(Datum *values, bool *nulls, bool legacy)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	char		cnulls[QUEUE_NATTS];
	Oid			save_userid;
	int			save_sec;
	int			lvl;
	bool		snap;

	for (int i = 0; i < QUEUE_NATTS; i++)
		cnulls[i] = nulls[i] ? 'n' : ' ';
	lvl = mc_settings_pin(false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "meetcache: SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (plans[legacy] == NULL)
		{
			SPIPlanPtr	p = legacy ?
				SPI_prepare("INSERT INTO meetcache.queue (id, enqueued_at, keys, patterns) "
							"OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4)",
							QUEUE_NATTS_010, queue_types) :
				SPI_prepare("INSERT INTO meetcache.queue (id, enqueued_at, keys, patterns, lookups) "
							"OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5)",
							QUEUE_NATTS, queue_types);

			if (p == NULL || SPI_keepplan(p) != 0)
				elog(ERROR, "meetcache: could not prepare the queue insert");
			plans[legacy] = p;
		}
		/* at PRE_COMMIT no portal holds a snapshot any more */
		snap = !ActiveSnapshotSet();
		if (snap)
			PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_execute_plan(plans[legacy], values, cnulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "meetcache: could not write the queue row");
		if (snap)
			PopActiveSnapshot();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	SPI_finish();
	mc_settings_restore(lvl);
}

/*
 * Write one queue row; returns its id, or -1 when the table does not exist
 * and missing_ok (the extension was dropped in this very transaction).
 * Called at PRE_COMMIT and PRE_PREPARE, where an error still aborts the
 * transaction cleanly.
 *
 * Usually the row is formed and inserted directly (heap and index), not
 * through SPI and the executor: this runs once per writing transaction.  No
 * privilege is checked: writers need none on the table.
 */
int64
mc_queue_write(McStr *keys, int nkeys, McStr *patterns, int npatterns,
			   McStr *lookups, int nlookups, bool missing_ok)
{
	Relation	rel = queue_open();
	Datum		values[QUEUE_NATTS];
	bool		nulls[QUEUE_NATTS] = {false, false, false, false, false};
	int64		id;

	if (rel == NULL)
	{
		if (missing_ok)
			return -1;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table meetcache.queue does not exist"),
				 errdetail("The transaction has cache keys to queue.")));
	}
	id = nextval_internal(queue_info.seqid, false);
	values[0] = Int64GetDatum(id);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[2] = PointerGetDatum(str_array(keys, nkeys));
	if (npatterns > 0)
		values[3] = PointerGetDatum(str_array(patterns, npatterns));
	else
		nulls[3] = true;
	/* 0.1.0's table (no ALTER EXTENSION UPDATE yet): the lookups are not kept */
	if (nlookups > 0)
		values[4] = PointerGetDatum(str_array(lookups, nlookups));
	else
		nulls[4] = true;
	if (queue_info.plain)
		queue_insert_plain(rel, values, nulls);
	else
		queue_insert_spi(values, nulls, queue_info.legacy);
	relation_close(rel, NoLock);
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

/* is meetcache.queue still 0.1.0's, without the lookups column? */
static bool
queue_is_legacy(void)
{
	Oid			nsp;
	Oid			relid;

	if (queue_info.valid && queue_info.known)
		return queue_info.legacy;
	nsp = get_namespace_oid("meetcache", false);
	relid = get_relname_relid("queue", nsp);

	return OidIsValid(relid) && get_attnum(relid, "lookups") == InvalidAttrNumber;
}

/*
 * Can a queue row carry lookups to resolve again?  Not before ALTER
 * EXTENSION meetcache UPDATE has added the column: the lookups then run at
 * statement time only, as in 0.1.0.
 */
bool
mc_queue_keeps_lookups(void)
{
	if (queue_info.valid && queue_info.known)
		return !queue_info.legacy;
	return OidIsValid(get_namespace_oid("meetcache", true)) && !queue_is_legacy();
}

/* where re-resolved lookups go: keys and family patterns of a pass */
typedef struct PassOut
{
	StrVec	   *keys;
	StrVec	   *pats;
} PassOut;

static void
pass_out(void *arg, const char *s, int len, bool pattern)
{
	PassOut    *o = arg;
	McStr		m;

	m.s = pnstrdup(s, len);
	m.len = len;
	vec_add(pattern ? o->pats : o->keys, &m, 1);
}

/* raw size of a nullable text[] column of an SPI row, without detoasting it */
static Size
column_bytes(HeapTuple tup, TupleDesc td, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, td, col, &isnull);

	return isnull ? 0 : toast_raw_datum_size(d);
}

/*
 * Delete the rows a pass took (their ctids; the pass holds their row
 * locks, and rows are never updated): straight from the heap while the
 * table is plain, else through the prepared DELETE, which honours what an
 * administrator added.
 */
static void
delete_taken(SPIPlanPtr delete_plan, Datum *ctids, int n)
{
	Relation	rel = queue_open();
	Datum		del;

	if (rel != NULL && queue_info.plain)
	{
		for (int i = 0; i < n; i++)
			simple_heap_delete(rel, (ItemPointer) DatumGetPointer(ctids[i]));
		relation_close(rel, NoLock);
		return;
	}
	if (rel != NULL)
		relation_close(rel, NoLock);
	del = PointerGetDatum(construct_array(ctids, n, TIDOID, sizeof(ItemPointerData),
										  false, TYPALIGN_SHORT));
	if (SPI_execute_plan(delete_plan, &del, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "meetcache: the drain's delete failed");
}

/*
 * The xids of the rows a pass skipped because their backend had delivered
 * them: their marks go only once the pass's delete has committed
 * (mc_queue_forget_delivered), so that while a row is visible the pending
 * view still shows it delivered.  A pass that aborts leaves them (the next
 * pass starts afresh; the launcher purges marks nobody took).
 */
static TransactionId *skipped_xids = NULL;
static int	nskipped_xids = 0;
static int	skipped_xids_cap = 0;

static void
delivered_room(int n)
{
	nskipped_xids = 0;
	if (n > skipped_xids_cap)
	{
		skipped_xids_cap = Max(n, 64);
		if (skipped_xids)
			pfree(skipped_xids);
		skipped_xids = MemoryContextAlloc(TopMemoryContext,
										  sizeof(TransactionId) * skipped_xids_cap);
	}
}

/* after the pass's transaction committed: its skipped rows are gone */
void
mc_queue_forget_delivered(void)
{
	for (int i = 0; i < nskipped_xids; i++)
		(void) mc_delivered_take(MyDatabaseId, skipped_xids[i]);
	nskipped_xids = 0;
	/* and the lookups it took from shared memory are done */
	mc_handoff_done();
}

/*
 * One drain pass, inside a transaction the caller started and will commit
 * (true) or abort (false).  Takes rows in id order, up to batch rows and
 * PASS_BYTES of keys and patterns (but always the first row), skipping
 * rows another drain holds and the ids in skip (rows whose keys Redis
 * refused); rows whose backend already deleted their keys are removed
 * without sending.  *rows is the number of rows taken, *first_id the
 * lowest id taken; *more says the pass stopped at one of its limits, so
 * more rows may be waiting; *handoffs is the number of lookups it took
 * from the hand-offs in shared memory (take_handoffs: none otherwise).
 */
bool
mc_queue_drain_pass(int batch, int64 *skip, int nskip, int *rows,
					int64 *first_id, bool *more, bool take_handoffs,
					int *handoffs, McErr *err)
{
	static SPIPlanPtr take_plans[2] = {NULL, NULL};	/* [legacy] */
	static SPIPlanPtr delete_plan = NULL;
	SPIPlanPtr	take_plan;
	bool		legacy = queue_is_legacy();
	Datum		args[2];
	Datum	   *skipd = palloc(sizeof(Datum) * Max(nskip, 1));
	Datum	   *ctids;
	SPITupleTable *cand;
	int			ncand;
	Size		bytes = 0;
	int			n;
	StrVec		keys = {NULL, 0, 0};
	StrVec		pats = {NULL, 0, 0};
	StrVec		lookups = {NULL, 0, 0};
	int			skipped = 0;
	bool		ok = true;
	McInvResult res;
	int			lvl;

	memset(err, 0, sizeof(*err));
	*rows = 0;
	*first_id = 0;
	*handoffs = 0;
	for (int i = 0; i < nskip; i++)
		skipd[i] = Int64GetDatum(skip[i]);
	args[0] = Int32GetDatum(batch);
	args[1] = PointerGetDatum(construct_array(skipd, nskip, INT8OID, 8, FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	/* the pass's own commit need not wait for its fsync (header comment) */
	(void) set_config_option("synchronous_commit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	lvl = mc_settings_pin(false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "meetcache: SPI_connect failed");
	if (take_plans[legacy] == NULL)
	{
		Oid			take_types[2] = {INT4OID, INT8ARRAYOID};
		Oid			delete_types[1] = {TIDARRAYOID};

		/*
		 * Rows are never updated, so the locked rows' ctids are stable: a
		 * TID scan deletes the ones taken, whatever the planner thinks of
		 * the table's size.  Generic plans, not new plans per pass.
		 */
		SPIPlanPtr	take = SPI_prepare_cursor(legacy ?
											  "SELECT ctid, id, xmin, keys, patterns, NULL::pg_catalog.text[] "
											  "FROM meetcache.queue "
											  "WHERE id OPERATOR(pg_catalog.<>) ALL ($2) "
											  "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED" :
											  "SELECT ctid, id, xmin, keys, patterns, lookups FROM meetcache.queue "
											  "WHERE id OPERATOR(pg_catalog.<>) ALL ($2) "
											  "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
											  2, take_types, CURSOR_OPT_GENERIC_PLAN);
		SPIPlanPtr	del = delete_plan ? delete_plan :
			SPI_prepare_cursor("DELETE FROM meetcache.queue "
							   "WHERE ctid OPERATOR(pg_catalog.=) ANY ($1)",
							   1, delete_types, CURSOR_OPT_GENERIC_PLAN);

		if (take == NULL || del == NULL)
			elog(ERROR, "meetcache: could not prepare the drain queries: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(take);
		if (del != delete_plan)
			SPI_keepplan(del);
		take_plans[legacy] = take;
		delete_plan = del;
	}
	take_plan = take_plans[legacy];
	if (SPI_execute_plan(take_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "meetcache: the drain query failed");
	cand = SPI_tuptable;
	ncand = (int) SPI_processed;

	/* the rows up to the byte budget; the sizes come from the toast headers */
	ctids = palloc(sizeof(Datum) * Max(ncand, 1));
	for (n = 0; n < ncand; n++)
	{
		HeapTuple	tup = cand->vals[n];
		Size		sz = column_bytes(tup, cand->tupdesc, 4) +
			column_bytes(tup, cand->tupdesc, 5) + column_bytes(tup, cand->tupdesc, 6);
		bool		isnull;

		if (n > 0 && bytes + sz > PASS_BYTES)
			break;
		bytes += sz;
		ctids[n] = SPI_getbinval(tup, cand->tupdesc, 1, &isnull);
	}
	*rows = n;
	*more = n < ncand || ncand == batch;
	if (n > 0)
		delete_taken(delete_plan, ctids, n);
	delivered_room(n);
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = cand->vals[i];
		TupleDesc	td = cand->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, td, 2, &isnull));
		TransactionId xmin = DatumGetTransactionId(SPI_getbinval(tup, td, 3, &isnull));
		Datum		d;
		int			nv;
		McStr	   *v;

		if (*first_id == 0 || id < *first_id)
			*first_id = id;
		/* lookups are resolved again whoever delivered the keys */
		d = SPI_getbinval(tup, td, 6, &isnull);
		if (!isnull)
		{
			v = array_strs(d, &nv);
			vec_add(&lookups, v, nv);
		}
		/* the mark goes only once this pass's delete committed: a pass
		 * that fails puts the rows back, and they are still delivered */
		if (mc_delivered_contains(MyDatabaseId, xmin))
		{
			skipped_xids[skipped++] = xmin;
			continue;
		}
		d = SPI_getbinval(tup, td, 4, &isnull);
		if (!isnull)
		{
			v = array_strs(d, &nv);
			vec_add(&keys, v, nv);
		}
		d = SPI_getbinval(tup, td, 5, &isnull);
		if (!isnull)
		{
			v = array_strs(d, &nv);
			vec_add(&pats, v, nv);
		}
	}
	/* lookups committed transactions handed over without a row (recheck.c) */
	{
		McStr	   *hv = NULL;
		bool		hmore = false;
		int			nh = mc_handoff_take(MyDatabaseId,
										 take_handoffs ? HANDOFF_PASS_MAX : 0,
										 &hv, &hmore);

		*handoffs = nh;
		if (nh > 0)
			vec_add(&lookups, hv, nh);
		if (hmore)
			*more = true;
	}
	/* from a snapshot taken now, after the rows' transactions committed */
	if (lookups.n > 0)
	{
		PassOut		out = {&keys, &pats};

		mc_resolve_lookups(lookups.v, lookups.n, pass_out, &out);
	}
	if (n > 0)
		elog(DEBUG1, "meetcache drain pass: %d queue rows, %d keys and patterns (%d lookups), %zu bytes",
			 n, keys.n + pats.n, lookups.n, bytes);
	if (keys.n > 0 || pats.n > 0)
	{
		/* a millisecond per thousand keys on top of the commit deadline */
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
		nskipped_xids = skipped;
		mc_stat_add(MC_STAT_QUEUE_ROWS_DONE, *rows);
		mc_stat_add(MC_STAT_QUEUE_ROWS_SKIPPED, skipped);
	}
	SPI_finish();
	mc_settings_restore(lvl);
	return ok;
}

/*
 * VACUUM the queue from the drain, between transactions: its rows live for
 * milliseconds, and autovacuum visits a database only once per naptime.
 * SKIP_LOCKED: if autovacuum is at it already, there is nothing to do.
 * Must be called outside a transaction; runs its own.  Not under
 * mc_settings_pin: VACUUM commits and starts transactions itself, which
 * would unwind the pin; the statement is qualified and runs no user code.
 */
void
mc_queue_vacuum(void)
{
	List	   *parsed;
	RawStmt    *raw;
	ParseState *pstate;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
#if PG_VERSION_NUM >= 140000
	parsed = raw_parser("VACUUM (SKIP_LOCKED) meetcache.queue", RAW_PARSE_DEFAULT);
#else
	parsed = raw_parser("VACUUM (SKIP_LOCKED) meetcache.queue");
#endif
	raw = linitial_node(RawStmt, parsed);
	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = "VACUUM (SKIP_LOCKED) meetcache.queue";
	ExecVacuum(pstate, (VacuumStmt *) raw->stmt, true);
	CommitTransactionCommand();
}

/* every family's SCAN pattern under the key prefix, in the current context */
McStr *
mc_queue_family_patterns(int *n)
{
	int			lvl = mc_settings_pin(false);	/* the rule catalog may load */
	List	   *globs = mc_family_globs(mc_key_prefix);
	McStr	   *pats = palloc(sizeof(McStr) * Max(list_length(globs), 1));
	ListCell   *lc;

	mc_settings_restore(lvl);

	*n = 0;
	foreach(lc, globs)
		pats[(*n)++] = *(McStr *) lfirst(lc);
	return pats;
}

/*
 * Delete every key matching the patterns (after lost keys).  Runs outside
 * any transaction: a large keyspace takes a while, and nothing here needs
 * a snapshot.
 */
bool
mc_queue_flush(McStr *pats, int n, McErr *err)
{
	McInvResult res;
	bool		ok;

	memset(err, 0, sizeof(*err));
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

/* for meetcache.pending (given the row's xmin): did its own backend delete its keys? */
PG_FUNCTION_INFO_V1(meetcache_queue_row_delivered);
Datum
meetcache_queue_row_delivered(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(mc_delivered_contains(MyDatabaseId, DatumGetTransactionId(PG_GETARG_DATUM(0))));
}
