/*
 * pending.c
 *	  The per-transaction set of keys (and family patterns) to delete, and
 *	  what happens to it at subtransaction and transaction end.
 *
 * Keys are stored already prefixed, deduplicated with an open-addressing
 * hash, in insertion order.  Savepoints need no per-entry level: every entry
 * added after a subtransaction started sits after the position recorded at
 * its start, so ABORT_SUB truncates to that position and COMMIT_SUB merely
 * forgets it.  Past meetcache.max_keys new keys are replaced by their
 * family's pattern, so memory stays bounded for any transaction; from
 * then on the family is covered (mc_pending_covered), and the triggers
 * skip its rules (lookups and rendering) while the pattern stands.
 *
 * Lookups (a user's rename reaches the meetings they host) are also kept
 * as entries to resolve again after commit (mc_pending_add_lookup): a row
 * linked to the changed one by a transaction that commits between the
 * statement's lookup and our commit is found then.  They travel in the
 * queue row, which is written for them in sync mode too unless recheck.c
 * may find after commit that they need no second resolution.  Past
 * meetcache.max_keys a lookup is replaced by its family, as keys are.
 *
 * What happens to the committed set (meetcache.delivery) is delivery.c's:
 *	  - queue modes write the set as one row of meetcache.queue at PRE_COMMIT
 *	    (and at PRE_PREPARE in every mode), where an error still aborts;
 *	  - sync modes delete the keys from the commit callback; in sync+queue a
 *	    success is recorded so the drain does not send the row again;
 *	  - when Redis is known down (the circuit breaker) or a delete fails,
 *	    sync keys go to the worker's retry queue, and a full retry queue
 *	    makes the database flush its families.
 *
 * The commit callback does no catalog access, no palloc and never throws:
 * everything it needs lives in TopTransactionContext already, and the Redis
 * side (mc_redis_invalidate) allocates with malloc and reports failures as
 * values.  A failure is a WARNING and a counter, never an error.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "meetcache.h"

typedef struct SubStart
{
	int			level;
	int			nkeys;
	int			npatterns;
	int			nlookups;
	bool		overflowed;
} SubStart;

/* a deduplicated set of strings in insertion order (open addressing) */
typedef struct StrSet
{
	McStr	   *v;
	int			n;
	int			cap;
	uint32	   *slots;			/* index + 1 into v; 0 = empty */
	uint32		nslots;			/* power of two */
} StrSet;

typedef struct PendingSet
{
	MemoryContext cxt;
	StrSet		keys;
	McStr	   *patterns;
	McFamily  **patfamily;		/* per pattern: the family it deletes, or NULL */
	char	  **patprefix;		/* ... under this key prefix */
	int			npatterns;
	int			patcap;
	StrSet		lookups;		/* to resolve again after commit (rules.c) */
	SubStart   *subs;
	int			nsubs;
	int			subcap;
	bool		overflowed;
	int			mode;			/* meetcache.delivery at PRE_COMMIT */
	bool		queued;			/* a queue row holds the keys */
	bool		lookups_queued; /* a queue row holds the lookups */
	bool		lookups_watched;	/* no row for them: recheck.c decides */
	TransactionId queue_xid;	/* the row's xmin */
} PendingSet;

static PendingSet *pending = NULL;

static void
set_init(StrSet *set, MemoryContext cxt)
{
	set->cap = 64;
	set->v = MemoryContextAlloc(cxt, sizeof(McStr) * set->cap);
	set->nslots = 256;
	set->slots = MemoryContextAllocZero(cxt, sizeof(uint32) * set->nslots);
}

static PendingSet *
pending_get(void)
{
	if (pending == NULL)
	{
		MemoryContext cxt = AllocSetContextCreate(TopTransactionContext,
												  "meetcache pending keys",
												  ALLOCSET_DEFAULT_SIZES);
		PendingSet *p = MemoryContextAllocZero(cxt, sizeof(PendingSet));

		p->cxt = cxt;
		set_init(&p->keys, cxt);
		set_init(&p->lookups, cxt);
		p->patcap = 8;
		p->patterns = MemoryContextAlloc(cxt, sizeof(McStr) * p->patcap);
		p->patfamily = MemoryContextAlloc(cxt, sizeof(McFamily *) * p->patcap);
		p->patprefix = MemoryContextAlloc(cxt, sizeof(char *) * p->patcap);
		pending = p;
	}
	return pending;
}

static void
rehash(StrSet *set, uint32 nslots, MemoryContext cxt)
{
	if (nslots != set->nslots)
	{
		/* allocate before freeing: an out-of-memory error leaves the set intact */
		uint32	   *nslots_arr = MemoryContextAllocZero(cxt, sizeof(uint32) * nslots);

		pfree(set->slots);
		set->slots = nslots_arr;
		set->nslots = nslots;
	}
	else
		memset(set->slots, 0, sizeof(uint32) * nslots);
	for (int i = 0; i < set->n; i++)
	{
		uint32		h = hash_bytes((const unsigned char *) set->v[i].s, set->v[i].len);
		uint32		mask = set->nslots - 1;
		uint32		pos = h & mask;

		while (set->slots[pos] != 0)
			pos = (pos + 1) & mask;
		set->slots[pos] = i + 1;
	}
}

/* back to the first n entries (a rolled-back savepoint) */
static void
set_truncate(StrSet *set, int n, MemoryContext cxt)
{
	if (n != set->n)
	{
		set->n = n;
		rehash(set, set->nslots, cxt);
	}
}

/* true if added or already present; false if the set holds mc_max_keys */
static bool
set_add(StrSet *set, const char *s, int len, MemoryContext cxt)
{
	uint32		h = hash_bytes((const unsigned char *) s, len);
	uint32		mask = set->nslots - 1;
	uint32		pos = h & mask;
	char	   *copy;

	while (set->slots[pos] != 0)
	{
		McStr	   *e = &set->v[set->slots[pos] - 1];

		if (e->len == len && memcmp(e->s, s, len) == 0)
			return true;
		pos = (pos + 1) & mask;
	}
	if (set->n >= mc_max_keys)
		return false;
	if (set->n == set->cap)
	{
		set->cap *= 2;
		set->v = repalloc_huge(set->v, sizeof(McStr) * set->cap);
	}
	copy = MemoryContextAlloc(cxt, len + 1);
	memcpy(copy, s, len);
	copy[len] = '\0';
	set->v[set->n].s = copy;
	set->v[set->n].len = len;
	set->n++;
	set->slots[pos] = set->n;
	if ((uint32) set->n * 2 > set->nslots)
		rehash(set, set->nslots * 2, cxt);
	return true;
}

/*
 * Record a pattern; family (NULL: none) is the family it deletes whole
 * under meetcache.key_prefix, which mc_pending_covered reports.
 */
static void
add_pattern(PendingSet *p, const char *pat, int len, McFamily *family)
{
	int			i;
	char	   *copy;

	for (i = 0; i < p->npatterns; i++)
		if (p->patterns[i].len == len && memcmp(p->patterns[i].s, pat, len) == 0)
			break;
	if (i == p->npatterns)
	{
		if (p->npatterns == p->patcap)
		{
			p->patcap *= 2;
			p->patterns = repalloc(p->patterns, sizeof(McStr) * p->patcap);
			p->patfamily = repalloc(p->patfamily, sizeof(McFamily *) * p->patcap);
			p->patprefix = repalloc(p->patprefix, sizeof(char *) * p->patcap);
		}
		copy = MemoryContextAlloc(p->cxt, len + 1);
		memcpy(copy, pat, len);
		copy[len] = '\0';
		p->patterns[i].s = copy;
		p->patterns[i].len = len;
		p->patfamily[i] = NULL;
		p->npatterns++;
	}
	if (family != NULL && p->patfamily[i] == NULL)
	{
		p->patprefix[i] = MemoryContextStrdup(p->cxt, mc_key_prefix);
		p->patfamily[i] = family;
	}
}

void
mc_pending_add_pattern(const char *pat, int len)
{
	add_pattern(pending_get(), pat, len, NULL);
}

/*
 * Is the family already deleted whole under meetcache.key_prefix by a
 * pattern of the set (McSink.covered)?  Derived from the patterns
 * themselves, so a rolled-back savepoint that took the pattern away takes
 * the answer with it.  Families are compared by address: a catalog reload
 * gives new ones (then merely not covered), and the old ones live until
 * the end of the transaction (rules.c), so no address is reused.
 */
bool
mc_pending_covered(void *arg, McFamily *family)
{
	PendingSet *p = pending;

	if (p == NULL)
		return false;
	for (int i = 0; i < p->npatterns; i++)
		if (p->patfamily[i] == family && strcmp(p->patprefix[i], mc_key_prefix) == 0)
			return true;
	return false;
}

/* has the set overflowed meetcache.max_keys (families replace keys now)? */
bool
mc_pending_full(void *arg)
{
	return pending != NULL && pending->overflowed;
}

/*
 * A whole family, deleted after commit: by name when its template has no
 * placeholder (meetings:live), else by its SCAN pattern under the prefix.
 */
void
mc_pending_add_family(McFamily *family)
{
	PendingSet *p = pending_get();
	StringInfoData s;

	initStringInfo(&s);
	if (family->tmpl->nargs == 0)
	{
		mc_render(&s, family->tmpl, mc_key_prefix, NULL);
		if (set_add(&p->keys, s.data, s.len, p->cxt))
		{
			pfree(s.data);
			return;
		}
		resetStringInfo(&s);
	}
	mc_append_glob_escaped(&s, mc_key_prefix, strlen(mc_key_prefix));
	appendStringInfoString(&s, family->tmpl->glob);
	add_pattern(p, s.data, s.len, family);
	pfree(s.data);
}

/*
 * Key sink for the triggers: keys arrive prefixed.  When the set is full,
 * the key's whole family is recorded instead (its glob, prefixed), and so
 * it is when the key is NULL (too long to build, or a broken rule).
 */
void
mc_pending_sink(void *arg, const char *key, int len, McFamily *family, int rule_id)
{
	PendingSet *p = pending_get();

	if (key != NULL && set_add(&p->keys, key, len, p->cxt))
		return;
	if (key != NULL && !p->overflowed)
	{
		p->overflowed = true;
		mc_stat_add(MC_STAT_OVERFLOWS, 1);
		ereport(NOTICE,
				(errmsg("meetcache: more than %d keys in this transaction, invalidating whole families instead",
						mc_max_keys),
				 errdetail("Keys of family \"%s\", of the other families of this statement's table and of later families are deleted by SCAN after commit.",
						   family->name),
				 errhint("Raise meetcache.max_keys to keep exact keys for bulk writes.")));
	}
	mc_pending_add_family(family);
}

/*
 * A lookup to resolve again after commit, by a drain, from a snapshot that
 * sees every commit before this transaction's (README, "Leases").  One
 * entry per rule, matched value and key prefix:
 * "relid:rule_id:family:prefix-length:prefix value".  Past mc_max_keys
 * entries the rule's family is deleted instead.
 */
void
mc_pending_add_lookup(Oid relid, int rule_id, McFamily *family, const char *value)
{
	static StringInfoData e = {NULL, 0, 0, 0};	/* reused: set_add copies */
	PendingSet *p = pending_get();
	char		num[MAXINT8LEN + 1];

	/*
	 * Past max_keys the transaction deletes whole families: the lookup's
	 * too (in queue mode no lookup ran now, so no key of it overflowed).
	 */
	if (p->overflowed)
	{
		mc_pending_add_family(family);
		return;
	}
	if (e.data == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		initStringInfo(&e);
		MemoryContextSwitchTo(old);
	}
	/* no format string: this runs once per matched value */
	resetStringInfo(&e);
	pg_lltoa((int64) relid, num);
	appendStringInfoString(&e, num);
	appendStringInfoChar(&e, ':');
	pg_lltoa(rule_id, num);
	appendStringInfoString(&e, num);
	appendStringInfoChar(&e, ':');
	appendStringInfoString(&e, family->name);
	appendStringInfoChar(&e, ':');
	pg_lltoa((int64) strlen(mc_key_prefix), num);
	appendStringInfoString(&e, num);
	appendStringInfoChar(&e, ':');
	appendStringInfoString(&e, mc_key_prefix);
	appendStringInfoString(&e, value);
	if (!set_add(&p->lookups, e.data, e.len, p->cxt))
		mc_pending_add_family(family);
}

bool
mc_pending_any(void)
{
	return pending != NULL &&
		(pending->keys.n > 0 || pending->npatterns > 0 || pending->lookups.n > 0);
}

/* ---- transaction end ---- */

/* hand the committed set to delivery.c (the commit callback: no throw) */
static void
deliver(PendingSet *p)
{
	McCommitted c;

	c.keys = p->keys.v;
	c.nkeys = p->keys.n;
	c.patterns = p->patterns;
	c.npatterns = p->npatterns;
	c.mode = p->mode;
	c.queued = p->queued;
	c.queue_xid = p->queue_xid;
	c.lookups_queued = p->lookups_queued;
	c.lookups_watched = p->lookups_watched;
	c.lookups = p->lookups.v;
	c.nlookups = p->lookups.n;
	mc_deliver(&c);
}

/*
 * missing_ok: at commit, a transaction that dropped the extension has no
 * queue any more; its keys are then delivered as in sync mode.
 */
static void
write_queue(PendingSet *p, bool missing_ok, bool with_keys, bool with_lookups)
{
	int			nlookups = with_lookups ? p->lookups.n : 0;

	if (mc_queue_write(p->keys.v, with_keys ? p->keys.n : 0,
					   p->patterns, with_keys ? p->npatterns : 0,
					   p->lookups.v, nlookups, missing_ok) < 0)
		return;
	p->queued = with_keys;
	p->lookups_queued = nlookups > 0;
	p->queue_xid = GetTopTransactionIdIfAny();
	/* the row exists, so the extension does: let the launcher poll us */
	mc_db_announce(MyDatabaseId);
}

/*
 * Between our PRE_COMMIT (or PRE_PREPARE) and the transaction's end: the
 * queue row and the counters are done, so a write now (another
 * extension's commit hook, called after ours) would go unseen.
 */
static bool committing = false;

/* the trigger: refuse a write whose keys could no longer be delivered */
void
mc_pending_check_not_committing(Relation rel)
{
	if (committing)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("cannot write table \"%s\" while the transaction commits",
						RelationGetRelationName(rel)),
				 errdetail("meetcache has already queued the transaction's cache invalidations; keys of this write would be lost."),
				 errhint("Write attached tables before COMMIT, not from a commit hook.")));
}

static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (mc_pending_any() && !XactReadOnly && !RecoveryInProgress())
			{
				bool		settled;

				pending->mode = mc_effective_delivery();

				/*
				 * In sync mode a row is written only for lookups to resolve
				 * again after commit; the keys take the sync path.  No row
				 * holds the lookups when recheck.c may find after commit that
				 * no second resolution is needed (small sets only: they may
				 * have to go through shared memory then).
				 */
				settled = pending->lookups.n > 0 &&
					pending->mode != MC_DELIVERY_QUEUE &&
					mc_handoff_size(pending->lookups.v, pending->lookups.n) > 0 &&
					mc_recheck_settled_at_pre_commit();
				pending->lookups_watched = settled;
				if (pending->mode != MC_DELIVERY_SYNC &&
					(!settled || pending->keys.n > 0 || pending->npatterns > 0))
					write_queue(pending, true, true, !settled);
				else if (pending->lookups.n > 0 && !settled)
					write_queue(pending, true, false, true);
			}
			else if (mc_pending_any())
			{
				/*
				 * SET TRANSACTION READ ONLY after the writes: no row can be
				 * written now (nextval is refused).  The keys take the sync
				 * path; the lookups are decided after commit, and go to the
				 * drain unless their statement-time lookups need no second
				 * resolution (recheck.c).  A standby has no keys.
				 */
				pending->mode = mc_effective_delivery();
				pending->lookups_watched = pending->lookups.n > 0 && !RecoveryInProgress();
			}
			/* last: an error above aborts before any counter moved */
			mc_recheck_pre_commit();
			committing = true;
			break;
		case XACT_EVENT_PRE_PREPARE:
			committing = true;
			if (mc_pending_any())
			{
				if (!mc_shared_ready())
					ereport(ERROR,
							(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							 errmsg("cannot prepare a transaction that has pending cache invalidations"),
							 errdetail("Its keys must be queued for the background worker, which runs only when meetcache is preloaded."),
							 errhint("Add meetcache to shared_preload_libraries and restart the server.")));
				/* delivered once COMMIT PREPARED makes the row visible */
				write_queue(pending, false, true, true);
			}
			break;
		case XACT_EVENT_COMMIT:
			committing = false;
			/* our commit is visible: say so before any Redis round trip */
			mc_recheck_end();
			if (mc_pending_any())
				deliver(pending);
			pending = NULL;
			mc_recheck_reset();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* memory goes with TopTransactionContext */
			pending = NULL;
			committing = false;
			mc_recheck_reset();
			break;
		default:
			break;
	}
}

static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	PendingSet *p = pending;
	int			level = GetCurrentTransactionNestLevel();

	if (p == NULL)
		return;
	switch (event)
	{
		case SUBXACT_EVENT_START_SUB:
			/* level is the new subtransaction's; record where it starts */
			if (p->keys.n == 0 && p->npatterns == 0 && p->lookups.n == 0)
				break;			/* absent entry means "started empty" */
			if (p->nsubs == p->subcap)
			{
				p->subcap = Max(8, p->subcap * 2);
				if (p->subs)
					p->subs = repalloc(p->subs, sizeof(SubStart) * p->subcap);
				else
					p->subs = MemoryContextAlloc(p->cxt, sizeof(SubStart) * p->subcap);
			}
			p->subs[p->nsubs].level = level;
			p->subs[p->nsubs].nkeys = p->keys.n;
			p->subs[p->nsubs].npatterns = p->npatterns;
			p->subs[p->nsubs].nlookups = p->lookups.n;
			p->subs[p->nsubs].overflowed = p->overflowed;
			p->nsubs++;
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			if (p->nsubs > 0 && p->subs[p->nsubs - 1].level >= level)
				p->nsubs--;
			break;
		case SUBXACT_EVENT_ABORT_SUB:
			{
				SubStart	start = {0, 0, 0, 0, false};

				if (p->nsubs > 0 && p->subs[p->nsubs - 1].level >= level)
					start = p->subs[--p->nsubs];
				set_truncate(&p->keys, start.nkeys, p->cxt);
				set_truncate(&p->lookups, start.nlookups, p->cxt);
				p->npatterns = start.npatterns;
				p->overflowed = start.overflowed;
				break;
			}
		default:
			break;
	}
}

void
mc_pending_init(void)
{
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
}
