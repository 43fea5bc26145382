/*
 * meetcache.c
 *	  Module load: _PG_init, the meetcache.* GUCs and the redis_url parser.
 *
 * The parsed URL lives in a malloc'd struct handed from the check hook to
 * the assign hook ("extra"), so nothing here allocates at use time.  The
 * password never appears in any message: a bad URL is described, not
 * echoed.
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include "common/hashfn.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "meetcache.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

McRedisUrl *mc_url = NULL;
uint64		mc_url_generation = 0;
char	   *mc_key_prefix = NULL;
int			mc_connect_timeout = 1000;
int			mc_command_timeout = 1000;
int			mc_commit_timeout = 2000;
int			mc_delivery = MC_DELIVERY_SYNC_QUEUE;
int			mc_max_keys = 100000;
bool		mc_lease_check = true;
int			mc_lease_ttl = 10000;
int			mc_lease_wait = 2000;
int			mc_poll_interval = 1000;
int			mc_retry_buffer_kb = 1024;
int			mc_drain_batch = 1000;
bool		mc_preloaded = false;
uint64		mc_url_hash = 0;

static char *redis_url_string = NULL;

static const struct config_enum_entry delivery_options[] = {
	{"sync", MC_DELIVERY_SYNC, false},
	{"queue", MC_DELIVERY_QUEUE, false},
	{"sync+queue", MC_DELIVERY_SYNC_QUEUE, false},
	{NULL, 0, false}
};

/* decode %XX escapes in place; false on a malformed escape */
static bool
percent_decode(char *s)
{
	char	   *r = s,
			   *w = s;

	while (*r)
	{
		if (*r == '%')
		{
			int			hi,
						lo;

			if (!isxdigit((unsigned char) r[1]) || !isxdigit((unsigned char) r[2]))
				return false;
			hi = isdigit((unsigned char) r[1]) ? r[1] - '0' : (tolower((unsigned char) r[1]) - 'a' + 10);
			lo = isdigit((unsigned char) r[2]) ? r[2] - '0' : (tolower((unsigned char) r[2]) - 'a' + 10);
			*w++ = (char) (hi * 16 + lo);
			r += 3;
		}
		else
			*w++ = *r++;
	}
	*w = '\0';
	return true;
}

static bool
copy_part(char *dst, size_t dstlen, const char *src, size_t n)
{
	if (n >= dstlen)
		return false;
	memcpy(dst, src, n);
	dst[n] = '\0';
	return true;
}

/*
 * Parse redis://[user[:password]@]host[:port][/db].  On failure returns
 * false and sets *why to a description that never contains the password.
 */
static bool
parse_redis_url(const char *url, McRedisUrl *out, const char **why)
{
	const char *p,
			   *at,
			   *hostend,
			   *slash;

	memset(out, 0, sizeof(*out));
	out->port = 6379;

	if (strncmp(url, "redis://", 8) != 0)
	{
		*why = "The URL must start with \"redis://\" (TLS, \"rediss://\", is not supported yet).";
		return false;
	}
	p = url + 8;
	slash = strchr(p, '/');
	/* userinfo ends at the last '@' before the path */
	at = NULL;
	for (const char *q = p; *q && (slash == NULL || q < slash); q++)
		if (*q == '@')
			at = q;
	if (at)
	{
		const char *colon = memchr(p, ':', at - p);

		if (colon)
		{
			if (!copy_part(out->user, sizeof(out->user), p, colon - p) ||
				!copy_part(out->password, sizeof(out->password), colon + 1, at - colon - 1))
			{
				*why = "The user name or password is too long.";
				return false;
			}
		}
		else if (!copy_part(out->password, sizeof(out->password), p, at - p))
		{
			/* redis://secret@host: a lone userinfo is the password */
			*why = "The password is too long.";
			return false;
		}
		if (!percent_decode(out->user) || !percent_decode(out->password))
		{
			*why = "The user name or password has a malformed %-escape.";
			return false;
		}
		p = at + 1;
	}

	/* host, possibly [v6] */
	if (*p == '[')
	{
		const char *close = strchr(p, ']');

		if (!close || close == p + 1)
		{
			*why = "The IPv6 host is not closed with \"]\".";
			return false;
		}
		if (!copy_part(out->host, sizeof(out->host), p + 1, close - p - 1))
		{
			*why = "The host name is too long.";
			return false;
		}
		hostend = close + 1;
	}
	else
	{
		hostend = p;
		while (*hostend && *hostend != ':' && *hostend != '/')
			hostend++;
		if (!copy_part(out->host, sizeof(out->host), p, hostend - p))
		{
			*why = "The host name is too long.";
			return false;
		}
	}
	if (out->host[0] == '\0')
	{
		*why = "The URL has no host.";
		return false;
	}
	for (const char *h = out->host; *h; h++)
		if (!(isalnum((unsigned char) *h) || *h == '.' || *h == '-' || *h == ':' || *h == '_'))
		{
			*why = "The host name contains an invalid character.";
			return false;
		}

	p = hostend;
	if (*p == ':')
	{
		long		port;
		char	   *end;

		p++;
		if (!isdigit((unsigned char) *p))
		{
			*why = "The port must be a number from 1 to 65535.";
			return false;
		}
		port = strtol(p, &end, 10);
		if (port < 1 || port > 65535 || (*end != '\0' && *end != '/'))
		{
			*why = "The port must be a number from 1 to 65535.";
			return false;
		}
		out->port = (int) port;
		p = end;
	}
	if (*p == '/')
	{
		long		db;
		char	   *end;

		p++;
		if (*p == '\0')
			return true;
		if (!isdigit((unsigned char) *p))
		{
			*why = "The database must be a non-negative number.";
			return false;
		}
		db = strtol(p, &end, 10);
		if (*end != '\0' || db < 0 || db > INT_MAX)
		{
			*why = "The database must be a non-negative number.";
			return false;
		}
		out->db = (int) db;
		p = end;
	}
	if (*p != '\0')
	{
		*why = "Unexpected text after the host and port.";
		return false;
	}
	return true;
}

static bool
check_redis_url(char **newval, void **extra, GucSource source)
{
	McRedisUrl	parsed;
	McRedisUrl *copy;
	const char *why = NULL;

	if (*newval == NULL || !parse_redis_url(*newval, &parsed, &why))
	{
		/* never echo the value: it may hold a password */
		GUC_check_errmsg("invalid value for parameter \"meetcache.redis_url\"");
		GUC_check_errdetail("%s", why ? why : "The URL is empty.");
		GUC_check_errhint("The format is redis://[user[:password]@]host[:port][/db].");
		return false;
	}
	copy = (McRedisUrl *) malloc(sizeof(McRedisUrl));
	if (copy == NULL)
		return false;
	*copy = parsed;
	*extra = copy;
	return true;
}

static void
assign_redis_url(const char *newval, void *extra)
{
	mc_url = (McRedisUrl *) extra;
	mc_url_generation++;
	/* the struct is zero-filled before parsing: hashing it is stable */
	mc_url_hash = mc_url ? hash_bytes_extended((const unsigned char *) mc_url,
											   sizeof(McRedisUrl), 0) : 0;
}

static bool
check_key_prefix(char **newval, void **extra, GucSource source)
{
	if (*newval && strlen(*newval) > 512)
	{
		GUC_check_errdetail("The key prefix may be at most 512 bytes long.");
		return false;
	}
	return true;
}

/*
 * The queue modes need the background worker.  Without preloading the
 * default quietly becomes sync; asking for a queue mode is an error.
 */
static bool
check_delivery(int *newval, void **extra, GucSource source)
{
	if (*newval == MC_DELIVERY_SYNC || mc_preloaded)
		return true;
	if (source == PGC_S_DEFAULT)
	{
		*newval = MC_DELIVERY_SYNC;
		return true;
	}
	GUC_check_errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE);
	GUC_check_errmsg("meetcache.delivery = '%s' needs the meetcache background worker",
					 *newval == MC_DELIVERY_QUEUE ? "queue" : "sync+queue");
	GUC_check_errdetail("meetcache is not in shared_preload_libraries, so no worker drains the queue.");
	GUC_check_errhint("Add meetcache to shared_preload_libraries and restart the server, or use meetcache.delivery = 'sync'.");
	return false;
}

void
_PG_init(void)
{
	mc_preloaded = process_shared_preload_libraries_in_progress;

	DefineCustomStringVariable("meetcache.redis_url",
							   "Redis server that holds the cache.",
							   "Format: redis://[user[:password]@]host[:port][/db].",
							   &redis_url_string,
							   "redis://127.0.0.1:6379/0",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   check_redis_url, assign_redis_url, NULL);

	DefineCustomStringVariable("meetcache.key_prefix",
							   "Prefix of every cache key.",
							   "SQL functions take and return keys without it.",
							   &mc_key_prefix,
							   "",
							   PGC_SUSET,
							   0,
							   check_key_prefix, NULL, NULL);

	DefineCustomIntVariable("meetcache.connect_timeout",
							"Deadline for connecting to Redis, handshake included.",
							NULL,
							&mc_connect_timeout,
							1000, 1, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("meetcache.command_timeout",
							"Deadline for one Redis command or pipeline sent by a SQL function.",
							NULL,
							&mc_command_timeout,
							1000, 1, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("meetcache.commit_timeout",
							"Deadline for deleting a transaction's keys after its commit.",
							"The commit itself is never undone; past the deadline the failure is logged and counted.",
							&mc_commit_timeout,
							2000, 1, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("meetcache.delivery",
							 "How committed invalidations reach Redis.",
							 "sync: the committing backend deletes the keys after commit; "
							 "queue: a durable row per transaction, deleted by the worker; "
							 "sync+queue: both, the worker skipping what the backend delivered.",
							 &mc_delivery,
							 MC_DELIVERY_SYNC_QUEUE,
							 delivery_options,
							 PGC_SUSET,
							 0,
							 check_delivery, NULL, NULL);

	DefineCustomIntVariable("meetcache.poll_interval",
							"How often the worker looks for queue rows nobody announced.",
							"Rows of COMMIT PREPARED and retries after an outage wait at most this long.",
							&mc_poll_interval,
							1000, 10, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	/* a PGC_POSTMASTER setting can only be defined while preloading */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("meetcache.retry_buffer",
								"Shared memory for keys of failed sync deliveries, retried by the worker.",
								"When it is full, the database's cache families are flushed instead.",
								&mc_retry_buffer_kb,
								1024, 64, 262144,
								PGC_POSTMASTER,
								GUC_UNIT_KB,
								NULL, NULL, NULL);

	DefineCustomIntVariable("meetcache.drain_batch",
							"Queue rows a drain takes per transaction.",
							NULL,
							&mc_drain_batch,
							1000, 1, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("meetcache.max_keys",
							"Distinct keys one transaction keeps before it falls back to whole families.",
							"Past the limit, each further key is replaced by its family, deleted by SCAN after commit.",
							&mc_max_keys,
							100000, 1, INT_MAX / 2,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("meetcache.lease_check",
							 "Protect cache_get_or_set with leases (turn off only to test without them).",
							 "Off stores results with a plain SET: a concurrent invalidation can then leave a stale value.",
							 &mc_lease_check,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("meetcache.lease_ttl",
							"Lifetime of the lease cache_get_or_set takes on a miss.",
							"A query slower than this cannot store its result.",
							&mc_lease_ttl,
							10000, 10, 3600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("meetcache.lease_wait",
							"How long a miss waits for the value another session is computing.",
							"Past it, the session runs the query itself and does not cache the result.",
							&mc_lease_wait,
							2000, 0, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("meetcache");
#else
	EmitWarningsOnPlaceholders("meetcache");
#endif

	mc_pending_init();
	mc_guard_init();
	mc_rules_init();
	if (process_shared_preload_libraries_in_progress)
	{
		mc_stats_shmem_request();
		mc_shared_request();
		if (!IsBinaryUpgrade)
			mc_worker_register();
	}
}
