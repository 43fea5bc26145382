/*
 * meetcache.c
 *	  Module load: _PG_init, the meetcache.* GUCs, the redis_url parser and
 *	  the password files.
 *
 * The parsed URL lives in a malloc'd struct handed from the check hook to
 * the assign hook ("extra"), so nothing here allocates at use time.
 *
 * The Redis password never lives in a setting, where pg_db_role_setting,
 * pg_read_all_settings members and the reload log would show it: a
 * redis_url carrying one is refused, and the password comes from the file
 * named by meetcache.redis_password_file (PGC_SIGHUP), checked like
 * .pgpass; the sentinels' password, the same way, from
 * meetcache.redis_sentinel_password_file.  Each file is read by its
 * setting's check hook (start-up, reload, ALTER SYSTEM) into a static
 * copy, and again by mc_redis_password(reread) when a connection is opened
 * outside the commit path and the file changed; the commit path uses the
 * copy.  A refused
 * redis_url is described, never echoed, and its statement is kept out of
 * the server log (emit_log_hook).
 */
#include "postgres.h"

#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/hashfn.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/elog.h"
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
char	   *mc_dns_servers = NULL;

static char *redis_url_string = NULL;
static char *redis_password_file = NULL;
static char *sentinel_password_file = NULL;
static McTlsSettings tls = {NULL, NULL, NULL, MC_TLS_VERIFY_FULL};

/* the password file as last read; path empty: no password */
typedef struct McPassword
{
	char		path[MAXPGPATH];
	dev_t		dev;
	ino_t		ino;
	off_t		size;
	struct timespec mtime;
	char		password[256];
} McPassword;

static McPassword pw_cache[2];	/* by McPasswordFor */

/* set by a refused redis_url until its report is logged */
static bool hide_statement = false;
static emit_log_hook_type prev_emit_log_hook = NULL;

static const struct config_enum_entry delivery_options[] = {
	{"sync", MC_DELIVERY_SYNC, false},
	{"queue", MC_DELIVERY_QUEUE, false},
	{"sync+queue", MC_DELIVERY_SYNC_QUEUE, false},
	{NULL, 0, false}
};

static const struct config_enum_entry recheck_options[] = {
	{"auto", MC_RECHECK_AUTO, false},
	{"always", MC_RECHECK_ALWAYS, false},
	{NULL, 0, false}
};

static const struct config_enum_entry tls_verify_options[] = {
	{"full", MC_TLS_VERIFY_FULL, false},
	{"ca", MC_TLS_VERIFY_CA, false},
	{"none", MC_TLS_VERIFY_NONE, false},
	{NULL, 0, false}
};

/* decode %XX escapes in place; false on a malformed escape or %00 */
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
			if (hi == 0 && lo == 0)
				return false;	/* %00 would cut the name short */
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

/* the scheme: where the endpoint is and whether it speaks TLS */
typedef enum UrlKind
{
	URL_SERVER,					/* one server: TCP, TLS or a Unix socket */
	URL_SENTINEL,				/* the master that sentinels name */
	URL_CLUSTER					/* a Redis Cluster's masters */
} UrlKind;

static bool
parse_scheme(const char **p, McRedisUrl *out, UrlKind *kind, const char **why)
{
	static const struct
	{
		const char *prefix;
		bool		unix_socket;
		bool		tls;
		UrlKind		kind;
	}			schemes[] = {
		{"redis://", false, false, URL_SERVER},
		{"rediss://", false, true, URL_SERVER},
		{"unix://", true, false, URL_SERVER},
		{"redis-sentinel://", false, false, URL_SENTINEL},
		{"rediss-sentinel://", false, true, URL_SENTINEL},
		{"redis-cluster://", false, false, URL_CLUSTER},
		{"rediss-cluster://", false, true, URL_CLUSTER},
	};

	for (int i = 0; i < lengthof(schemes); i++)
		if (strncmp(*p, schemes[i].prefix, strlen(schemes[i].prefix)) == 0)
		{
			*p += strlen(schemes[i].prefix);
			out->ep.unix_socket = schemes[i].unix_socket;
			out->ep.tls = schemes[i].tls;
			*kind = schemes[i].kind;
			return true;
		}
	*why = "The URL must start with \"redis://\", \"rediss://\" (TLS), \"unix://\", \"redis-sentinel://\", \"rediss-sentinel://\" (TLS), \"redis-cluster://\" or \"rediss-cluster://\" (TLS).";
	return false;
}

/* [user@]: the userinfo ends at the last '@' before end; never a password */
static bool
parse_userinfo(const char **p, const char *end, McRedisUrl *out, const char **why)
{
	const char *at = NULL;

	for (const char *q = *p; *q && q < end; q++)
		if (*q == '@')
			at = q;
	if (at == NULL)
		return true;
	if (memchr(*p, ':', at - *p))
	{
		*why = "The URL carries a password.";
		return false;
	}
	if (!copy_part(out->user, sizeof(out->user), *p, at - *p))
	{
		*why = "The user name is too long.";
		return false;
	}
	if (!percent_decode(out->user))
	{
		*why = "The user name has a malformed %-escape.";
		return false;
	}
	*p = at + 1;
	return true;
}

/* host, possibly [v6], then :port, ending at '/', ',' or the end */
static bool
parse_host_port(const char **p, McEndpoint *ep, const char **why)
{
	const char *hostend;

	if (**p == '[')
	{
		const char *close = strchr(*p, ']');

		if (!close || close == *p + 1)
		{
			*why = "The IPv6 host is not closed with \"]\".";
			return false;
		}
		if (!copy_part(ep->host, sizeof(ep->host), *p + 1, close - *p - 1))
		{
			*why = "The host name is too long.";
			return false;
		}
		hostend = close + 1;
	}
	else
	{
		hostend = *p;
		while (*hostend && *hostend != ':' && *hostend != '/' && *hostend != ',')
			hostend++;
		if (!copy_part(ep->host, sizeof(ep->host), *p, hostend - *p))
		{
			*why = "The host name is too long.";
			return false;
		}
	}
	if (ep->host[0] == '\0')
	{
		*why = "The URL has no host.";
		return false;
	}
	for (const char *h = ep->host; *h; h++)
		if (!(isalnum((unsigned char) *h) || *h == '.' || *h == '-' || *h == ':' || *h == '_'))
		{
			*why = "The host name contains an invalid character.";
			return false;
		}
	*p = hostend;
	if (**p == ':')
	{
		long		port;
		char	   *end = NULL;

		(*p)++;
		port = isdigit((unsigned char) **p) ? strtol(*p, &end, 10) : 0;
		if (port < 1 || port > 65535 || (*end != '\0' && *end != '/' && *end != ','))
		{
			*why = "The port must be a number from 1 to 65535.";
			return false;
		}
		ep->port = (int) port;
		*p = end;
	}
	return true;
}

/* a database number ending at end or at the string's end */
static bool
parse_db(const char *p, const char *end, McRedisUrl *out, const char **why)
{
	long		db;
	char	   *stop;

	if (!isdigit((unsigned char) *p))
	{
		*why = "The database must be a non-negative number.";
		return false;
	}
	db = strtol(p, &stop, 10);
	if (stop != end || db < 0 || db > INT_MAX)
	{
		*why = "The database must be a non-negative number.";
		return false;
	}
	out->db = (int) db;
	return true;
}

/* redis:// and rediss://: after the userinfo, host[:port][/db] */
static bool
parse_tcp_url(const char *p, McRedisUrl *out, const char **why)
{
	const char *slash = strchr(p, '/');

	if (!parse_userinfo(&p, slash ? slash : p + strlen(p), out, why) ||
		!parse_host_port(&p, &out->ep, why))
		return false;
	if (*p == '/')
	{
		p++;
		return *p == '\0' || parse_db(p, p + strlen(p), out, why);
	}
	if (*p != '\0')
	{
		*why = "Unexpected text after the host and port.";
		return false;
	}
	return true;
}

/* unix://: after the userinfo, /path[?db=N] */
static bool
parse_unix_url(const char *p, McRedisUrl *out, const char **why)
{
	const char *slash = strchr(p, '/');
	const char *query;

	if (!parse_userinfo(&p, slash ? slash : p + strlen(p), out, why))
		return false;
	if (*p != '/')
	{
		*why = "The socket path must be absolute: unix:///path/to/redis.sock.";
		return false;
	}
	query = strchr(p, '?');
	if (!copy_part(out->ep.path, sizeof(out->ep.path), p, query ? query - p : strlen(p)))
	{
		*why = "The socket path is too long.";
		return false;
	}
	if (query == NULL)
		return true;
	if (strncmp(query, "?password=", 10) == 0)
	{
		*why = "The URL carries a password.";
		return false;
	}
	if (strncmp(query, "?db=", 4) != 0)
	{
		*why = "The only parameter of a unix:// URL is db.";
		return false;
	}
	return parse_db(query + 4, query + strlen(query), out, why);
}

/*
 * host[:port][,host[:port]...] into eps (at most max, what they are; port
 * defport unless given), ending at '/' or the end.
 */
static bool
parse_host_list(const char **p, McEndpoint *eps, int *n, int max, const char *what,
				int defport, bool tls, const char **why)
{
	for (;;)
	{
		McEndpoint *ep;

		if (*n == max)
		{
			*why = psprintf("The URL names more than %d %s.", max, what);
			return false;
		}
		ep = &eps[(*n)++];
		ep->port = defport;
		ep->tls = tls;
		if (!parse_host_port(p, ep, why))
			return false;
		if (**p != ',')
			return true;
		(*p)++;
	}
}

/*
 * redis-cluster:// and rediss-cluster://: after the userinfo,
 * host[:port][,host[:port]...][/0]; a seed's port is 6379 unless given.
 * A cluster has database 0 only (it refuses SELECT).
 */
static bool
parse_cluster_url(const char *p, McRedisUrl *out, const char **why)
{
	const char *slash = strchr(p, '/');

	if (!parse_userinfo(&p, slash ? slash : p + strlen(p), out, why) ||
		!parse_host_list(&p, out->seeds, &out->nseeds, MC_MAX_SEEDS,
						 "seed nodes", 6379, out->ep.tls, why))
		return false;
	if (*p == '/' && p[1] != '\0' && !parse_db(p + 1, p + strlen(p), out, why))
		return false;
	if (*p != '\0' && *p != '/')
	{
		*why = "Unexpected text after the seed nodes.";
		return false;
	}
	if (out->db != 0)
	{
		*why = "A Redis Cluster has database 0 only.";
		return false;
	}
	return true;
}

/*
 * redis-sentinel:// and rediss-sentinel://: after the userinfo,
 * host[:port][,host[:port]...]/master_name[/db]; a sentinel's port is
 * 26379 unless given, and it speaks TLS when the master does.
 */
static bool
parse_sentinel_url(const char *p, McRedisUrl *out, const char **why)
{
	const char *slash = strchr(p, '/');
	const char *name_end;

	if (!parse_userinfo(&p, slash ? slash : p + strlen(p), out, why) ||
		!parse_host_list(&p, out->sentinels, &out->nsentinels, MC_MAX_SENTINELS,
						 "sentinels", 26379, out->ep.tls, why))
		return false;
	if (*p != '/' || p[1] == '\0' || p[1] == '/')
	{
		*why = "The sentinels must be followed by /master_name: redis-sentinel://host:26379/mymaster.";
		return false;
	}
	p++;
	name_end = strchr(p, '/');
	if (!copy_part(out->master_name, sizeof(out->master_name), p,
				   name_end ? name_end - p : strlen(p)))
	{
		*why = "The master name is too long.";
		return false;
	}
	if (!percent_decode(out->master_name) || out->master_name[0] == '\0')
	{
		*why = "The master name has a malformed %-escape or is empty.";
		return false;
	}
	if (name_end == NULL || name_end[1] == '\0')
		return true;
	return parse_db(name_end + 1, name_end + strlen(name_end), out, why);
}

/*
 * Parse redis://[user@]host[:port][/db], rediss:// (the same, over TLS),
 * unix://[user@]/path[?db=N], redis-sentinel://[user@]host[:port][,...]
 * /master_name[/db] (rediss-sentinel:// over TLS) or
 * redis-cluster://[user@]host[:port][,...][/0] (rediss-cluster:// over TLS).  On failure returns
 * false and sets *why to a description that never repeats the URL.
 */
static bool
parse_redis_url(const char *url, McRedisUrl *out, const char **why)
{
	const char *p = url;
	UrlKind		kind;

	memset(out, 0, sizeof(*out));
	out->ep.port = 6379;
	if (!parse_scheme(&p, out, &kind, why))
		return false;
	if (kind == URL_SENTINEL)
		return parse_sentinel_url(p, out, why);
	if (kind == URL_CLUSTER)
		return parse_cluster_url(p, out, why);
	if (out->ep.unix_socket)
		return parse_unix_url(p, out, why);
	return parse_tcp_url(p, out, why);
}

static bool
check_redis_url(char **newval, void **extra, GucSource source)
{
	McRedisUrl	parsed;
	McRedisUrl *copy;
	const char *why = NULL;

	hide_statement = false;
	if (*newval == NULL || !parse_redis_url(*newval, &parsed, &why))
	{
		/* never echo the value, nor let the log show the statement: it may hold a password */
		hide_statement = true;
		GUC_check_errmsg("invalid value for parameter \"meetcache.redis_url\"");
		GUC_check_errdetail("%s", why ? why : "The URL is empty.");
		GUC_check_errhint("The format is redis://[user@]host[:port][/db], rediss://... for TLS, unix://[user@]/path[?db=N], redis-sentinel://[user@]host[:port][,host[:port]...]/master_name[/db] or redis-cluster://[user@]host[:port][,host[:port]...]; the password goes in the file named by meetcache.redis_password_file.");
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
	mc_transport_reconfigure(&tls);
}

/*
 * A TLS setting changed (assign hooks run before the variable is set, so
 * each passes its new value): connections made with the old ones are
 * dropped, the TLS context is made again.
 */
static void
tls_reconfigure(McTlsSettings t)
{
	mc_url_generation++;
	mc_transport_reconfigure(&t);
}

static void
assign_tls_ca_file(const char *newval, void *extra)
{
	McTlsSettings t = tls;

	t.ca_file = newval;
	tls_reconfigure(t);
}

static void
assign_tls_cert_file(const char *newval, void *extra)
{
	McTlsSettings t = tls;

	t.cert_file = newval;
	tls_reconfigure(t);
}

static void
assign_tls_key_file(const char *newval, void *extra)
{
	McTlsSettings t = tls;

	t.key_file = newval;
	tls_reconfigure(t);
}

static void
assign_tls_verify(int newval, void *extra)
{
	McTlsSettings t = tls;

	t.verify = newval;
	tls_reconfigure(t);
}

/* ip[:port] or [ipv6]:port, comma-separated: what ares_set_servers_ports_csv takes */
static bool
check_dns_servers(char **newval, void **extra, GucSource source)
{
	for (const char *c = *newval ? *newval : ""; *c; c++)
		if (!(isxdigit((unsigned char) *c) || strchr(".:[],", *c)))
		{
			GUC_check_errdetail("The value must be a comma-separated list of ip[:port] or [ipv6]:port.");
			return false;
		}
	return true;
}

/* the statement of a refused redis_url stays out of the server log */
static void
mc_emit_log(ErrorData *edata)
{
	if (hide_statement)
	{
		edata->hide_stmt = true;
		hide_statement = false;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/* NULL if a password file may be used: like .pgpass, owner-only */
static const char *
password_file_unfit(const struct stat *st)
{
	if (!S_ISREG(st->st_mode))
		return "It is not a regular file.";
	if (st->st_uid != geteuid())
		return "It is not owned by the operating-system user the server runs as.";
	if (st->st_mode & (S_IRWXG | S_IRWXO))
		return "Its permissions give access to group or others; they must be u=rw (0600) or less.";
	return NULL;
}

static bool
same_file(const struct stat *st, const McPassword *pw)
{
	return st->st_dev == pw->dev && st->st_ino == pw->ino &&
		st->st_size == pw->size &&
		st->st_mtim.tv_sec == pw->mtime.tv_sec &&
		st->st_mtim.tv_nsec == pw->mtime.tv_nsec;
}

/*
 * Read the password, the first line of the file at path (without its
 * newline and a CR before it), into *out.  On failure fills why, which
 * never holds the content, and returns false.  No palloc, no throw.
 */
static bool
read_password_file(const char *path, McPassword *out, char *why, size_t whylen)
{
	char		buf[sizeof(out->password) + 2];
	struct stat st;
	const char *unfit;
	size_t		n = 0;
	size_t		len;
	char	   *nl;
	int			fd;
	bool		ok = false;

	memset(out, 0, sizeof(*out));
	if (strlcpy(out->path, path, sizeof(out->path)) >= sizeof(out->path))
	{
		snprintf(why, whylen, "The path is too long.");
		return false;
	}
	/* O_NONBLOCK: a FIFO must not hang us before fstat refuses it */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
	{
		snprintf(why, whylen, "Could not open it: %s.", strerror(errno));
		return false;
	}
	if (fstat(fd, &st) != 0)
	{
		snprintf(why, whylen, "Could not stat it: %s.", strerror(errno));
		close(fd);
		return false;
	}
	if ((unfit = password_file_unfit(&st)) != NULL)
	{
		strlcpy(why, unfit, whylen);
		close(fd);
		return false;
	}
	while (n < sizeof(buf) && memchr(buf, '\n', n) == NULL)
	{
		ssize_t		r = read(fd, buf + n, sizeof(buf) - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
		{
			snprintf(why, whylen, "Could not read it: %s.", strerror(errno));
			close(fd);
			explicit_bzero(buf, sizeof(buf));
			return false;
		}
		if (r == 0)
			break;
		n += r;
	}
	close(fd);
	nl = memchr(buf, '\n', n);
	len = nl ? (size_t) (nl - buf) : n;
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	if (len >= sizeof(out->password) || memchr(buf, '\0', len))
		snprintf(why, whylen, "Its first line, the password, is longer than %d bytes or holds a NUL byte.",
				 (int) sizeof(out->password) - 1);
	else if (len == 0)
		snprintf(why, whylen, "Its first line, the password, is empty.");
	else
	{
		memcpy(out->password, buf, len);
		out->dev = st.st_dev;
		out->ino = st.st_ino;
		out->size = st.st_size;
		out->mtime = st.st_mtim;
		ok = true;
	}
	explicit_bzero(buf, sizeof(buf));
	return ok;
}

/* the password files' settings, by McPasswordFor */
static const char *const password_setting[] = {
	[MC_PASSWORD_REDIS] = "meetcache.redis_password_file",
	[MC_PASSWORD_SENTINEL] = "meetcache.redis_sentinel_password_file",
};

static bool
check_password_file(McPasswordFor which, char **newval, void **extra)
{
	McPassword	pw;
	McPassword *copy;
	char		why[256];

	memset(&pw, 0, sizeof(pw));
	if (*newval && (*newval)[0] && !read_password_file(*newval, &pw, why, sizeof(why)))
	{
		GUC_check_errcode(ERRCODE_CONFIG_FILE_ERROR);
		GUC_check_errmsg("password file \"%s\" of %s cannot be used",
						 *newval, password_setting[which]);
		GUC_check_errdetail("%s", why);
		GUC_check_errhint("It must be a regular file owned by the server's operating-system user, with no access for group or others (chmod 0600), holding the password on its first line.");
		return false;
	}
	copy = (McPassword *) malloc(sizeof(McPassword));
	if (copy != NULL)
	{
		*copy = pw;
		*extra = copy;
	}
	explicit_bzero(&pw, sizeof(pw));
	return copy != NULL;
}

static void
assign_password_file(McPasswordFor which, void *extra)
{
	explicit_bzero(&pw_cache[which], sizeof(pw_cache[which]));
	if (extra)
		pw_cache[which] = *(McPassword *) extra;
}

static bool
check_redis_password_file(char **newval, void **extra, GucSource source)
{
	return check_password_file(MC_PASSWORD_REDIS, newval, extra);
}

static void
assign_redis_password_file(const char *newval, void *extra)
{
	assign_password_file(MC_PASSWORD_REDIS, extra);
}

static bool
check_sentinel_password_file(char **newval, void **extra, GucSource source)
{
	return check_password_file(MC_PASSWORD_SENTINEL, newval, extra);
}

static void
assign_sentinel_password_file(const char *newval, void *extra)
{
	assign_password_file(MC_PASSWORD_SENTINEL, extra);
}

const char *
mc_redis_password(McPasswordFor which, bool reread, McErr *err)
{
	McPassword *pw = &pw_cache[which];
	struct stat st;
	McPassword	fresh;
	char		why[256];

	if (!reread || pw->path[0] == '\0')
		return pw->password;
	if (stat(pw->path, &st) == 0 && same_file(&st, pw) &&
		password_file_unfit(&st) == NULL)
		return pw->password;
	if (!read_password_file(pw->path, &fresh, why, sizeof(why)))
	{
		memset(err, 0, sizeof(*err));
		err->sqlstate = ERRCODE_CONFIG_FILE_ERROR;
		snprintf(err->msg, sizeof(err->msg),
				 "password file \"%s\" of %s cannot be used",
				 pw->path, password_setting[which]);
		strlcpy(err->detail, why, sizeof(err->detail));
		return NULL;
	}
	*pw = fresh;
	explicit_bzero(&fresh, sizeof(fresh));
	return pw->password;
}

static bool
check_key_prefix(char **newval, void **extra, GucSource source)
{
	if (*newval && strlen(*newval) > 512)
	{
		GUC_check_errdetail("The key prefix may be at most 512 bytes long.");
		return false;
	}
	if (*newval && strncmp(*newval, MC_LEASE_NS, strlen(MC_LEASE_NS)) == 0)
	{
		GUC_check_errdetail("Keys starting with \"%s\" are meetcache's lease keys.", MC_LEASE_NS);
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

	/* before redis_url, whose assign hook sets TLS up with them */
	DefineCustomStringVariable("meetcache.redis_tls_ca_file",
							   "CA certificates that verify the certificate of a rediss:// server.",
							   "Empty: the system's trust store.",
							   (char **) &tls.ca_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, assign_tls_ca_file, NULL);

	DefineCustomStringVariable("meetcache.redis_tls_cert_file",
							   "Client certificate sent to a rediss:// server (for tls-auth-clients).",
							   "Empty: none.",
							   (char **) &tls.cert_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, assign_tls_cert_file, NULL);

	DefineCustomStringVariable("meetcache.redis_tls_key_file",
							   "Private key of meetcache.redis_tls_cert_file.",
							   "Empty: the key is in the certificate file.",
							   (char **) &tls.key_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, assign_tls_key_file, NULL);

	DefineCustomEnumVariable("meetcache.redis_tls_verify",
							 "How the certificate of a rediss:// server is checked.",
							 "full: chain and host name; ca: chain only; none: not at all.",
							 &tls.verify,
							 MC_TLS_VERIFY_FULL,
							 tls_verify_options,
							 PGC_SUSET,
							 GUC_SUPERUSER_ONLY,
							 NULL, assign_tls_verify, NULL);

	DefineCustomStringVariable("meetcache.redis_dns_servers",
							   "DNS servers that resolve the host name of meetcache.redis_url.",
							   "Comma-separated ip[:port]; empty: those of /etc/resolv.conf.",
							   &mc_dns_servers,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   check_dns_servers, NULL, NULL);

	DefineCustomStringVariable("meetcache.redis_url",
							   "Redis server that holds the cache.",
							   "Format: redis://[user@]host[:port][/db], rediss://... (TLS), unix://[user@]/path[?db=N] or redis-sentinel://[user@]host[:port][,...]/master_name[/db] (rediss-sentinel:// for TLS); the password is read from meetcache.redis_password_file.",
							   &redis_url_string,
							   "redis://127.0.0.1:6379/0",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   check_redis_url, assign_redis_url, NULL);

	DefineCustomStringVariable("meetcache.redis_password_file",
							   "File whose first line is the password meetcache sends to Redis with AUTH.",
							   "Like .pgpass: a regular file owned by the server's operating-system user, with no access for group or others.",
							   &redis_password_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_redis_password_file, assign_redis_password_file, NULL);

	DefineCustomStringVariable("meetcache.redis_sentinel_password_file",
							   "File whose first line is the password meetcache sends to the sentinels of a redis-sentinel:// URL.",
							   "The same rules as meetcache.redis_password_file.",
							   &sentinel_password_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_sentinel_password_file, assign_sentinel_password_file, NULL);

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

	DefineCustomEnumVariable("meetcache.lookup_recheck",
							 "When a sync transaction's lookups are resolved again after its commit.",
							 "auto: only when a transaction writing a table they read committed "
							 "meanwhile; always: every time, by the drain.",
							 &mc_lookup_recheck,
							 MC_RECHECK_AUTO,
							 recheck_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

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

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = mc_emit_log;

	mc_pending_init();
	mc_guard_init();
	mc_rules_init();
	mc_recheck_init();
	if (process_shared_preload_libraries_in_progress)
	{
		mc_shared_request();
		if (!IsBinaryUpgrade)
			mc_worker_register();
	}
}
