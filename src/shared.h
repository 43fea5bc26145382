/*
 * shared.h
 *	  What the background workers (worker.c) ask of shared memory: the
 *	  launcher's and the drains' view of the database slots, the retry
 *	  ring and the delivered set.  The layout is private to shared.c;
 *	  everything else uses the functions in meetcache.h.
 */
#ifndef MEETCACHE_SHARED_H
#define MEETCACHE_SHARED_H

#define MC_MAX_DBS 512			/* database slots */

typedef struct McRetryEntry
{
	Oid			db;
	int			nkeys;
	int			npatterns;
	McStr	   *keys;
	McStr	   *patterns;
} McRetryEntry;

/* a database a drain should start for, and when it last had one */
typedef struct McDueDb
{
	Oid			db;
	TimestampTz last_start;
} McDueDb;

/* the launcher */
extern bool mc_launcher_attach(void);
extern void mc_launcher_url_changed(void);
extern void mc_launcher_report_drains(int running);
extern void mc_db_slots_sync(const Oid *dbs, int ndbs);
extern int	mc_db_due(bool poll, int no_ext_recheck_ms, TimestampTz now,
					  McDueDb *due, TimestampTz *next_due);
extern void mc_db_drain_started(Oid db, TimestampTz now);
extern void mc_db_clear_backoff(void);
extern int	mc_retry_peek(McRetryEntry **entries, uint64 *end);
extern void mc_retry_consume(uint64 end, int nentries);
extern void mc_delivered_purge(TimestampTz cutoff);
extern int	mc_handoff_dbs(Oid *dbs, int max);
extern void mc_handoff_forget_db(Oid db);

/* a drain, for the database of its slot */
extern bool mc_drain_attach(Oid db);
extern void mc_drain_detach(bool failed, int backoff_max_ms);
extern void mc_drain_no_extension(void);
extern bool mc_drain_take_work(uint32 *epoch);
extern void mc_drain_flushed(uint32 epoch);
extern bool mc_drain_leave(void);

#endif							/* MEETCACHE_SHARED_H */
