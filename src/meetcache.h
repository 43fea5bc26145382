/*
 * meetcache.h
 *	  Declarations shared by the meetcache source files.
 *
 * Who owns what:
 *	  meetcache.c  _PG_init, GUCs, the parsed redis_url and the password files
 *	  redis.c      the Redis protocol over a stream: handshake, finding the
 *	               master through sentinels, pipelined commands, scripts,
 *	               invalidation, a cluster's redirects (the only hiredis user)
 *	  cluster.c    Redis Cluster's slot map: key slots, which master serves them
 *	  transport.c  the byte stream: host names, TCP, Unix sockets, TLS,
 *	               deadlines and both waiting disciplines (transport.h)
 *	  pending.c    the per-transaction set of keys and its commit/abort path
 *	  recheck.c    whether a transaction's lookups must be resolved again
 *	               after its commit: the per-table write counters
 *	  delivery.c   where committed keys go: Redis, the queue or the retry ring
 *	  rules.c      the rule catalog cache, compiling rules, collecting keys, lookups
 *	  keys.c       the key grammar: templates, rendering, globs, ttl_by_value
 *	  trigger.c    the trigger function, attach checks, affected_keys()
 *	  guard.c      attach()/detach(), the guard's event triggers, invalidate_all()
 *	  legacy.c     C functions only the frozen 0.1.0 SQL script uses
 *	  cache.c      the SQL-callable cache_* functions and key()
 *	  lease.c      the lease protocol: lease key names, the Lua scripts, the
 *	               wait for another session's value
 *	  stats.c      counters (shared memory when preloaded, else per backend),
 *	               and mc_excerpt: how text from Redis appears in messages
 *	  shared.c     all shared memory (its hooks, stats.c's counters' space):
 *	               circuit breaker, retry queue, per-database drain slots,
 *	               keys already delivered, the status stats() shows
 *	  queue.c      the durable queue table: writing a transaction's row and
 *	               draining rows into Redis
 *	  worker.c     the launcher and per-database drain background workers
 *	  settings.c   pinned search_path for SPI, canonical output settings
 */
#ifndef MEETCACHE_H
#define MEETCACHE_H

#include "postgres.h"

#include "access/tupdesc.h"
#include "datatype/timestamp.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/relcache.h"
#include "utils/tuplestore.h"

/* ---- configuration (meetcache.c) ---- */

/* where one Redis server listens (a sentinel or cluster node is one too) */
typedef struct McEndpoint
{
	bool		unix_socket;	/* path, else host and port */
	bool		tls;			/* TLS over TCP, host is the name verified */
	char		host[256];
	int			port;
	char		path[108];		/* sizeof(sun_path) */
} McEndpoint;

#define MC_MAX_SENTINELS 8		/* sentinels one redis-sentinel:// URL names */
#define MC_MAX_SEEDS 8			/* seed nodes one redis-cluster:// URL names */

/*
 * With sentinels (redis-sentinel://, rediss-sentinel://) the server is the
 * master they name: ep then holds only tls (for the sentinels and the
 * master alike), and user and db apply to the master.  With seeds
 * (redis-cluster://, rediss-cluster://) the servers are the cluster's
 * masters, found by asking the seeds: ep again holds only tls, db is 0.
 */
typedef struct McRedisUrl
{
	McEndpoint	ep;
	char		user[128];		/* empty: the default user */
	int			db;
	int			nsentinels;		/* 0: ep is the server */
	McEndpoint	sentinels[MC_MAX_SENTINELS];	/* asked in this order */
	char		master_name[256];
	int			nseeds;			/* > 0: a Redis Cluster (redis-cluster://) */
	McEndpoint	seeds[MC_MAX_SEEDS];	/* asked for the slot map in this order */
} McRedisUrl;				/* never a password: see mc_redis_password() */

typedef enum McTlsVerify
{
	MC_TLS_VERIFY_FULL = 0,		/* chain and host name */
	MC_TLS_VERIFY_CA,			/* chain only */
	MC_TLS_VERIFY_NONE
} McTlsVerify;

typedef enum McDelivery
{
	MC_DELIVERY_SYNC = 0,
	MC_DELIVERY_QUEUE,
	MC_DELIVERY_SYNC_QUEUE
} McDelivery;

extern McRedisUrl *mc_url;		/* parsed meetcache.redis_url */
extern uint64 mc_url_generation;	/* bumped whenever redis_url changes */
extern char *mc_key_prefix;
extern int	mc_connect_timeout;
extern int	mc_command_timeout;
extern int	mc_commit_timeout;
extern int	mc_delivery;
extern int	mc_max_keys;
extern bool mc_lease_check;
extern int	mc_lease_ttl;
extern int	mc_lease_wait;
extern int	mc_poll_interval;
extern int	mc_retry_buffer_kb;
extern int	mc_drain_batch;
extern bool mc_preloaded;		/* loaded by shared_preload_libraries */
extern uint64 mc_url_hash;		/* identity of the Redis endpoint in use */
extern char *mc_dns_servers;	/* "" = the system's resolvers */

/* ---- shared small types ---- */

typedef struct McStr
{
	char	   *s;
	int			len;
} McStr;

/* an error described by a function that must not throw */
typedef struct McErr
{
	int			sqlstate;
	char		msg[256];
	char		detail[256];
	char		hint[256];		/* empty: mc_throw's default hint, if no detail */
} McErr;

/* whose password: the Redis server's, or the sentinels' */
typedef enum McPasswordFor
{
	MC_PASSWORD_REDIS,			/* meetcache.redis_password_file */
	MC_PASSWORD_SENTINEL		/* meetcache.redis_sentinel_password_file */
} McPasswordFor;

/*
 * The password of that setting's file ("" = none), as last read
 * (meetcache.c).  reread: first check the file and read it again if it
 * changed; that is file I/O, never done on the commit path.  NULL, with
 * err filled, when the file cannot be used (only with reread).
 */
extern const char *mc_redis_password(McPasswordFor which, bool reread, McErr *err);

/* ---- transport.c (the rest is in transport.h) ---- */

/* the meetcache.redis_tls_* settings */
typedef struct McTlsSettings
{
	const char *ca_file;		/* "" = the system's trust store */
	const char *cert_file;		/* "" = no client certificate */
	const char *key_file;		/* "" = the key is in cert_file */
	int			verify;			/* McTlsVerify */
} McTlsSettings;

/*
 * The TLS settings or the URL changed: set the TLS context up again, now
 * (the assign hooks call it, never the commit path).
 */
extern void mc_transport_reconfigure(const McTlsSettings *t);

/* ---- redis.c ---- */

typedef enum McReplyType
{
	MC_REPLY_NIL,
	MC_REPLY_STATUS,
	MC_REPLY_ERROR,
	MC_REPLY_INTEGER,
	MC_REPLY_STRING,
	MC_REPLY_ARRAY
} McReplyType;

/* a reply copied into palloc'd memory */
typedef struct McReply
{
	McReplyType type;
	long long	integer;
	char	   *str;
	size_t		len;
	int			nelems;
	struct McReply **elems;
} McReply;

/*
 * A pipeline of commands under construction (palloc'd).  On a cluster each
 * command goes to the master of its key's slot (keyless ones: see
 * mc_pipe_on_node).
 */
typedef struct McPipe
{
	StringInfoData buf;
	int			ncmds;
	int			cap;
	int		   *start;			/* offset of each command in buf */
	int		   *route;			/* its slot, or MC_ROUTE_NODE(n), or MC_ROUTE_ANY */
} McPipe;

#define MC_ROUTE_ANY (-1)
#define MC_ROUTE_NODE(n) (-2 - (n))

typedef struct McInvResult
{
	uint64		commands;
	uint64		keys_sent;
	uint64		keys_deleted;
	uint64		keys_scanned;
} McInvResult;

extern void mc_pipe_init(McPipe *pipe);
extern void mc_pipe_add(McPipe *pipe, int argc, const char **argv,
						const size_t *lens);
extern McReply **mc_pipe_exec(McPipe *pipe);
extern McReply **mc_pipe_try(McPipe *pipe, McErr *err);
extern void mc_throw(McErr *err) pg_attribute_noreturn();
extern McReply *mc_redis_command(int argc, const char **argv,
								 const size_t *lens);
extern void mc_pipe_on_node(McPipe *pipe, int node);
extern int	mc_redis_masters(void);
extern bool mc_redis_cluster(void);
extern bool mc_redis_invalidate(McStr *keys, int nkeys,
								McStr *patterns, int npatterns,
								TimestampTz deadline, int step_ms,
								McInvResult *res, McErr *err);

extern bool mc_redis_ping(TimestampTz deadline, McErr *err);

/* ---- cluster.c: Redis Cluster's slot map ---- */

#define MC_CLUSTER_SLOTS 16384
#define MC_CLUSTER_MAX_NODES 32	/* masters one cluster may have */

extern int	mc_cluster_slot(const char *key, int len);
extern void mc_cluster_build_begin(void);
extern int	mc_cluster_build_node(const McEndpoint *ep);
extern bool mc_cluster_build_slots(int first, int last, int node);
extern bool mc_cluster_build_end(void);
extern bool mc_cluster_map_ready(void);
extern void mc_cluster_map_stale(void);
extern int	mc_cluster_nnodes(void);
extern int	mc_cluster_node_of(int slot);
extern const McEndpoint *mc_cluster_endpoint(int node);
extern int	mc_cluster_find(const McEndpoint *ep);

/* ---- lease.c: the lease protocol (README "Leases") ---- */

#define MC_LEASE_EXTRA 14		/* bytes a lease key adds to its key, NUL included */
#define MC_LEASE_NS "mc-lease:"	/* the reserved namespace of lease keys */
#define MC_LEASE_TOKEN 64		/* bytes of a lease token, NUL included */

typedef enum McScript
{
	MC_SCRIPT_LEASE_GET,
	MC_SCRIPT_LEASE_SET,
	MC_SCRIPT_LEASE_RELEASE,
	MC_SCRIPT_DEL_PAIRS,
	MC_SCRIPT_SET_CANCEL,
	MC_SCRIPT__COUNT
} McScript;

/* what mc_lease_get found */
typedef enum McLeaseGet
{
	MC_LEASE_VALUE,				/* the key has a value */
	MC_LEASE_HELD,				/* we hold the lease: compute, then store */
	MC_LEASE_TIMED_OUT,			/* another session held it for lease_wait */
	MC_LEASE_REFUSED,			/* Redis sent an error reply */
	MC_LEASE_NO_REDIS			/* Redis did not answer */
} McLeaseGet;

extern int	mc_lease_key(const char *k, int klen, char *out);
extern bool mc_lease_same_slot(const char *k, int klen);
extern char *mc_lease_of(const char *full);
extern void mc_lease_globs(const char *glob, char **untagged, char **tagged);
extern bool mc_lease_base(const char *s, int len, const char **base, int *blen);
extern bool mc_lease_namespace(const char *s, bool glob);
extern const char *mc_lease_script_text(McScript which);
extern McReply *mc_lease_set_cancel(const char *full, const char *json, int ttl,
									McErr *err);
extern McReply *mc_lease_del_pairs(char **keys, int n, McErr *err);
extern void mc_lease_token(char *token);
extern McLeaseGet mc_lease_get(const char *full, const char *lease, const char *token,
							   McReply **reply, McErr *err);
extern McReply *mc_lease_set(const char *full, const char *lease, const char *token,
							 const char *json, int ttl, McErr *err);
extern void mc_lease_release(const char *lease, const char *token);
extern void mc_lease_forget(void);

/* redis.c: EVALSHA a script of lease.c, loading it when needed */
extern McReply *mc_redis_script(McScript which, int nkeys, int nargs,
								const char **argv, const size_t *lens, McErr *err);

/* ---- rules.c ---- */

#define MC_MAX_KEY_BYTES 1024	/* a key without key_prefix, on every path */
#define MC_MAX_PLACEHOLDERS 64	/* per template */
#define MC_MAX_LOOKUP_COLUMNS 32	/* per lookup group */

typedef struct McTemplate
{
	char	   *source;		/* the template as written */
	int			nargs;
	char	  **argnames;		/* nargs */
	char	  **lits;			/* nargs + 1 literal pieces */
	int		   *litlens;
	char	   *glob;			/* SCAN pattern: literals escaped, args = '*' */
	int			literal_chars;	/* specificity when matching keys */
} McTemplate;

typedef struct McFamily
{
	char	   *name;
	McTemplate *tmpl;
	int			ttl_seconds;	/* 0 = none */
	char	   *ttl_field;		/* NULL, or a top-level field of the value ... */
	int			nttl_values;	/* ... whose (text) value picks a TTL */
	char	  **ttl_values;
	int		   *ttl_by_value;
} McFamily;

struct McRelRules;

/* where collected keys go; key NULL means the whole family */
typedef void (*McKeySink) (void *arg, const char *key, int len,
						   McFamily *family, int rule_id);

/*
 * A destination for collected keys: keys rendered under prefix go to
 * key(arg, ...).  covered (NULL: never) says that a family is already
 * deleted whole under that prefix, so its rules need neither lookups nor
 * rendering.
 */
typedef struct McSink
{
	McKeySink	key;
	bool		(*covered) (void *arg, McFamily *family);
	void	   *arg;
	const char *prefix;
	bool		(*full) (void *arg);	/* past max_keys (NULL: never) */
} McSink;

#define MC_EV_INSERT	0x01
#define MC_EV_UPDATE	0x02
#define MC_EV_DELETE	0x04

/* keys.c: the key grammar */
extern McTemplate *mc_template_parse(const char *tmpl, const char **why);
extern McTemplate *mc_parse_template(const char *tmpl);
extern bool mc_parse_ttl_by_value(Datum jsonb, McFamily *f, const char **why);
extern void mc_render(StringInfo out, McTemplate *t, const char *prefix,
					  const char **values);
extern void mc_append_glob_escaped(StringInfo out, const char *s, int len);
extern bool mc_glob_match(const char *pat, int plen, const char *s, int slen);
extern McFamily *mc_lookup_family(const char *name);
extern McFamily *mc_family_for_key(const char *key, int len);
extern struct McRelRules *mc_rel_rules(Relation rel, const char *table_name,
									   bool fresh);
extern void mc_collect(struct McRelRules *rr, Relation rel, int event,
					   Tuplestorestate *oldtab, Tuplestorestate *newtab,
					   TupleTableSlot *oldslot, TupleTableSlot *newslot,
					   const McSink *out, bool again);
extern int	mc_check_rel(Relation rel, const char *table_name);
extern bool mc_rel_broken(Relation rel, const char *table_name);
extern List *mc_rule_name_families(const char *table_name);
extern void mc_resolve_lookups(McStr *entries, int n,
							   void (*out) (void *arg, const char *s, int len, bool pattern),
							   void *arg);
extern void mc_rules_reload(void);
extern List *mc_rel_families(struct McRelRules *rr);
extern int	mc_rel_nrules(struct McRelRules *rr);
extern void mc_rules_init(void);
extern List *mc_family_globs(const char *prefix);

/* ---- trigger.c, guard.c ---- */

extern void mc_invalidate_families(List *families);
extern void mc_guard_init(void);
extern bool mc_catalog_has_row(Oid catalog, Oid index, AttrNumber attnum, Oid value);

/* ---- pending.c ---- */

extern void mc_pending_init(void);
extern void mc_pending_sink(void *arg, const char *key, int len,
							McFamily *family, int rule_id);
extern bool mc_pending_covered(void *arg, McFamily *family);
extern bool mc_pending_full(void *arg);
extern void mc_pending_add_pattern(const char *pat, int len);
extern void mc_pending_add_family(McFamily *family);
extern void mc_pending_add_lookup(Oid relid, int rule_id, McFamily *family,
								  const char *value);
extern bool mc_pending_any(void);
extern void mc_pending_check_not_committing(Relation rel);

/* ---- recheck.c ---- */

#define MC_WRITE_SLOTS 1024		/* shared write counters, by table hash */
#define MC_HANDOFF_BYTES 496	/* lookups one hand-off holds */

typedef enum McRecheck
{
	MC_RECHECK_AUTO = 0,
	MC_RECHECK_ALWAYS
} McRecheck;

extern int	mc_lookup_recheck;

extern void mc_recheck_wrote(Relation rel);
extern void mc_recheck_wrote_relid(Oid relid);
extern void mc_recheck_relcache_inval(Oid relid);
extern void mc_recheck_init(void);
extern void mc_recheck_watch(Oid via_relid);
extern void mc_recheck_unwatched(void);
extern void mc_recheck_note_trigger_fn(Oid fn);
extern bool mc_recheck_settled_at_pre_commit(void);
extern void mc_recheck_pre_commit(void);
extern bool mc_recheck_changed_after_commit(void);
extern void mc_recheck_end(void);
extern void mc_recheck_reset(void);

/* ---- delivery.c ---- */

/* a committed transaction's keys, as the commit callback hands them over */
typedef struct McCommitted
{
	McStr	   *keys;
	int			nkeys;
	McStr	   *patterns;
	int			npatterns;
	int			mode;			/* meetcache.delivery at PRE_COMMIT */
	bool		queued;			/* a queue row holds the keys */
	TransactionId queue_xid;	/* the row's xmin */
	bool		lookups_queued; /* a queue row holds lookups to resolve again */
	bool		lookups_watched;	/* no row: recheck.c decides after commit */
	McStr	   *lookups;		/* those lookups */
	int			nlookups;
} McCommitted;

extern void mc_deliver(McCommitted *c);
extern int	mc_effective_delivery(void);

/* ---- stats.c ---- */

typedef enum McCounter
{
	MC_STAT_KEYS_QUEUED,		/* distinct keys recorded by triggers */
	MC_STAT_PATTERNS_QUEUED,	/* family patterns recorded (TRUNCATE, overflow) */
	MC_STAT_OVERFLOWS,			/* transactions that hit meetcache.max_keys */
	MC_STAT_XACTS_DELIVERED,	/* transactions whose keys were deleted */
	MC_STAT_KEYS_SENT,
	MC_STAT_KEYS_DELETED,
	MC_STAT_COMMANDS,
	MC_STAT_DELIVERY_FAILURES,	/* transactions whose delete failed */
	MC_STAT_REDIS_ERRORS,		/* all failed Redis exchanges */
	MC_STAT_CACHE_HITS,
	MC_STAT_CACHE_MISSES,
	MC_STAT_CACHE_BYPASSES,		/* get_or_set results not stored */
	MC_STAT_LEASE_WAITS,		/* misses that waited for another session's value */
	MC_STAT_LEASE_REFUSED,		/* stores refused: the lease was cancelled */
	MC_STAT_LEASE_TIMEOUTS,		/* waits that reached meetcache.lease_wait */
	MC_STAT_QUEUE_ROWS_WRITTEN, /* durable queue rows written by transactions */
	MC_STAT_QUEUE_ROWS_DONE,	/* queue rows removed after Redis acknowledged */
	MC_STAT_QUEUE_ROWS_SKIPPED, /* of those, already delivered by their backend */
	MC_STAT_QUEUE_KEYS_SENT,	/* keys the drains sent */
	MC_STAT_HANDOFFS,			/* sync transactions handed to the worker */
	MC_STAT_RETRIES,			/* retry-queue entries delivered by the worker */
	MC_STAT_RETRY_OVERFLOWS,	/* handoffs that did not fit the retry queue */
	MC_STAT_FAMILY_FLUSHES,		/* whole-family flushes run by drains */
	MC_STAT_WORKER_FAILURES,	/* failed worker delivery attempts */
	MC_STAT_BREAKER_TRIPS,		/* times Redis was marked down */
	MC_STAT_MOVED_REDIRECTS,	/* -MOVED replies followed (Redis Cluster) */
	MC_STAT_ASK_REDIRECTS,		/* -ASK replies followed */
	MC_STAT_SLOT_MAP_LOADS,		/* slot maps asked for and installed */
	MC_STAT_LOOKUPS_SETTLED,	/* sync transactions whose lookups needed no second resolution */
	MC_STAT_LOOKUP_HANDOFFS,	/* sync transactions whose lookups went to the drain in memory */
	MC_STAT__COUNT
} McCounter;

extern Size mc_stats_shmem_size(void);
extern void mc_stats_shmem_attach(void *place, bool init);
extern void mc_stat_add(McCounter c, uint64 n);
extern void mc_stat_error(const char *msg);
extern int	mc_excerpt(char *out, int outsize, const char *s, int len);

/* ---- shared.c ---- */

/* what meetcache.stats() shows of the shared state */
typedef struct McSharedStatus
{
	bool		preloaded;		/* false: nothing else is set */
	int			launcher_pid;	/* 0: not running */
	int			drains_running;
	bool		breaker_open;	/* Redis is known to be down ... */
	TimestampTz breaker_since;	/* ... since then */
	uint32		retry_entries;	/* the retry queue */
	uint64		retry_bytes;
	uint64		retry_size;
} McSharedStatus;

/*
 * A Redis Cluster's slot map as last loaded by some process (cluster.c
 * publishes it, shared.c keeps it, stats.c shows it): its masters in map
 * order and the slots each serves.
 */
typedef struct McTopology
{
	int			nnodes;			/* 0: no map loaded yet */
	uint64		url_hash;		/* the loader's mc_url_hash */
	TimestampTz loaded_at;
	struct
	{
		char		name[300];	/* mc_endpoint_name */
		int			slots;
	}			nodes[MC_CLUSTER_MAX_NODES];
} McTopology;

extern void mc_shared_request(void);
extern bool mc_shared_ready(void);
extern void mc_shared_status(McSharedStatus *st);
extern bool mc_breaker_applies(void);
extern bool mc_breaker_open(void);
extern void mc_breaker_trip(void);
extern void mc_breaker_reset(void);
extern void mc_topology_publish(const McTopology *t);
extern void mc_topology_read(McTopology *t);
extern bool mc_retry_push(Oid db, McStr *keys, int nkeys,
						  McStr *patterns, int npatterns);
extern void mc_db_wake(Oid db);
extern void mc_db_announce(Oid db);
extern void mc_db_request_flush(Oid db);
extern void mc_delivered_add(Oid db, TransactionId xid);
extern bool mc_delivered_take(Oid db, TransactionId xid);
extern bool mc_delivered_contains(Oid db, TransactionId xid);
extern void mc_writes_begin(uint32 slot);
extern void mc_writes_end(uint32 slot);
extern bool mc_writes_quiet(uint32 slot, uint64 *begun);
extern uint64 mc_writes_begun(uint32 slot);
extern Size mc_handoff_size(McStr *entries, int n);
extern bool mc_handoff_push(Oid db, McStr *entries, int n);
extern int	mc_handoff_take(Oid db, int max, McStr **entries, bool *more);
extern void mc_handoff_done(void);

/* ---- queue.c ---- */

extern int64 mc_queue_write(McStr *keys, int nkeys, McStr *patterns, int npatterns,
							McStr *lookups, int nlookups, bool missing_ok);
extern bool mc_queue_drain_pass(int batch, int64 *skip, int nskip, int *rows,
								int64 *first_id, bool *more, bool take_handoffs,
								int *handoffs, McErr *err);
extern void mc_queue_forget_delivered(void);
extern McStr *mc_queue_family_patterns(int *n);
extern bool mc_queue_flush(McStr *pats, int n, McErr *err);
extern void mc_queue_vacuum(void);
extern bool mc_queue_keeps_lookups(void);
extern void mc_queue_relcache_inval(Oid relid);

/* ---- settings.c ---- */

/*
 * Pin search_path to "pg_catalog, pg_temp" (and, with canonical_output, the
 * output settings keys are rendered under) until mc_settings_restore(level).
 * Wrap every SPI query in it.
 */
extern int	mc_settings_pin(bool canonical_output);
extern void mc_settings_restore(int level);

/* ---- worker.c ---- */

extern void mc_worker_register(void);

#endif							/* MEETCACHE_H */
