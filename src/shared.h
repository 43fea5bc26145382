/*
 * shared.h
 *	  Layout of meetcache's shared memory, for shared.c, worker.c and
 *	  stats.c only.  Everything else uses the functions in meetcache.h.
 */
#ifndef MEETCACHE_SHARED_H
#define MEETCACHE_SHARED_H

#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/proc.h"

#define MC_MAX_DBS 512
#define MC_DELIVERED_SLOTS 131072	/* power of two */

typedef struct McDbSlot
{
	Oid			db;				/* InvalidOid: free */
	bool		work;			/* rows or a flush wait for a drain */
	bool		flush;			/* keys were lost: flush the families */
	bool		no_ext;			/* the last drain found no extension */
	bool		poll_due;		/* a poll wants a drain here, not yet started */
	uint32		flushed_epoch;	/* last flush_epoch this database served */
	PGPROC	   *drain;			/* running drain, for its latch */
	int			backoff_ms;		/* after a failed drain */
	TimestampTz next_start;		/* launcher: not before */
	TimestampTz last_start;
} McDbSlot;

typedef struct McDelivered
{
	Oid			db;				/* InvalidOid: empty */
	TransactionId xid;			/* the queue row's xmin */
	TimestampTz at;
} McDelivered;

typedef struct McShared
{
	LWLock	   *lock;			/* ring, dbs, launcher fields */
	LWLock	   *dlock;			/* delivered set */
	PGPROC	   *launcher;
	pid_t		launcher_pid;
	uint64		worker_url_hash;	/* the launcher's Redis endpoint */
	pg_atomic_uint32 breaker;	/* 1: Redis is down, hand keys over */
	TimestampTz breaker_since;
	uint32		flush_epoch;	/* bumped when sync keys may be lost */
	bool		epoch_served;	/* every database flushed for flush_epoch */
	int			drains_running;
	Size		ring_size;
	uint64		ring_head;		/* byte positions, only ever grow */
	uint64		ring_tail;
	uint32		ring_entries;
	McDbSlot	dbs[MC_MAX_DBS];
	int			ndelivered;
	McDelivered delivered[MC_DELIVERED_SLOTS];
	char		ring[FLEXIBLE_ARRAY_MEMBER];
} McShared;

typedef struct McRetryEntry
{
	Oid			db;
	int			nkeys;
	int			npatterns;
	McStr	   *keys;
	McStr	   *patterns;
} McRetryEntry;

extern McShared *mc_shared;

extern void mc_wake_launcher(void);
extern int	mc_retry_peek(McRetryEntry **entries, uint64 *end);
extern void mc_retry_consume(uint64 end, int nentries);
extern McDbSlot *mc_db_slot(Oid db, bool create);
extern void mc_delivered_purge(TimestampTz cutoff);

#endif							/* MEETCACHE_SHARED_H */
