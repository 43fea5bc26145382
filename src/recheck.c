/*
 * recheck.c
 *	  Whether a sync transaction's lookups must be resolved again after its
 *	  commit (README, "Lookups after commit").  A lookup (a meeting's
 *	  participants) runs at statement time; a row of its via_table that
 *	  another transaction L makes visible between that lookup's snapshot
 *	  and our own commit is missed by it, so the lookups are resolved again
 *	  after the commit.  That second resolution is needed only if such an L
 *	  exists, and shared counters tell:
 *	    - every transaction that wrote an attached table (its meetcache
 *	      trigger fired) adds 1 to the table's "begun" counter at
 *	      PRE_COMMIT, before its commit can become visible, and 1 to its
 *	      "ended" counter once its commit is visible (or it aborted);
 *	    - before the snapshot of a lookup through table V, the transaction
 *	      W reads V's ended, then its begun.  Equal means no writer of V was
 *	      between the two points then: every writer counted had become
 *	      visible before the snapshot, so the lookup saw its rows.  W keeps
 *	      the begun it read;
 *	    - after W's commit is visible, V's begun still at that value (W's own
 *	      addition aside) means no writer of V reached PRE_COMMIT in the
 *	      window, so none became visible in it: the lookup missed nothing
 *	      and needs no second resolution.  Otherwise it is needed.
 *	  Any other answer (a counter moved, a writer was in flight, a table
 *	  this cannot speak for) keeps the second resolution.
 * When W can skip, it decides at PRE_COMMIT (the counters are still
 * unchanged) to write no queue row for its lookups; if the counters then
 * move before its commit is visible, the lookups go to the database's
 * drain through shared memory (mc_handoff_push) from the commit callback.
 * A crash loses them, and a crash-restart already makes every database
 * flush its cache families (shared.c's flush epoch), so nothing is lost.
 * When they do not fit, the database flushes its families.
 * A via table V qualifies only when every write to it fires its meetcache
 * triggers: a plain table (not partitioned, no partition, no inheritance
 * parent or child, not written by a logical replication subscription,
 * whose apply worker fires no statement trigger) with all four meetcache
 * triggers ENABLE ALWAYS, as the guard keeps them.  Any DDL while an
 * attached table exists counts as a write of every attached table (the
 * guard's ddl_command_start), so a trigger dropped or disabled mid-window
 * cannot go unseen either.  The same counter lets a backend keep the
 * answer across transactions (Qualified): it holds while the table's
 * begun is where it was read, quiet, before the answer was found.
 * Off, so that every lookup is resolved again as before:
 *	  - with max_prepared_transactions > 0 (a prepared transaction becomes
 *	    visible at a COMMIT PREPARED no counter sees);
 *	  - without shared_preload_libraries (no counters, and no drain);
 *	  - in a session with meetcache.lookup_recheck = always.
 * Invariants: the state is per transaction, in static memory (the commit
 * and abort callbacks use it: no palloc, no catalog access, no throw),
 * and is reset at every transaction end (mc_recheck_reset);
 * begun is added to at most once per slot and transaction (twice when
 * wrote[] overflowed into "every slot"), and ended exactly where begun was;
 * a table written after PRE_COMMIT (another extension's callback) has
 * begun added to at once.  Hash collisions between tables only
 * make the counters move more often.
 */
#include "postgres.h"

#include "access/table.h"
#include "access/twophase.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_subscription_rel.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/inval.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "meetcache.h"

#if PG_VERSION_NUM >= 170000
#define MY_LXID (MyProc->vxid.lxid)
#else
#define MY_LXID (MyProc->lxid)
#endif

#define MAX_WROTE 32			/* distinct slots before "all of them" */
#define MAX_WATCH 16

int			mc_lookup_recheck = MC_RECHECK_AUTO;

typedef struct Watch
{
	uint32		slot;
	uint64		begun;
} Watch;

static LocalTransactionId state_lxid = InvalidLocalTransactionId;
static uint32 wrote[MAX_WROTE];
static int	nwrote = 0;
static int	nbegun = 0;			/* wrote[0 .. nbegun-1] had begun added to */
static bool wrote_all = false;	/* every slot too (wrote[] overflowed) */
static bool all_begun = false;	/* and begun was added to every slot */
static bool bumped = false;		/* PRE_COMMIT has been */
static bool ended_done = false;	/* ended added to where begun was */
static Watch watch[MAX_WATCH];
static int	nwatch = 0;
static Oid	checked[MAX_WATCH];	/* via tables found to qualify */
static int	nchecked = 0;
static bool dirty = false;		/* some lookup must be resolved again */
static bool ran_ddl = false;	/* the guard saw DDL in this transaction */
static Oid	trigger_fn = InvalidOid;

/*
 * What qualifies() found for a via table, kept across transactions (not
 * transaction state): valid while the table's begun counter is still the
 * value read, quiet, before it was computed.  Whatever can change the
 * answer is DDL, which counts as a write of every attached table (the
 * guard) and so moves that counter at its PRE_COMMIT; a DDL already past
 * its PRE_COMMIT but not yet visible keeps the counter from being quiet.
 * A relcache invalidation of the table drops its entry too, and so does
 * any change of pg_subscription_rel (which sends none); an answer found
 * while an invalidation arrived is not kept (qualified_gen).  Neither is
 * one found in a transaction that ran DDL itself: its catalog reads see
 * its own changes, which a rollback undoes without moving any counter.
 * A DDL's counter ends in its commit callback, before its invalidations
 * are sent: an answer read in between comes from the catalogs as they
 * were (as it did before there was a cache), and its entry goes when those
 * invalidations arrive, which every lookup accepts before it consults the
 * cache.  Changes that bypass DDL (a superuser editing the catalogs, or
 * DDL with the guard's event triggers disabled) are not seen until the
 * table's counter moves or its relcache entry is invalidated.
 */
typedef struct Qualified
{
	Oid			relid;
	uint64		begun;
	bool		qualifies;
} Qualified;

static Qualified qualified[MAX_WATCH];
static int	nqualified = 0;
static int	next_qualified = 0;	/* the entry replaced when all are taken */

/*
 * Bumped by every invalidation that may drop entries: an answer found
 * while one arrived (it may predate what the invalidation announced) is
 * not kept.
 */
static uint64 qualified_gen = 0;

static bool
enabled(void)
{
	return mc_shared_ready() && max_prepared_xacts == 0;
}

static void
reset_state(void)
{
	nwrote = 0;
	nbegun = 0;
	wrote_all = false;
	all_begun = false;
	bumped = false;
	ended_done = false;
	nwatch = 0;
	nchecked = 0;
	dirty = false;
	ran_ddl = false;
}

/* the state belongs to the current transaction */
static void
check_xact(void)
{
	if (state_lxid != MY_LXID)
	{
		reset_state();
		state_lxid = MY_LXID;
	}
}

static uint32
slot_of(Oid relid)
{
	uint32		h = hash_combine(hash_uint32((uint32) MyDatabaseId),
								 hash_uint32((uint32) relid));

	return h % MC_WRITE_SLOTS;
}

/* begin what was written and not begun yet (PRE_COMMIT, or a write after it) */
static void
begin_written(void)
{
	for (; nbegun < nwrote; nbegun++)
		mc_writes_begin(wrote[nbegun]);
	if (wrote_all && !all_begun)
	{
		for (uint32 s = 0; s < MC_WRITE_SLOTS; s++)
			mc_writes_begin(s);
		all_begun = true;
	}
}

static void
add_wrote(uint32 slot)
{
	if (wrote_all)
		return;
	for (int i = 0; i < nwrote; i++)
		if (wrote[i] == slot)
			return;
	if (nwrote == MAX_WROTE)
		wrote_all = true;
	else
		wrote[nwrote++] = slot;
	/* written after PRE_COMMIT (another extension's callback): begin it now */
	if (bumped)
		begin_written();
}

/* how often this transaction added to slot's begun (0, 1 or 2) */
static int
own(uint32 slot)
{
	int			n = all_begun ? 1 : 0;

	for (int i = 0; i < nbegun; i++)
		if (wrote[i] == slot)
			return n + 1;
	return n;
}

/* the trigger function's oid, as the trigger runs (flinfo) */
void
mc_recheck_note_trigger_fn(Oid fn)
{
	trigger_fn = fn;
}

/* a meetcache trigger fired on rel: this transaction writes it */
void
mc_recheck_wrote(Relation rel)
{
	if (!enabled())
		return;
	check_xact();
	add_wrote(slot_of(RelationGetRelid(rel)));
}

/* the guard: DDL counts as a write of every attached table */
void
mc_recheck_wrote_relid(Oid relid)
{
	if (!enabled())
		return;
	check_xact();
	ran_ddl = true;
	add_wrote(slot_of(relid));
}

/* a relcache invalidation (rules.c's callback; InvalidOid: of everything) */
void
mc_recheck_relcache_inval(Oid relid)
{
	qualified_gen++;
	for (int i = 0; i < nqualified; i++)
		if (!OidIsValid(relid) || qualified[i].relid == relid)
			qualified[i].relid = InvalidOid;
}

/*
 * pg_subscription_rel changed (a subscription added or dropped tables):
 * that sends no relcache invalidation of the tables, so every entry goes.
 */
static void
subscription_rel_inval(Datum arg, int cacheid, uint32 hashvalue)
{
	mc_recheck_relcache_inval(InvalidOid);
}

void
mc_recheck_init(void)
{
	CacheRegisterSyscacheCallback(SUBSCRIPTIONRELMAP, subscription_rel_inval, (Datum) 0);
}

static Qualified *
qualified_entry(Oid relid)
{
	for (int i = 0; i < nqualified; i++)
		if (qualified[i].relid == relid)
			return &qualified[i];
	return NULL;
}

static void
remember_qualified(Oid relid, uint64 begun, bool ok)
{
	Qualified  *q = qualified_entry(relid);

	if (q == NULL)
	{
		for (int i = 0; i < nqualified && q == NULL; i++)
			if (!OidIsValid(qualified[i].relid))
				q = &qualified[i];
	}
	if (q == NULL && nqualified < MAX_WATCH)
		q = &qualified[nqualified++];
	if (q == NULL)
	{
		q = &qualified[next_qualified];
		next_qualified = (next_qualified + 1) % MAX_WATCH;
	}
	q->relid = relid;
	q->begun = begun;
	q->qualifies = ok;
}

/*
 * Does a logical replication subscription write relid?  Its apply worker
 * fires row triggers only, never statement triggers (PostgreSQL's rule).
 */
static bool
subscribed(Oid relid)
{
	return mc_catalog_has_row(SubscriptionRelRelationId, SubscriptionRelSrrelidSrsubidIndexId,
							  Anum_pg_subscription_rel_srrelid, relid);
}

/*
 * Every write to rel fires its meetcache triggers (the header comment):
 * a plain table, no partition, no inheritance parent or child (a statement
 * on a parent fires only the parent's triggers), not written by logical
 * replication, with all four meetcache triggers ENABLE ALWAYS and without
 * column lists or WHEN conditions.
 */
static bool
qualifies(Relation rel)
{
	TriggerDesc *td = rel->trigdesc;
	int			events = 0;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition ||
		rel->rd_rel->relhassubclass || td == NULL || !OidIsValid(trigger_fn))
		return false;
	for (int i = 0; i < td->numtriggers; i++)
	{
		Trigger    *t = &td->triggers[i];

		if (t->tgfoid != trigger_fn || t->tgenabled != TRIGGER_FIRES_ALWAYS ||
			!TRIGGER_FOR_AFTER(t->tgtype) || TRIGGER_FOR_ROW(t->tgtype) ||
			t->tgnattr != 0 || t->tgqual != NULL)
			continue;
		if (TRIGGER_FOR_INSERT(t->tgtype))
			events |= 1;
		if (TRIGGER_FOR_UPDATE(t->tgtype))
			events |= 2;
		if (TRIGGER_FOR_DELETE(t->tgtype))
			events |= 4;
		if (TRIGGER_FOR_TRUNCATE(t->tgtype))
			events |= 8;
	}
	return events == 15 && !has_superclass(RelationGetRelid(rel)) &&
		!subscribed(RelationGetRelid(rel));
}

/*
 * The begun value this transaction watches slot at: read now, when the
 * slot is quiet (ended, then begun), or the value an earlier lookup read
 * (a slot two tables share keeps the first).  False: not quiet, or no room.
 */
static bool
watch_slot(uint32 slot, uint64 *begun)
{
	for (int i = 0; i < nwatch; i++)
		if (watch[i].slot == slot)
		{
			*begun = watch[i].begun;
			return true;
		}
	if (nwatch == MAX_WATCH || !mc_writes_quiet(slot, begun))
		return false;
	watch[nwatch].slot = slot;
	watch[nwatch].begun = *begun;
	nwatch++;
	return true;
}

/*
 * Before the snapshot of a lookup through via_relid whose values are kept
 * for a second resolution: can that resolution be skipped?  The counter
 * is read first, then whether the table qualifies: from the cache while
 * the counter has not moved since the answer was found (Qualified), else
 * from the catalogs.  (No lock is kept: DDL on the table moves its
 * counter, through the guard.)
 */
void
mc_recheck_watch(Oid via_relid)
{
	uint64		begun;
	uint64		gen;
	Qualified  *q;
	bool		ok;

	check_xact();
	if (dirty)
		return;
	if (!enabled() || mc_lookup_recheck == MC_RECHECK_ALWAYS)
	{
		dirty = true;
		return;
	}
	for (int i = 0; i < nchecked; i++)
		if (checked[i] == via_relid)
			return;				/* checked at this transaction's first lookup */
	if (nchecked == MAX_WATCH || !watch_slot(slot_of(via_relid), &begun))
	{
		dirty = true;
		return;
	}
	/*
	 * What fires on it now, even if we hold its lock already: invalidations
	 * sent since drop what they announce, before the cache is consulted.
	 * One processed after this (while the catalogs are read) may announce
	 * a change the reads missed: then the answer is not kept.
	 */
	AcceptInvalidationMessages();
	gen = qualified_gen;
	q = qualified_entry(via_relid);
	if (q != NULL && q->begun == begun)
		ok = q->qualifies;
	else
	{
		Relation	via;

		via = table_open(via_relid, AccessShareLock);
		ok = qualifies(via);
		elog(DEBUG2, "meetcache: via table \"%s\" %s a second resolution of its lookups (read from the catalogs)",
			 RelationGetRelationName(via), ok ? "may skip" : "always needs");
		table_close(via, AccessShareLock);
		if (!ran_ddl && gen == qualified_gen)
			remember_qualified(via_relid, begun, ok);
	}
	if (!ok)
		dirty = true;
	else
		checked[nchecked++] = via_relid;
}

/* lookups were kept that no statement-time lookup ran for (queue mode) */
void
mc_recheck_unwatched(void)
{
	check_xact();
	dirty = true;
}

/*
 * PRE_COMMIT, before mc_recheck_pre_commit: may the lookups go without a
 * queue row?  Only if every one was watched and no counter moved yet.
 */
bool
mc_recheck_settled_at_pre_commit(void)
{
	check_xact();
	if (dirty || nwatch == 0 || mc_lookup_recheck == MC_RECHECK_ALWAYS)
		return false;
	for (int i = 0; i < nwatch; i++)
		if (mc_writes_begun(watch[i].slot) != watch[i].begun)
			return false;
	return true;
}

/* PRE_COMMIT: the tables this transaction wrote begin to commit */
void
mc_recheck_pre_commit(void)
{
	check_xact();
	if (bumped)
		return;
	bumped = true;
	begin_written();
}

/*
 * The commit callback, once the commit is visible: did a writer of a
 * watched table reach PRE_COMMIT since its lookup?  Then the lookups must
 * be resolved again.  No throw, no palloc.  (MyProc's lxid is already
 * cleared here: the state is the ending transaction's until
 * mc_recheck_reset.)
 */
bool
mc_recheck_changed_after_commit(void)
{
	if (dirty)
		return true;
	for (int i = 0; i < nwatch; i++)
	{
		uint64		expect = watch[i].begun + own(watch[i].slot);

		if (mc_writes_begun(watch[i].slot) != expect)
			return true;
	}
	return false;
}

/*
 * Commit (first thing: other transactions' lookups wait for no Redis round
 * trip of ours), abort or prepare: end what PRE_COMMIT began.  Once per
 * transaction.  No throw.
 */
void
mc_recheck_end(void)
{
	if (!ended_done)
	{
		for (int i = 0; i < nbegun; i++)
			mc_writes_end(wrote[i]);
		if (all_begun)
			for (uint32 s = 0; s < MC_WRITE_SLOTS; s++)
				mc_writes_end(s);
	}
	ended_done = true;
}

/* after mc_recheck_end: the transaction is over */
void
mc_recheck_reset(void)
{
	mc_recheck_end();
	reset_state();
	state_lxid = InvalidLocalTransactionId;
}
