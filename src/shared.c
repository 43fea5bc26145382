/*
 * shared.c
 *	  The one owner of meetcache's shared memory, present only when
 *	  meetcache is in shared_preload_libraries: one request/startup hook
 *	  pair reserves and initialises it all (stats.c's counters included),
 *	  and only the functions here read or change it:
 *	    - the circuit breaker (Redis known to be down);
 *	    - the retry queue: a bounded ring of keys whose post-commit delete
 *	      failed in sync delivery, drained by the launcher;
 *	    - one slot per database: "work queued", "families must be flushed",
 *	      and the latch of its running drain;
 *	    - the set of queue rows whose keys their own backend already
 *	      deleted (sync+queue), so drains do not delete them twice;
 *	    - the flush epoch: after a crash-restart or an unclean stop keys of
 *	      sync transactions may be lost, so every database flushes its
 *	      families once;
 *	    - the last Redis Cluster slot map any process loaded (its
 *	      topology), or without preloading the backend's own;
 *	    - the write counters of recheck.c (per table hash slot: writers
 *	      that began to commit, writers whose commit or abort ended) and
 *	      the lookups handed from committed transactions to their
 *	      database's drain (recheck.c's argument says when).
 *	  stats.c reads the state through mc_shared_status, a snapshot.
 *
 * Locking:
 *	  - lock guards the database slots, the ring's positions and contents,
 *	    the launcher's latch and pid, and the flush epoch: exclusive to
 *	    change them, shared to read the ring;
 *	  - dlock guards the delivered set;
 *	  - the breaker is an atomic;
 *	  - topo_mutex (a spinlock) guards the topology, copied in and out;
 *	  - the write counters are atomics with full barriers (recheck.c);
 *	  - lock guards the lookup hand-offs too (exclusive to add or free
 *	    one, shared to copy them);
 *	  - single writers, unlocked readers (a stale value is harmless):
 *	    worker_url_hash and drains_running (the launcher), breaker_since
 *	    (whoever trips the breaker), the slot mc_db_announce looks at, and
 *	    the status snapshot.
 * Everything a commit callback calls here takes an LWLock, a spinlock or
 * an atomic, copies into memory allocated at startup and never throws or
 * allocates.
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
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "meetcache.h"
#include "shared.h"

/* in the data directory: exists while the server runs, kept after an
 * unclean stop or a stop with undelivered retries */
#define RUNNING_FILE "meetcache.running"

#define DELIVERED_SLOTS 131072	/* power of two */
#define DELIVERED_WAKE 256		/* wake the drain every this many entries */
#define RING_PAD 0xFFFFFFFFu

#define HANDOFF_SLOTS 2048
#define HANDOFF_BYTES MC_HANDOFF_BYTES

typedef struct McWriteCounter
{
	pg_atomic_uint64 begun;		/* writers past PRE_COMMIT */
	pg_atomic_uint64 ended;		/* of those, committed or aborted */
	char		pad[PG_CACHE_LINE_SIZE - 2 * sizeof(pg_atomic_uint64)];
} McWriteCounter;

/* one committed transaction's lookups, for its database's drain */
typedef struct McHandoff
{
	Oid			db;				/* InvalidOid: free */
	uint32		gen;			/* bumped at each use of the slot */
	uint32		n;				/* entries */
	uint32		len;			/* bytes of data used */
	char		data[HANDOFF_BYTES];	/* n times (uint32 length, bytes) */
} McHandoff;

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
	slock_t		topo_mutex;
	McTopology	topology;
	Size		ring_size;
	uint64		ring_head;		/* byte positions, only ever grow */
	uint64		ring_tail;
	uint32		ring_entries;
	McDbSlot	dbs[MC_MAX_DBS];
	McWriteCounter writes[MC_WRITE_SLOTS];
	int			nhandoffs;		/* slots in use */
	int			handoff_hint;	/* where the next free slot is looked for */
	McHandoff	handoffs[HANDOFF_SLOTS];
	int			ndelivered;
	McDelivered delivered[DELIVERED_SLOTS];
	char		ring[FLEXIBLE_ARRAY_MEMBER];
} McShared;

typedef struct RingHdr
{
	uint32		len;			/* whole entry, 8-aligned; RING_PAD = wrap */
	Oid			db;
	int32		nkeys;
	int32		npatterns;
} RingHdr;

static McShared *mc_shared = NULL;

static McDbSlot *db_slot(Oid db, bool create);
static void wake_launcher(void);

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

/* this file's memory and stats.c's counters, and the two locks */
static void
request_space(void)
{
	RequestAddinShmemSpace(add_size(shared_size(), mc_stats_shmem_size()));
	RequestNamedLWLockTranche("meetcache", 2);
}

#if PG_VERSION_NUM >= 150000
static void
shared_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	request_space();
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
	if (s->ring_tail != s->ring_head || s->nhandoffs > 0)
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

/*
 * Postmaster, at a start or a crash-restart: were invalidations of sync
 * transactions maybe lost?  From now on the running marker says the server
 * runs, and it survives a power loss.
 */
static bool
postmaster_start_unclean(void)
{
	bool		unclean = false;
	struct stat st;
	int			fd;

	if (startups++ > 0)
		unclean = true;			/* crash-restart: shared memory was lost */
	else if (stat(RUNNING_FILE, &st) == 0)
		unclean = true;			/* the last stop was not clean */
	if (unclean)
		ereport(LOG,
				(errmsg("meetcache: invalidations of sync transactions may have been lost; every database will flush its cache families")));
	fd = open(RUNNING_FILE, O_WRONLY | O_CREAT | PG_BINARY, pg_file_create_mode);
	if (fd >= 0)
	{
		(void) pg_fsync(fd);
		close(fd);
		fsync_fname(".", true);
	}
	/* a crash-restart emptied the exit list: register again */
	before_shmem_exit(shared_postmaster_exit, 0);
	return unclean;
}

static void
shared_init(McShared *s)
{
	LWLockPadded *locks = GetNamedLWLockTranche("meetcache");
	bool		unclean = !IsUnderPostmaster && postmaster_start_unclean();

	memset(s, 0, offsetof(McShared, ring));
	s->lock = &locks[0].lock;
	s->dlock = &locks[1].lock;
	pg_atomic_init_u32(&s->breaker, 0);
	for (int i = 0; i < MC_WRITE_SLOTS; i++)
	{
		pg_atomic_init_u64(&s->writes[i].begun, 0);
		pg_atomic_init_u64(&s->writes[i].ended, 0);
	}
	SpinLockInit(&s->topo_mutex);
	s->ring_size = ring_bytes();
	s->flush_epoch = unclean ? 1 : 0;
	s->epoch_served = !unclean;
}

static void
shared_shmem_startup(void)
{
	bool		found;
	void	   *counters;
	McShared   *s;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	counters = ShmemInitStruct("meetcache stats", mc_stats_shmem_size(), &found);
	mc_stats_shmem_attach(counters, !found);
	s = ShmemInitStruct("meetcache shared", shared_size(), &found);
	if (!found)
		shared_init(s);
	LWLockRelease(AddinShmemInitLock);
	mc_shared = s;
}

/* _PG_init, while shared_preload_libraries is processed */
void
mc_shared_request(void)
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shared_shmem_request;
#else
	request_space();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shared_shmem_startup;
}

bool
mc_shared_ready(void)
{
	return mc_shared != NULL;
}

static void
wake_launcher(void)
{
	McShared   *s = mc_shared;
	PGPROC	   *p;

	if (s == NULL)
		return;
	p = s->launcher;
	if (p != NULL)
		SetLatch(&p->procLatch);
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
	wake_launcher();
}

void
mc_breaker_reset(void)
{
	if (mc_shared)
		pg_atomic_write_u32(&mc_shared->breaker, 0);
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
		wake_launcher();
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

/* ---- write counters (recheck.c) ---- */

/*
 * Writers bump begun before their commit can become visible and ended
 * after it did (or after their abort): pg_atomic_fetch_add_u64 is a full
 * barrier.  Readers read ended, then begun, each behind a barrier: see
 * recheck.c for why that order.  Without shared memory every slot reads
 * as busy (begun != ended), so nothing is ever skipped.
 */
void
mc_writes_begin(uint32 slot)
{
	if (mc_shared)
		(void) pg_atomic_fetch_add_u64(&mc_shared->writes[slot % MC_WRITE_SLOTS].begun, 1);
}

void
mc_writes_end(uint32 slot)
{
	if (mc_shared)
		(void) pg_atomic_fetch_add_u64(&mc_shared->writes[slot % MC_WRITE_SLOTS].ended, 1);
}

/* no writer of the slot between its PRE_COMMIT and its end?  *begun: now */
bool
mc_writes_quiet(uint32 slot, uint64 *begun)
{
	McWriteCounter *w;
	uint64		ended;

	*begun = 0;
	if (mc_shared == NULL)
		return false;
	w = &mc_shared->writes[slot % MC_WRITE_SLOTS];
	pg_memory_barrier();
	ended = pg_atomic_read_u64(&w->ended);
	pg_memory_barrier();
	*begun = pg_atomic_read_u64(&w->begun);
	pg_memory_barrier();
	return ended == *begun;
}

uint64
mc_writes_begun(uint32 slot)
{
	if (mc_shared == NULL)
		return PG_UINT64_MAX;
	pg_memory_barrier();
	return pg_atomic_read_u64(&mc_shared->writes[slot % MC_WRITE_SLOTS].begun);
}

/* ---- lookup hand-offs (recheck.c) ---- */

/* the bytes n entries take in a hand-off, or 0 when they do not fit one */
Size
mc_handoff_size(McStr *entries, int n)
{
	Size		need = 0;

	for (int i = 0; i < n; i++)
	{
		need += sizeof(uint32) + entries[i].len;
		if (need > HANDOFF_BYTES)
			return 0;
	}
	return need;
}

/*
 * A committed transaction's lookups, for db's drain to resolve again; wakes
 * the drain.  False when they do not fit (too large, every hand-off or
 * database slot taken): the caller then has the database flush its
 * families.  Safe in a commit callback.
 */
bool
mc_handoff_push(Oid db, McStr *entries, int n)
{
	McShared   *s = mc_shared;
	Size		need = mc_handoff_size(entries, n);
	bool		ok = false;
	McDbSlot   *slot;
	PGPROC	   *drain = NULL;

	if (s == NULL || need == 0)
		return false;
	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	/* the database's slot first: without one no drain would take them */
	slot = db_slot(db, true);
	for (int k = 0; slot != NULL && s->nhandoffs < HANDOFF_SLOTS && k < HANDOFF_SLOTS; k++)
	{
		int			i = (s->handoff_hint + k) % HANDOFF_SLOTS;
		McHandoff  *h = &s->handoffs[i];

		if (h->db != InvalidOid)
			continue;
		h->db = db;
		h->gen++;
		h->n = n;
		h->len = need;
		(void) put_strings(h->data, entries, n);
		s->nhandoffs++;
		s->handoff_hint = (i + 1) % HANDOFF_SLOTS;
		/* and wake its drain, as mc_db_wake does */
		slot->no_ext = false;
		slot->work = true;
		drain = slot->drain;
		ok = true;
		break;
	}
	LWLockRelease(s->lock);
	if (drain)
		SetLatch(&drain->procLatch);
	else if (ok)
		wake_launcher();
	return ok;
}

/* the slots the current drain pass copied, to free once it committed */
typedef struct TakenHandoff
{
	int			slot;
	uint32		gen;
} TakenHandoff;
static TakenHandoff *taken_handoffs = NULL;
static int	ntaken_handoffs = 0;

/*
 * A drain: copy up to max of its database's hand-offs' entries (palloc'd,
 * in the current context) and remember their slots for mc_handoff_done
 * (and only those: max 0 takes none).  Returns the number of entries;
 * *more: some were left.
 */
int
mc_handoff_take(Oid db, int max, McStr **entries, bool *more)
{
	McShared   *s = mc_shared;
	int			cap = 16,
				n = 0;
	McStr	   *out;

	ntaken_handoffs = 0;
	*more = false;
	*entries = NULL;
	/* unlocked: a push is followed by a wake, and the wake by a lock */
	if (s == NULL || s->nhandoffs == 0 || max == 0)
		return 0;
	if (taken_handoffs == NULL)
		taken_handoffs = MemoryContextAlloc(TopMemoryContext, sizeof(TakenHandoff) * HANDOFF_SLOTS);
	out = palloc(sizeof(McStr) * cap);
	LWLockAcquire(s->lock, LW_SHARED);
	for (int i = 0; i < HANDOFF_SLOTS; i++)
	{
		McHandoff  *h = &s->handoffs[i];
		char	   *p;

		if (h->db != db)
			continue;
		if (n >= max)
		{
			*more = true;
			break;
		}
		if (n + (int) h->n > cap)
		{
			cap = Max(cap * 2, n + (int) h->n);
			out = repalloc(out, sizeof(McStr) * cap);
		}
		p = h->data;
		for (uint32 k = 0; k < h->n; k++)
		{
			uint32		l;
			char	   *c;

			memcpy(&l, p, sizeof(l));
			p += sizeof(l);
			c = palloc(l + 1);
			memcpy(c, p, l);
			c[l] = '\0';
			out[n].s = c;
			out[n].len = l;
			n++;
			p += l;
		}
		taken_handoffs[ntaken_handoffs].slot = i;
		taken_handoffs[ntaken_handoffs].gen = h->gen;
		ntaken_handoffs++;
	}
	LWLockRelease(s->lock);
	*entries = out;
	return n;
}

/* the pass that took them committed: free their slots */
void
mc_handoff_done(void)
{
	McShared   *s = mc_shared;

	if (s == NULL || ntaken_handoffs == 0)
		return;
	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	for (int i = 0; i < ntaken_handoffs; i++)
	{
		McHandoff  *h = &s->handoffs[taken_handoffs[i].slot];

		/* freed and used again meanwhile (the database was dropped): not ours */
		if (h->db == InvalidOid || h->gen != taken_handoffs[i].gen)
			continue;
		h->db = InvalidOid;
		s->nhandoffs--;
	}
	LWLockRelease(s->lock);
	ntaken_handoffs = 0;
}

/*
 * The launcher: the databases hand-offs wait for (at most max), to check
 * which of them were dropped.
 */
int
mc_handoff_dbs(Oid *dbs, int max)
{
	McShared   *s = mc_shared;
	int			n = 0;

	if (s == NULL || s->nhandoffs == 0)
		return 0;
	LWLockAcquire(s->lock, LW_SHARED);
	for (int i = 0; i < HANDOFF_SLOTS && n < max; i++)
	{
		Oid			db = s->handoffs[i].db;
		bool		seen = false;

		if (db == InvalidOid)
			continue;
		for (int k = 0; k < n; k++)
			seen |= dbs[k] == db;
		if (!seen)
			dbs[n++] = db;
	}
	LWLockRelease(s->lock);
	return n;
}

/* free db's hand-offs; the caller holds lock exclusively */
static void
forget_handoffs_locked(Oid db)
{
	McShared   *s = mc_shared;

	for (int i = 0; s->nhandoffs > 0 && i < HANDOFF_SLOTS; i++)
		if (s->handoffs[i].db == db)
		{
			s->handoffs[i].db = InvalidOid;
			s->nhandoffs--;
		}
}

/* db was dropped: its lookups have nothing left to invalidate */
void
mc_handoff_forget_db(Oid db)
{
	LWLockAcquire(mc_shared->lock, LW_EXCLUSIVE);
	forget_handoffs_locked(db);
	LWLockRelease(mc_shared->lock);
}

/* ---- database slots ---- */

/* caller holds s->lock exclusively; NULL when every slot is taken */
static McDbSlot *
db_slot(Oid db, bool create)
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
	slot = db_slot(db, true);
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
		wake_launcher();
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
	wake_launcher();
}

/* ---- the launcher ---- */

static void
launcher_detach(int code, Datum arg)
{
	McShared   *s = mc_shared;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	s->launcher = NULL;
	s->launcher_pid = 0;
	LWLockRelease(s->lock);
}

/*
 * The launcher announces itself (its latch, its pid, its Redis) until it
 * exits; false when there is no shared memory.
 */
bool
mc_launcher_attach(void)
{
	McShared   *s = mc_shared;

	if (s == NULL)
		return false;
	before_shmem_exit(launcher_detach, 0);
	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	s->launcher = MyProc;
	s->launcher_pid = MyProcPid;
	s->worker_url_hash = mc_url_hash;
	LWLockRelease(s->lock);
	return true;
}

/* after a reload: the breaker speaks for the launcher's Redis */
void
mc_launcher_url_changed(void)
{
	mc_shared->worker_url_hash = mc_url_hash;
}

void
mc_launcher_report_drains(int running)
{
	mc_shared->drains_running = running;
}

/*
 * The connectable databases dbs[0..ndbs-1] get a slot; the slots of the
 * others (dropped databases) are freed unless a drain still runs there.
 */
void
mc_db_slots_sync(const Oid *dbs, int ndbs)
{
	McShared   *s = mc_shared;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MC_MAX_DBS; i++)
	{
		bool		exists = false;

		if (s->dbs[i].db == InvalidOid)
			continue;
		for (int j = 0; j < ndbs; j++)
			if (dbs[j] == s->dbs[i].db)
				exists = true;
		if (!exists && s->dbs[i].drain == NULL)
			s->dbs[i].db = InvalidOid;
	}

	for (int j = 0; j < ndbs; j++)
		(void) db_slot(dbs[j], true);
	LWLockRelease(s->lock);
}

/*
 * The databases a drain should start for now, into due[] (room for
 * MC_MAX_DBS): work, a flush or an epoch to serve, or a poll (with poll,
 * every slot is marked due for one; an extension-less database only every
 * no_ext_recheck_ms).  *next_due is when a database waiting out its backoff
 * is due (0: none).  Notes the flush epoch served when every slot is.
 */
int
mc_db_due(bool poll, int no_ext_recheck_ms, TimestampTz now,
		  McDueDb *due, TimestampTz *next_due)
{
	McShared   *s = mc_shared;
	int			ndue = 0;
	bool		epoch_served = true;

	*next_due = 0;
	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MC_MAX_DBS; i++)
	{
		McDbSlot   *d = &s->dbs[i];
		bool		wanted;

		if (d->db == InvalidOid)
			continue;
		if (d->flushed_epoch != s->flush_epoch)
			epoch_served = false;
		if (poll && (!d->no_ext ||
					 now - d->last_start >= (int64) no_ext_recheck_ms * 1000))
			d->poll_due = true;
		wanted = d->work || d->flush || d->poll_due || d->flushed_epoch != s->flush_epoch;
		if (wanted && d->drain == NULL && now >= d->next_start)
		{
			due[ndue].db = d->db;
			due[ndue].last_start = d->last_start;
			ndue++;
		}
		else if (wanted && d->drain == NULL && (*next_due == 0 || d->next_start < *next_due))
			*next_due = d->next_start;
	}
	if (epoch_served)
		s->epoch_served = true;
	LWLockRelease(s->lock);
	return ndue;
}

/* a drain was started for db: its poll is served */
void
mc_db_drain_started(Oid db, TimestampTz now)
{
	McShared   *s = mc_shared;
	McDbSlot   *d;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	d = db_slot(db, false);
	if (d)
	{
		d->last_start = now;
		d->poll_due = false;
	}
	LWLockRelease(s->lock);
}

/* Redis is back: drains may start at once */
void
mc_db_clear_backoff(void)
{
	McShared   *s = mc_shared;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MC_MAX_DBS; i++)
	{
		s->dbs[i].next_start = 0;
		s->dbs[i].backoff_ms = 0;
	}
	LWLockRelease(s->lock);
}

/* ---- a drain ---- */

static Oid	drain_db = InvalidOid;	/* this drain's database ... */
static McDbSlot *drain_slot = NULL; /* ... and its slot, held while it runs */

/* the drain of db takes its slot; false when every slot is taken */
bool
mc_drain_attach(Oid db)
{
	McShared   *s = mc_shared;

	drain_db = db;
	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	drain_slot = db_slot(db, true);
	if (drain_slot)
		drain_slot->drain = MyProc;
	LWLockRelease(s->lock);
	return drain_slot != NULL;
}

/*
 * The drain exits: after a failure its database waits a doubling backoff
 * (up to backoff_max_ms) and keeps its work; the launcher is woken.
 */
void
mc_drain_detach(bool failed, int backoff_max_ms)
{
	McShared   *s = mc_shared;
	McDbSlot   *d;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	d = db_slot(drain_db, false);
	if (d)
	{
		/* a successor may have registered already */
		if (d->drain == MyProc)
			d->drain = NULL;
		if (failed)
		{
			d->backoff_ms = Min(Max(d->backoff_ms * 2, 100), backoff_max_ms);
			d->next_start = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), d->backoff_ms);
			d->work = true;		/* what failed is still there */
		}
		else
			d->backoff_ms = 0;
	}
	LWLockRelease(s->lock);
	wake_launcher();
}

/* the database has no extension: nothing to do there, no epoch to serve */
void
mc_drain_no_extension(void)
{
	McShared   *s = mc_shared;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	/* no extension: nothing to resolve its lookups with, nor any need */
	forget_handoffs_locked(drain_slot->db);
	drain_slot->no_ext = true;
	drain_slot->work = false;
	drain_slot->flush = false;
	drain_slot->flushed_epoch = s->flush_epoch;
	LWLockRelease(s->lock);
}

/*
 * A drain round begins: take the slot's work.  Returns whether the
 * families must be flushed, and the epoch a flush serves.
 */
bool
mc_drain_take_work(uint32 *epoch)
{
	McShared   *s = mc_shared;
	McDbSlot   *d = drain_slot;
	bool		flush;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	flush = d->flush || d->flushed_epoch != s->flush_epoch;
	*epoch = s->flush_epoch;
	d->flush = false;
	d->work = false;
	d->no_ext = false;
	LWLockRelease(s->lock);
	return flush;
}

void
mc_drain_flushed(uint32 epoch)
{
	McShared   *s = mc_shared;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	drain_slot->flushed_epoch = epoch;
	LWLockRelease(s->lock);
}

/*
 * An idle drain leaves its slot, unless work came meanwhile (false); a
 * wake from now on goes to the launcher.
 */
bool
mc_drain_leave(void)
{
	McShared   *s = mc_shared;
	McDbSlot   *d = drain_slot;
	bool		work;

	LWLockAcquire(s->lock, LW_EXCLUSIVE);
	work = d->work;
	if (!work && d->drain == MyProc)
		d->drain = NULL;
	LWLockRelease(s->lock);
	return !work;
}

/* ---- status, for meetcache.stats() ---- */

void
mc_shared_status(McSharedStatus *st)
{
	McShared   *s = mc_shared;

	memset(st, 0, sizeof(*st));
	if (s == NULL)
		return;
	st->preloaded = true;
	st->launcher_pid = s->launcher_pid;
	st->drains_running = s->drains_running;
	st->breaker_open = mc_breaker_open();
	st->breaker_since = s->breaker_since;
	LWLockAcquire(s->lock, LW_SHARED);
	st->retry_entries = s->ring_entries;
	st->retry_bytes = s->ring_tail - s->ring_head;
	LWLockRelease(s->lock);
	st->retry_size = s->ring_size;
}

/* ---- the topology of a Redis Cluster ---- */

static McTopology local_topology;	/* not preloaded: this backend's */

/* the masters in use only: the spinlock is held for a short copy */
static void
topology_copy(McTopology *dst, const McTopology *src)
{
	memcpy(dst, src, offsetof(McTopology, nodes) +
		   sizeof(src->nodes[0]) * Min(Max(src->nnodes, 0), MC_CLUSTER_MAX_NODES));
}

/* a slot map was installed; from the commit path too (no allocation) */
void
mc_topology_publish(const McTopology *t)
{
	McShared   *s = mc_shared;

	if (s == NULL)
	{
		topology_copy(&local_topology, t);
		return;
	}
	SpinLockAcquire(&s->topo_mutex);
	topology_copy(&s->topology, t);
	SpinLockRelease(&s->topo_mutex);
}

void
mc_topology_read(McTopology *t)
{
	McShared   *s = mc_shared;

	if (s == NULL)
	{
		topology_copy(t, &local_topology);
		return;
	}
	SpinLockAcquire(&s->topo_mutex);
	topology_copy(t, &s->topology);
	SpinLockRelease(&s->topo_mutex);
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
