/*
 * delivery.c
 *	  Where a committed transaction's keys go: deleted from Redis by the
 *	  committing backend (sync modes), left to the drain that reads their
 *	  queue row (queue modes, and sync+queue when the backend fails), or
 *	  handed to the launcher's retry queue (sync, Redis failing); plus the
 *	  circuit breaker's part at commit and waking the drain.
 *
 * Called from the commit callback (pending.c): no palloc, no catalog
 * access, never an ERROR.  A failure is a WARNING and a counter; the
 * commit always stands.  Only a Redis that does not answer (no reply in
 * time, a broken connection) opens the breaker.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/timestamp.h"

#include "meetcache.h"

int
mc_effective_delivery(void)
{
	return mc_shared_ready() ? mc_delivery : MC_DELIVERY_SYNC;
}

/* delete the keys now; false (with err) on failure.  No throw. */
static bool
deliver_now(McCommitted *p, McErr *err)
{
	McInvResult res;
	TimestampTz deadline;

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), mc_commit_timeout);
	if (mc_redis_invalidate(p->keys, p->nkeys, p->patterns, p->npatterns,
							deadline, 0, &res, err))
	{
		mc_stat_add(MC_STAT_XACTS_DELIVERED, 1);
		mc_stat_add(MC_STAT_KEYS_SENT, res.keys_sent);
		mc_stat_add(MC_STAT_KEYS_DELETED, res.keys_deleted);
		mc_stat_add(MC_STAT_COMMANDS, res.commands);
		return true;
	}
	mc_stat_add(MC_STAT_DELIVERY_FAILURES, 1);
	mc_stat_add(MC_STAT_COMMANDS, res.commands);
	mc_stat_error(err->msg);
	return false;
}

/* sync keys the backend could not delete go to the launcher */
static void
hand_off(McCommitted *p)
{
	if (mc_retry_push(MyDatabaseId, p->keys, p->nkeys, p->patterns, p->npatterns))
	{
		mc_stat_add(MC_STAT_HANDOFFS, 1);
		return;
	}
	mc_stat_add(MC_STAT_RETRY_OVERFLOWS, 1);
	mc_db_request_flush(MyDatabaseId);
	ereport(LOG,
			(errmsg("meetcache: the retry queue is full; every cache family of this database will be flushed"),
			 errhint("Raise meetcache.retry_buffer, or use meetcache.delivery = 'sync+queue'.")));
}

static void
deliver_keys(McCommitted *p)
{
	McErr		err;
	bool		worker = mc_breaker_applies();

	/* counted once per transaction: no shared-memory traffic per key */
	mc_stat_add(MC_STAT_KEYS_QUEUED, p->nkeys);
	mc_stat_add(MC_STAT_PATTERNS_QUEUED, p->npatterns);

	if (p->queued && p->mode == MC_DELIVERY_QUEUE)
	{
		mc_db_wake(MyDatabaseId);
		return;
	}
	if (worker && mc_breaker_open())
	{
		/* Redis is known down: no deadline to wait out, hand over */
		if (p->queued)
			mc_db_wake(MyDatabaseId);
		else
			hand_off(p);
		return;
	}
	if (deliver_now(p, &err))
	{
		if (p->queued)
			mc_delivered_add(MyDatabaseId, p->queue_xid);
		return;
	}
	/* only a Redis that does not answer (no reply in time, a broken
	 * connection) opens the breaker; one that answers "no", or answers
	 * every step of a SCAN too long for commit_timeout, is no reason to
	 * stop trying */
	if (worker && err.sqlstate == ERRCODE_CONNECTION_FAILURE)
		mc_breaker_trip();
	if (p->queued)
		mc_db_wake(MyDatabaseId);
	else if (worker)
		hand_off(p);
	/* a WARNING is safe here; an ERROR would PANIC */
	ereport(WARNING,
			(errcode(err.sqlstate),
			 errmsg("meetcache: could not delete %d cache keys after commit: %s",
					p->nkeys + p->npatterns, err.msg),
			 (p->queued || worker) ?
			 errdetail("The transaction is committed. The background worker deletes its keys when Redis answers again.") :
			 errdetail("The transaction is committed. Its cache keys stay until their TTL expires."),
			 errhint("Check that Redis is reachable at meetcache.redis_url.")));
}

/*
 * Lookups no queue row holds (recheck.c): settled, or handed to the drain
 * in shared memory, or, when they do not fit there, the database's families
 * are flushed.
 */
static void
deliver_lookups(McCommitted *p)
{
	if (!mc_recheck_changed_after_commit())
	{
		mc_stat_add(MC_STAT_LOOKUPS_SETTLED, 1);
		return;
	}
	if (mc_handoff_push(MyDatabaseId, p->lookups, p->nlookups))
	{
		mc_stat_add(MC_STAT_LOOKUP_HANDOFFS, 1);
		return;
	}
	mc_stat_add(MC_STAT_RETRY_OVERFLOWS, 1);
	mc_db_request_flush(MyDatabaseId);
	ereport(LOG,
			(errmsg("meetcache: no room to hand over the lookups of a committed transaction; every cache family of this database will be flushed")));
}

void
mc_deliver(McCommitted *p)
{
	/* first: decided before a Redis round trip can widen the window */
	if (p->lookups_watched && p->nlookups > 0)
		deliver_lookups(p);
	deliver_keys(p);
	/* the drain resolves the row's lookups again: now, not at its poll */
	if (p->lookups_queued)
		mc_db_wake(MyDatabaseId);
}

