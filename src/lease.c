/*
 * lease.c
 *	  The lease protocol of cache_get_or_set (README "Leases"): the names of
 *	  lease keys, the Lua scripts that make, use and cancel leases, and the
 *	  wait for a value another session is computing.  Redis is reached only
 *	  through redis.c's command API (this file does not include hiredis);
 *	  redis.c loads the scripts' texts from here.
 *
 * Invariants:
 *	  - the lease key of a full key K is in the reserved namespace
 *	    MC_LEASE_NS and hashes to K's Redis Cluster slot:
 *	      K without a hash tag:   mc-lease:u:{K}
 *	      K with a hash tag {T}:  mc-lease:t:K   (the first tag is still {T})
 *	    The two forms cannot collide ("x" and "{x}" get different leases)
 *	    and parse back unambiguously.  One exception: K without a hash tag
 *	    that contains a '}' (mc_lease_same_slot is false); Redis takes
 *	    mc-lease:u:{K}'s tag to end at that '}'.  On a cluster no lease of
 *	    such a K can exist (every script names both keys: -CROSSSLOT), so
 *	    invalidations delete K alone there;
 *	  - a key is only ever stored or set together with its lease, atomically,
 *	    by one of the scripts (lua/NAME.lua, shared with the clients): a
 *	    store whose lease an invalidation cancelled is refused.  A key is
 *	    deleted with its lease in one command, or (a cluster's slot in
 *	    migration) after it;
 *	  - mc_lease_key, mc_lease_base and mc_lease_script_text neither throw
 *	    nor allocate (the commit path uses them);
 *	  - a backend that exits holding a lease gives it back.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/timestamp.h"
#if PG_VERSION_NUM >= 140000
#include "utils/wait_event.h"
#else
#include "pgstat.h"
#endif

#include "lua_scripts.h"
#include "meetcache.h"

/* the two lease key forms; MC_LEASE_EXTRA covers the longer */
#define LEASE_TAGGED MC_LEASE_NS "t:"
#define LEASE_TAGGED_LEN ((int) sizeof(LEASE_TAGGED) - 1)
#define LEASE_UNTAGGED MC_LEASE_NS "u:{"
#define LEASE_UNTAGGED_LEN ((int) sizeof(LEASE_UNTAGGED) - 1)
StaticAssertDecl(LEASE_UNTAGGED_LEN + 2 == MC_LEASE_EXTRA,
				 "MC_LEASE_EXTRA is the untagged lease form's overhead, NUL included");

#define WAIT_FIRST_NAP_MS 2		/* the wait for another session's value ... */
#define WAIT_MAX_NAP_MS 50		/* ... naps double up to this */

/* ---- names ---- */

/*
 * The lease key of a full key (k, klen) into out, which must have room for
 * klen + MC_LEASE_EXTRA bytes; returns its length.  No allocation.
 */
int
mc_lease_key(const char *k, int klen, char *out)
{
	const char *open = memchr(k, '{', klen);
	bool		tagged = false;

	if (open)
	{
		const char *close = memchr(open + 1, '}', klen - (open + 1 - k));

		tagged = (close != NULL && close > open + 1);
	}
	if (tagged)
	{
		memcpy(out, LEASE_TAGGED, LEASE_TAGGED_LEN);
		memcpy(out + LEASE_TAGGED_LEN, k, klen);
		out[klen + LEASE_TAGGED_LEN] = '\0';
		return klen + LEASE_TAGGED_LEN;
	}
	memcpy(out, LEASE_UNTAGGED, LEASE_UNTAGGED_LEN);
	memcpy(out + LEASE_UNTAGGED_LEN, k, klen);
	out[klen + LEASE_UNTAGGED_LEN] = '}';
	out[klen + LEASE_UNTAGGED_LEN + 1] = '\0';
	return klen + LEASE_UNTAGGED_LEN + 1;
}

/*
 * Is (k, klen)'s lease key in k's Redis Cluster slot?  False only for a key
 * without a hash tag that contains a '}'.  No allocation.
 */
bool
mc_lease_same_slot(const char *k, int klen)
{
	const char *open = memchr(k, '{', klen);

	if (open)
	{
		const char *close = memchr(open + 1, '}', klen - (open + 1 - k));

		if (close != NULL && close > open + 1)
			return true;		/* tagged: mc-lease:t:K has K's tag */
	}
	return memchr(k, '}', klen) == NULL;
}

/* the lease key of a full key, palloc'd */
char *
mc_lease_of(const char *full)
{
	int			len = strlen(full);
	char	   *out = palloc(len + MC_LEASE_EXTRA);

	mc_lease_key(full, len, out);
	return out;
}

/*
 * The SCAN globs of the lease keys of every key a glob matches, in both
 * forms (palloc'd).  The untagged form wraps the glob in braces; a glob's
 * own braces are literal to SCAN.
 */
void
mc_lease_globs(const char *glob, char **untagged, char **tagged)
{
	*untagged = psprintf("%s%s}", LEASE_UNTAGGED, glob);
	*tagged = psprintf("%s%s", LEASE_TAGGED, glob);
}

/* if s is a lease key, the key it leases (and true); else s itself */
bool
mc_lease_base(const char *s, int len, const char **base, int *blen)
{
	if (len > LEASE_TAGGED_LEN && memcmp(s, LEASE_TAGGED, LEASE_TAGGED_LEN) == 0)
	{
		*base = s + LEASE_TAGGED_LEN;
		*blen = len - LEASE_TAGGED_LEN;
		return true;
	}
	if (len > LEASE_UNTAGGED_LEN + 1 && memcmp(s, LEASE_UNTAGGED, LEASE_UNTAGGED_LEN) == 0 &&
		s[len - 1] == '}')
	{
		*base = s + LEASE_UNTAGGED_LEN;
		*blen = len - LEASE_UNTAGGED_LEN - 1;
		return true;
	}
	*base = s;
	*blen = len;
	return false;
}

/*
 * Does s start in the reserved namespace?  With glob, s is a SCAN pattern
 * and only its literal start counts: a wildcard before the namespace ends
 * means no.
 */
bool
mc_lease_namespace(const char *s, bool glob)
{
	int			n = 0;

	for (; *s && n < (int) strlen(MC_LEASE_NS); s++)
	{
		if (glob && (*s == '*' || *s == '?' || *s == '['))
			return false;
		if (glob && *s == '\\' && s[1])
			s++;
		if (*s != MC_LEASE_NS[n++])
			return false;
	}
	return n == (int) strlen(MC_LEASE_NS);
}

/* ---- scripts ---- */

/* the texts are the files lua/NAME.lua, shared with the clients (see scripts/lua2c.sh) */
static const char *const script_text[MC_SCRIPT__COUNT] = {
	[MC_SCRIPT_LEASE_GET] = MC_LUA_LEASE_GET,
	[MC_SCRIPT_LEASE_SET] = MC_LUA_LEASE_SET,
	[MC_SCRIPT_LEASE_RELEASE] = MC_LUA_LEASE_RELEASE,
	[MC_SCRIPT_DEL_PAIRS] = MC_LUA_DEL_PAIRS,
	[MC_SCRIPT_SET_CANCEL] = MC_LUA_SET_CANCEL,
};

const char *
mc_lease_script_text(McScript which)
{
	return script_text[which];
}

/* run a script on the strings argv[0..argc-1] (keys first) */
static McReply *
script(McScript which, int nkeys, int argc, const char **argv, McErr *err)
{
	size_t	   *lens = palloc(sizeof(size_t) * argc);

	for (int i = 0; i < argc; i++)
		lens[i] = strlen(argv[i]);
	return mc_redis_script(which, nkeys, argc - nkeys, argv, lens, err);
}

/*
 * SET a full key unconditionally and cancel its lease: a slower reader
 * cannot overwrite the newer value.  NULL with err set when Redis does not
 * answer; error replies are returned.
 */
McReply *
mc_lease_set_cancel(const char *full, const char *json, int ttl, McErr *err)
{
	char		ttlbuf[16];
	const char *argv[4] = {full, mc_lease_of(full), json, ttlbuf};

	snprintf(ttlbuf, sizeof(ttlbuf), "%d", ttl);
	return script(MC_SCRIPT_SET_CANCEL, 2, 4, argv, err);
}

/* delete n full keys, each with its lease; the reply counts the keys deleted */
McReply *
mc_lease_del_pairs(char **keys, int n, McErr *err)
{
	const char **argv = palloc(sizeof(char *) * 2 * Max(n, 1));

	for (int k = 0; k < n; k++)
	{
		argv[2 * k] = keys[k];
		argv[2 * k + 1] = mc_lease_of(keys[k]);
	}
	return script(MC_SCRIPT_DEL_PAIRS, 2 * n, 2 * n, argv, err);
}

/* store a value only while we still hold the key's lease; the reply is 1 if stored */
McReply *
mc_lease_set(const char *full, const char *lease, const char *token,
			 const char *json, int ttl, McErr *err)
{
	char		ttlbuf[16];
	const char *argv[5] = {full, lease, token, json, ttlbuf};

	snprintf(ttlbuf, sizeof(ttlbuf), "%d", ttl);
	return script(MC_SCRIPT_LEASE_SET, 2, 5, argv, err);
}

/* ---- holding a lease ---- */

/*
 * The lease this backend holds, if any, so that a backend that exits while
 * holding one (pg_terminate_backend: FATAL runs no PG_CATCH) gives it back
 * instead of making every other session wait until it expires.
 */
static char held_lease[MC_MAX_KEY_BYTES + 600 + MC_LEASE_EXTRA];
static char held_token[MC_LEASE_TOKEN];
static bool exit_callback_set = false;

/* compare-and-delete a lease; never throws for Redis trouble */
static void
release(const char *lease, const char *token)
{
	const char *argv[2] = {lease, token};
	McErr		err;

	(void) script(MC_SCRIPT_LEASE_RELEASE, 1, 2, argv, &err);
}

static void
release_on_exit(int code, Datum arg)
{
	if (held_lease[0] == '\0')
		return;
	HOLD_INTERRUPTS();
	release(held_lease, held_token);
	held_lease[0] = '\0';
	RESUME_INTERRUPTS();
}

static void
remember(const char *lease, const char *token)
{
	if (!exit_callback_set)
	{
		before_shmem_exit(release_on_exit, (Datum) 0);
		exit_callback_set = true;
	}
	strlcpy(held_lease, lease, sizeof(held_lease));
	strlcpy(held_token, token, sizeof(held_token));
}

/* the lease was used (stored, refused, released): nothing to give back at exit */
void
mc_lease_forget(void)
{
	held_lease[0] = '\0';
}

/* give a lease back (a failed fill), even while an error is being thrown */
void
mc_lease_release(const char *lease, const char *token)
{
	HOLD_INTERRUPTS();
	release(lease, token);
	mc_lease_forget();
	RESUME_INTERRUPTS();
}

/* a token no other lease holder has: pid, time, and a counter */
void
mc_lease_token(char *token)
{
	static uint32 token_counter = 0;

	snprintf(token, MC_LEASE_TOKEN, "%d-" INT64_FORMAT "-%u", MyProcPid,
			 (int64) GetCurrentTimestamp(), ++token_counter);
}

/*
 * GET a full key, or take its lease (lease, token), or wait up to
 * meetcache.lease_wait for the session that holds it to store a value.
 * MC_LEASE_VALUE: *reply is the value; MC_LEASE_REFUSED: *reply is Redis's
 * error reply; MC_LEASE_NO_REDIS: err says why.
 */
McLeaseGet
mc_lease_get(const char *full, const char *lease, const char *token,
			 McReply **reply, McErr *err)
{
	TimestampTz wait_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), mc_lease_wait);
	long		nap = WAIT_FIRST_NAP_MS;
	bool		waited = false;
	char		leasems[16];
	const char *argv[4] = {full, lease, token, leasems};

	snprintf(leasems, sizeof(leasems), "%d", mc_lease_ttl);
	for (;;)
	{
		McReply    *r = script(MC_SCRIPT_LEASE_GET, 2, 4, argv, err);
		long		left;

		*reply = r;
		if (r == NULL)
			return MC_LEASE_NO_REDIS;
		if (r->type == MC_REPLY_ERROR)
			return MC_LEASE_REFUSED;
		if (r->type != MC_REPLY_ARRAY || r->nelems < 1 ||
			r->elems[0]->type != MC_REPLY_INTEGER)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("redis sent an unexpected reply to the lease script")));
		if (r->elems[0]->integer == 1 && r->nelems == 2)
		{
			*reply = r->elems[1];
			return MC_LEASE_VALUE;
		}
		if (r->elems[0]->integer == 2)
		{
			remember(lease, token);
			return MC_LEASE_HELD;
		}
		/* another session is computing this key: wait for its value */
		if (!waited)
		{
			waited = true;
			mc_stat_add(MC_STAT_LEASE_WAITS, 1);
		}
		left = (long) ((wait_until - GetCurrentTimestamp()) / 1000);
		if (left <= 0)
		{
			mc_stat_add(MC_STAT_LEASE_TIMEOUTS, 1);
			return MC_LEASE_TIMED_OUT;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(nap, left), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		nap = Min(nap * 2, WAIT_MAX_NAP_MS);
	}
}
