/*
 * shared.c
 *	  Shared state between backends and the background workers, present
 *	  only when meetcache is in shared_preload_libraries:
 *	    - the circuit breaker (Redis known to be down);
 *	    - the retry queue: a bounded ring of keys whose post-commit delete
 *	      failed in sync delivery, drained by the launcher;
 *	    - one slot per database: "work queued", "families must be flushed",
 *	      and the latch of its running drain;
 *	    - the set of queue rows whose keys their own backend already
 *	      deleted (sync+queue), so drains do not delete them twice;
 *	    - the flush epoch: after a crash-restart or an unclean stop keys of
 *	      sync transactions may be lost, so every database flushes its
 *	      families once.
 *
 * Everything a commit callback calls here takes an LWLock or an atomic,
 * copies into memory allocated at startup and never throws or allocates.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog/pg_control.h"
#include "common/controldata_utils.h"
#include "common/file_perm.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "meetcache.h"
#include "shared.h"

/* in the data directory: exists while the server runs, kept after an
 * unclean stop or a stop with undelivered retries */
#define RUNNING_FILE "meetcache.running"

#define DELIVERED_SLOTS MC_DELIVERED_SLOTS
#define DELIVERED_WAKE 4096		/* wake the drain every this many entries */
#define RING_PAD 0xFFFFFFFFu

typedef struct RingHdr
{
	uint32		len;			/* whole entry, 8-aligned; RING_PAD = wrap */
	Oid			db;
	int32		nkeys;
	int32		npatterns;
} RingHdr;

McShared   *mc_shared = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static int	startups = 0;		/* postmaster: survives crash-restarts */

static Size
ring_bytes(void)
{
	return (Size) mc_retry_buffer_kb * 1024;
}

static Size
shared_size(void)
{
	return add_size(MAXALIGN(offsetof(McShared, ring)), ring_bytes());
}

#if PG_VERSION_NUM >= 150000
static void
shared_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_size());
	RequestNamedLWLockTranche("meetcache", 2);
}
#endif

/*
 * Postmaster exit, or shared memory re-initialised after a crash: forget
 * the running marker only after a clean shutdown (pg_control says so: an
 * immediate stop exits with code 0 too) that left no work undone.
 */
static void
shared_postmaster_exit(int code, Datum arg)
{
	McShared   *s = mc_shared;
	bool		clean = true;
	bool		crc_ok = false;
	ControlFileData *cf;

	if (s == NULL || IsUnderPostmaster || code != 0)
		return;
	cf = get_controlfile(".", &crc_ok);
	if (!crc_ok || (cf->state != DB_SHUTDOWNED && cf->state != DB_SHUTDOWNED_IN_RECOVERY))
		clean = false;
	pfree(cf);
	if (s->ring_tail != s->ring_head)
		clean = false;
	for (int i = 0; i < MC_MAX_DBS; i++)
		if (s->dbs[i].db != InvalidOid && s->dbs[i].flush)
			clean = false;
	if (s->flush_epoch != 0)
	{
		/* a pending epoch flush is done when every database served it;
		 * we cannot tell cheaply, so keep the marker: flushing twice is
		 * safe */
		for (int i = 0; i < MC_MAX_DBS; i++)
			if (s->dbs[i].db != InvalidOid && s->dbs[i].flushed_epoch != s->flush_epoch)
				clean = false;
		if (!s->epoch_served)
			clean = false;
	}
	if (clean)
		(void) unlink(RUNNING_FILE);
	else
		ereport(LOG,
				(errmsg("meetcache: undelivered invalidations at shutdown; cache families will be flushed at the next start")));
}

static void
shared_shmem_startup(void)
{
	bool		found;
	McShared   *s;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	s = ShmemInitStruct("meetcache shared", shared_size(), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("meetcache");
		bool		unclean = false;

		memset(s, 0, offsetof(McShared, ring));
		s->lock = &locks[0].lock;
		s->dlock = &locks[1].lock;
		pg_atomic_init_u32(&s->breaker, 0);
		s->ring_size = ring_bytes();
		if (!IsUnderPostmaster)
		{
			struct stat st;

			int			fd;

			if (startups++ > 0)
				unclean = true; /* crash-restart: shared memory was lost */
			else if (stat(RUNNING_FILE, &st) == 0)
				unclean = true; /* the last stop was not clean */
			if (unclean)
				ereport(LOG,
						(errmsg("meetcache: invalidations of sync transactions may have been lost; every database will flush its cache families")));
			/* the marker must survive a power loss from now on */
			fd = open(RUNNING_FILE, O_WRONLY | O_CREAT | PG_BINARY, pg_file_create_mode);
			if (fd >= 0)
			{
				(void) pg_fsync(fd);
				close(fd);
				fsync_fname(".", true);
			}
			/* a crash-restart emptied the exit list: register again */
			before_shmem_exit(shared_postmaster_exit, 0);
		}
		s->flush_epoch = unclean ? 1 : 0;
		s->epoch_served = !unclean;
	}
	LWLockRelease(AddinShmemInitLock);
	mc_shared = s;
}

void
mc_shared_request(void)
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shared_shmem_request;
#else
	RequestAddinShmemSpace(shared_size());
	RequestNamedLWLockTranche("meetcache", 2);
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shared_shmem_startup;
}

bool
mc_shared_ready(void)
{
	return mc_shared != NULL;
}

/* ---- circuit breaker ---- */

/*
 * The breaker and the retry queue speak for the Redis the launcher uses
 * (the server-wide meetcache.redis_url).  A session pointed elsewhere
 * neither trips nor obeys it.  While a killed launcher restarts, its last
 * word stands: handed-off keys wait for it in the ring.
 */
bool
mc_breaker_applies(void)
{
	McShared   *s = mc_shared;

	return s != NULL && s->worker_url_hash != 0 && s->worker_url_hash == mc_url_hash;
}

bool
mc_breaker_open(void)
{
	return mc_shared != NULL && pg_atomic_read_u32(&mc_shared->breaker) != 0;
}

void
mc_breaker_trip(void)
{
	McShared   *s = mc_shared;

	if (s == NULL)
		return;
	if (pg_atomic_exchange_u32(&s->breaker, 1) == 0)
	{
		s->breaker_since = GetCurrentTimestamp();
		mc_stat_add(MC_STAT_BREAKER_TRIPS, 1);
	}
	mc_wake_launcher();
}

void
mc_breaker_reset(void)
{
	if (mc_shared)
		pg_atomic_write_u32(&mc_shared->breaker, 0);
}

void
mc_wake_launcher(void)
{
	McShared   *s = mc_shared;
	PGPROC	   *p;

	if (s == NULL)
		return;
	p = s->launcher;
	if (p != NULL)
		SetLatch(&p->procLatch);
}

/* ---- retry ring ---- */

static Size
entry_size(McStr *keys, int nkeys, McStr *patterns, int npatterns)
{
	Size		n = sizeof(RingHdr);

	for (int i = 0; i < nkeys; i++)
		n += sizeof(uint32) + keys[i].len;
	for (int i = 0; i < npatterns; i++)
		n += sizeof(uint32) + patterns[i].len;
	return MAXALIGN(n);
}

static char *
put_strings(char *p, McStr *v, int n)
{
	for (int i = 0; i < n; i++)
	{
		uint32		l = v[i].len;

		memcpy(p, &l, sizeof(l));
		p += sizeof(l);
		memcpy(p, v[i].s, l);
		p += l;
	}
	return p;
}

/*
 * Hand a failed transaction's keys to the launcher.  Returns false when
 * they do not fit; the caller then asks for a family flush.  Safe in a
 * commit callback.
 */
bool
mc_retry_push(Oid db, McStr *keys, int nkeys, McStr *patterns, int npatterns)
{
	McShared   *s = mc_shared;
	Size		need = entry_size(keys, nkeys, patterns, npatterns);
	bool		ok = false;

	if (s == NULL || need > s->ring_size)
		return false;
	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	/* empty: start over at offset 0, so an entry up to the ring's size fits
	 * (the launcher holds no copy of an empty ring) */
	if (s->ring_tail == s->ring_head)
		s->ring_head = s->ring_tail = 0;
	{
		Size		used = s->ring_tail - s->ring_head;
		Size		off = s->ring_tail % s->ring_size;
		Size		to_end = s->ring_size - off;
		Size		total = need + (to_end < need ? to_end : 0);

		if (used + total <= s->ring_size)
		{
			RingHdr		h;
			char	   *p;

			if (to_end < need)
			{
				uint32		pad = RING_PAD;

				memcpy(s->ring + off, &pad, sizeof(pad));
				s->ring_tail += to_end;
				off = 0;
			}
			h.len = need;
			h.db = db;
			h.nkeys = nkeys;
			h.npatterns = npatterns;
			p = s->ring + off;
			memcpy(p, &h, sizeof(h));
			p = put_strings(p + sizeof(h), keys, nkeys);
			(void) put_strings(p, patterns, npatterns);
			s->ring_tail += need;
			s->ring_entries++;
			ok = true;
		}
	}
	LWLockRelease(s->lock);
	if (ok)
		mc_wake_launcher();
	return ok;
}

static McStr *
get_strings(char **pp, int n)
{
	McStr	   *v = palloc(sizeof(McStr) * Max(n, 1));
	char	   *p = *pp;

	for (int i = 0; i < n; i++)
	{
		uint32		l;

		memcpy(&l, p, sizeof(l));
		p += sizeof(l);
		v[i].s = p;
		v[i].len = l;
		p += l;
	}
	*pp = p;
	return v;
}

/*
 * Launcher: copy the queued entries (palloc'd, in the current memory
 * context) without removing them.  *end is the position to pass to
 * mc_retry_consume once they are delivered.
 */
int
mc_retry_peek(McRetryEntry **entries, uint64 *end)
{
	McShared   *s = mc_shared;
	uint64		head,
				tail,
				pos;
	Size		used,
				first;
	char	   *copy;
	int			n = 0,
				cap = 16;
	McRetryEntry *out;

	/* only the launcher consumes: head is stable; copy up to this tail */
	LWLockAcquire(s->lock, LW_SHARED);
	head = s->ring_head;
	tail = s->ring_tail;
	LWLockRelease(s->lock);
	*end = head;
	if (head == tail)
		return 0;
	used = tail - head;
	copy = MemoryContextAllocHuge(CurrentMemoryContext, used);
	first = Min(used, s->ring_size - head % s->ring_size);
	LWLockAcquire(s->lock, LW_SHARED);
	memcpy(copy, s->ring + head % s->ring_size, first);
	if (first < used)
		memcpy(copy + first, s->ring, used - first);
	LWLockRelease(s->lock);

	out = palloc(sizeof(McRetryEntry) * cap);
	for (pos = head; pos < tail;)
	{
		Size		off = pos % s->ring_size;
		char	   *p = copy + (pos - head);
		RingHdr		h;

		memcpy(&h.len, p, sizeof(uint32));
		if (h.len == RING_PAD)
		{
			pos += s->ring_size - off;
			continue;
		}
		memcpy(&h, p, sizeof(h));
		if (n == cap)
		{
			cap *= 2;
			out = repalloc(out, sizeof(McRetryEntry) * cap);
		}
		p += sizeof(h);
		out[n].db = h.db;
		out[n].nkeys = h.nkeys;
		out[n].npatterns = h.npatterns;
		out[n].keys = get_strings(&p, h.nkeys);
		out[n].patterns = get_strings(&p, h.npatterns);
		n++;
		pos += h.len;
	}
	*entries = out;
	*end = tail;
	return n;
}

void
mc_retry_consume(uint64 end, int nentries)
{
	McShared   *s = mc_shared;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	s->ring_head = end;
	s->ring_entries -= nentries;
	LWLockRelease(s->lock);
}

/* ---- database slots ---- */

/* caller holds s->lock exclusively; NULL when every slot is taken */
McDbSlot *
mc_db_slot(Oid db, bool create)
{
	McShared   *s = mc_shared;
	McDbSlot   *free_slot = NULL;

	for (int i = 0; i < MC_MAX_DBS; i++)
	{
		if (s->dbs[i].db == db)
			return &s->dbs[i];
		if (s->dbs[i].db == InvalidOid && free_slot == NULL)
			free_slot = &s->dbs[i];
	}
	if (!create || free_slot == NULL)
		return NULL;
	memset(free_slot, 0, sizeof(*free_slot));
	free_slot->db = db;
	return free_slot;
}

/*
 * Mark db's slot (created if need be): the database has the extension, and
 * optionally has work or must flush its families.  Returns the slot's
 * running drain through *drain; false when every slot is taken.
 */
static bool
db_mark(Oid db, bool work, bool flush, PGPROC **drain, int *index)
{
	McShared   *s = mc_shared;
	McDbSlot   *slot;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	slot = mc_db_slot(db, true);
	if (slot)
	{
		slot->no_ext = false;
		slot->work |= work;
		slot->flush |= flush;
		if (drain)
			*drain = slot->drain;
		if (index)
			*index = slot - s->dbs;
	}
	else if (flush)
	{
		/* no slot to remember it in: every database flushes */
		s->flush_epoch++;
		s->epoch_served = false;
	}
	LWLockRelease(s->lock);
	return slot != NULL;
}

/* queue rows were committed in db: wake its drain, or the launcher */
void
mc_db_wake(Oid db)
{
	PGPROC	   *drain = NULL;

	if (mc_shared == NULL)
		return;
	(void) db_mark(db, true, false, &drain, NULL);
	if (drain)
		SetLatch(&drain->procLatch);
	else
		mc_wake_launcher();
}

/*
 * A transaction of db wrote a queue row, so db has the extension: make sure
 * the launcher polls it.  (A drain that ran before CREATE EXTENSION marked
 * it extension-less.)  Cheap when nothing needs changing: an unlocked look
 * at the slot this backend found last time.
 */
void
mc_db_announce(Oid db)
{
	static int	cached = -1;
	McShared   *s = mc_shared;

	if (s == NULL)
		return;
	if (cached >= 0 && s->dbs[cached].db == db && !s->dbs[cached].no_ext)
		return;
	if (!db_mark(db, false, false, NULL, &cached))
		cached = -1;
}

/* keys of db were lost (retry queue full): flush its families */
void
mc_db_request_flush(Oid db)
{
	if (mc_shared == NULL)
		return;
	(void) db_mark(db, true, true, NULL, NULL);
	mc_wake_launcher();
}

/*
 * ---- keys already delivered by their backend (sync+queue) ----
 *
 * Keyed by the writing transaction's xid, which is the queue row's xmin:
 * never reused within the minute an entry lives, unlike row ids (which
 * restart after DROP/CREATE EXTENSION).
 */

static uint32
delivered_hash(Oid db, TransactionId xid)
{
	return hash_combine(hash_bytes_uint32(db), hash_bytes_uint32(xid));
}

/* linear probing; returns the slot holding (db, id), or the empty one */
static McDelivered *
delivered_find(McShared *s, Oid db, TransactionId xid, uint32 *pos)
{
	uint32		mask = DELIVERED_SLOTS - 1;
	uint32		i = delivered_hash(db, xid) & mask;

	while (s->delivered[i].db != InvalidOid &&
		   !(s->delivered[i].db == db && s->delivered[i].xid == xid))
		i = (i + 1) & mask;
	*pos = i;
	return &s->delivered[i];
}

/* backward-shift deletion keeps probe chains intact without tombstones */
static void
delivered_remove(McShared *s, uint32 i)
{
	uint32		mask = DELIVERED_SLOTS - 1;
	uint32		j = i;

	for (;;)
	{
		uint32		home;

		j = (j + 1) & mask;
		if (s->delivered[j].db == InvalidOid)
			break;
		home = delivered_hash(s->delivered[j].db, s->delivered[j].xid) & mask;
		/* move j into the hole at i unless its home lies in (i, j] */
		if ((j > i && (home <= i || home > j)) ||
			(j < i && (home <= i && home > j)))
		{
			s->delivered[i] = s->delivered[j];
			i = j;
		}
	}
	s->delivered[i].db = InvalidOid;
	s->ndelivered--;
}

void
mc_delivered_add(Oid db, TransactionId xid)
{
	McShared   *s = mc_shared;
	McDelivered *e;
	uint32		pos;
	bool		wake = false;

	if (s == NULL)
		return;
	LWLockAcquire(s->dlock, LW_EXCLUSIVE);
	/* at three quarters full, stop recording: drains then delete twice */
	if (s->ndelivered < DELIVERED_SLOTS / 4 * 3)
	{
		e = delivered_find(s, db, xid, &pos);
		if (e->db == InvalidOid)
		{
			e->db = db;
			e->xid = xid;
			e->at = GetCurrentTimestamp();
			s->ndelivered++;
			wake = s->ndelivered % DELIVERED_WAKE == 0;
		}
	}
	LWLockRelease(s->dlock);
	/* delivered rows are removed by the next poll; under heavy load, sooner */
	if (wake)
		mc_db_wake(db);
}

bool
mc_delivered_take(Oid db, TransactionId xid)
{
	McShared   *s = mc_shared;
	McDelivered *e;
	uint32		pos;
	bool		found;

	if (s == NULL)
		return false;
	LWLockAcquire(s->dlock, LW_EXCLUSIVE);
	e = delivered_find(s, db, xid, &pos);
	found = e->db != InvalidOid;
	if (found)
		delivered_remove(s, pos);
	LWLockRelease(s->dlock);
	return found;
}

bool
mc_delivered_contains(Oid db, TransactionId xid)
{
	McShared   *s = mc_shared;
	uint32		pos;
	bool		found;

	if (s == NULL)
		return false;
	LWLockAcquire(s->dlock, LW_SHARED);
	found = delivered_find(s, db, xid, &pos)->db != InvalidOid;
	LWLockRelease(s->dlock);
	return found;
}

/* launcher: forget entries older than the cutoff (rows nobody drained) */
void
mc_delivered_purge(TimestampTz cutoff)
{
	McShared   *s = mc_shared;

	LWLockAcquire(s->dlock, LW_EXCLUSIVE);
	for (uint32 i = 0; i < DELIVERED_SLOTS;)
	{
		if (s->delivered[i].db != InvalidOid && s->delivered[i].at < cutoff)
			delivered_remove(s, i); /* re-examine i: an entry moved in */
		else
			i++;
	}
	LWLockRelease(s->dlock);
}
