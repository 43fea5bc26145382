/*
 * redis.c
 *	  The Redis protocol: a connection per endpoint (a stream of
 *	  transport.c, which owns the bytes: TCP, Unix socket or TLS), its
 *	  handshake, pipelined round trips under deadlines, the SQL functions'
 *	  command API, scripts, and the post-commit invalidation path.  This is
 *	  the only file that includes hiredis, and hiredis is used as a protocol
 *	  layer only (the SQL functions' command formatting and the reply
 *	  reader) over that stream.  Commands built here (RawBuf) are formatted
 *	  in place; the commit path's UNLINK pipeline goes into one buffer kept
 *	  from one transaction to the next, and its plain integer replies are
 *	  parsed in place: the first other reply of a round trip (an error, a
 *	  redirect) and everything after it go through hiredis' reader, so
 *	  errors are handled by the same code on every path.
 *
 * Connections: McConn is one endpoint's connection; the backend uses one
 * (conn), opened lazily for meetcache.redis_url.  Several McConns (Redis
 * Cluster's nodes, a sentinel then its master) take the same functions.
 * With a cluster (redis-cluster://) conn is unused: the slot map (its data
 * in cluster.c) is asked of the seed nodes with CLUSTER SLOTS, and each
 * master has its McConn in nodes[] (preallocated, opened lazily).  Every
 * command goes to the master of its key's slot, grouped into one pipeline
 * per master, the masters one after the other under the caller's one
 * deadline (cluster_run); -MOVED reloads the map and resends, -ASK resends
 * after ASKING, for MOVED_MAX rounds (each one counted in the stats).
 * -TRYAGAIN (a multi-key command whose keys a slot migration has split) is
 * sent again after a nap until the migration ends or the deadline passes;
 * the commit path's UNLINKs (a slot's keys with their lease keys, one
 * command) are split into single-name UNLINKs instead (cluster_unlink).
 * -CLUSTERDOWN and a master that does not answer are 08006, and make the
 * map stale.  When meetcache.redis_url changes, the next use of any
 * connection closes the old URL's nodes.
 * With sentinels (redis-sentinel://) every connect first asks them, in
 * order, where the master is (through `sentinel`, closed again at once,
 * or at its next use after a cancel), then connects there and checks
 * ROLE.  A failover ends the connection: lost, or the master answering
 * -READONLY or -MASTERDOWN (08006, like a Redis that does not answer), so
 * the next connect asks again.  Every step runs under the caller's
 * deadline.
 *
 * Two kinds of callers:
 *	  - SQL functions (interruptible): every wait goes through the process
 *		latch, so statement_timeout and pg_cancel_backend work; failures are
 *		thrown as ERRORs, after hiredis replies are freed.
 *	  - the commit callback (mc_redis_invalidate): never throws, never
 *		pallocs, does no file I/O of its own (a connection it opens uses the
 *		password file's copy as last read); it waits with poll() against its
 *		own deadline (interrupts are held there) and reports failure through
 *		an McErr, which tells a Redis that does not answer from a job too
 *		long for its deadline.
 * After any timeout, cancel or protocol error the connection is out of step
 * and is dropped; the next use reconnects.
 */
#include "postgres.h"

#include <hiredis/hiredis.h>

#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "meetcache.h"
#include "transport.h"

typedef struct McConn
{
	McStream	stream;
	redisReader *reader;
	bool		busy;			/* an exchange was cut short: out of step */
	uint64		generation;		/* mc_url_generation at connect time */
	bool		sentinel_master;	/* the master that sentinels named */
	bool		demoted;		/* ... and it answered as a replica does */
	int			node;			/* a cluster master's index, else -1 */
	McEndpoint	ep;				/* a cluster master: where it was opened */
} McConn;

#define MC_CONN_INIT {MC_STREAM_INIT, NULL, false, 0, false, false, -1}

static McConn conn = MC_CONN_INIT;	/* the backend's, to meetcache.redis_url */
static McConn sentinel = MC_CONN_INIT;	/* open only while asking one */
static McConn probe = MC_CONN_INIT; /* open only while asking a cluster node */
static McConn nodes[MC_CLUSTER_MAX_NODES];	/* a cluster's masters, by map index */
static bool nodes_ready = false;
static char master_seen[sizeof(conn.stream.name)];	/* the last master found */
static McConn *cur = &conn;		/* the connection of the last round trip, for messages */

#define MOVED_MAX 5				/* rounds of redirects one job follows */
#define TRYAGAIN_NAP_MS 10		/* between rounds that got -TRYAGAIN */

/* where replies of a round trip go; returns false to report a bad reply */
typedef bool (*reply_cb) (redisReply *r, void *arg, McErr *err);

/* where a round trip's plain integer replies go, parsed in place */
typedef void (*int_cb) (long long n, void *arg);

/* "Redis said: <its error text>", as a printable excerpt */
static void
set_said(McErr *err, redisReply *r)
{
	int			n = snprintf(err->detail, sizeof(err->detail), "Redis said: ");

	mc_excerpt(err->detail + n, sizeof(err->detail) - n, r->str, (int) r->len);
}

static void
conn_close(McConn *c)
{
	mc_stream_close(&c->stream);
	if (c->reader)
	{
		redisReaderFree(c->reader);
		c->reader = NULL;
	}
	c->busy = false;
	c->demoted = false;
}

/*
 * A master that sentinels named refuses writes (it was demoted to a
 * replica) or serves no data (a replica cut off from its master): a
 * failover, which the next connection asks the sentinels about.
 */
static void
check_failover_reply(McConn *c, redisReply *r, McErr *err)
{
	if (!c->sentinel_master || r->type != REDIS_REPLY_ERROR ||
		(strncmp(r->str, "READONLY ", 9) != 0 && strncmp(r->str, "MASTERDOWN ", 11) != 0))
		return;
	if (!c->demoted)
	{
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "redis at %s is no longer the master of \"%s\"",
				   c->stream.name, mc_url->master_name);
		set_said(err, r);
	}
	c->demoted = true;
}

/*
 * One round trip's replies: who takes them and how many came.  With ints
 * set, plain integer replies (":N\r\n", UNLINK's) are parsed in place and
 * handed to it; the first other reply (an error, a redirect) and all that
 * follows it in the round trip go through hiredis' reader and cb.
 */
typedef struct Replies
{
	int			want;
	int			received;
	int_cb		ints;
	reply_cb	cb;
	void	   *arg;
	bool		ok;				/* no callback reported a bad reply */
	bool	   *got_any;		/* set when a reply arrives */
	size_t		kept;			/* a split integer reply, at buf's start */
	char		buf[16384];
} Replies;

#define INT_DIGITS_MAX 18		/* more: through hiredis, which checks range */

/*
 * Take the plain integer replies at p in place; returns where the first
 * other reply starts, or end.  A reply split by the end of the read is
 * kept for the next one.
 */
static const char *
take_ints(Replies *rp, const char *p, const char *end)
{
	while (p < end && rp->received < rp->want && *p == ':')
	{
		const char *q = p + 1;
		const char *digits;
		bool		neg = (q < end && *q == '-');
		long long	v = 0;

		q += neg;
		digits = q;
		while (q < end && *q >= '0' && *q <= '9' && q - digits < INT_DIGITS_MAX)
			v = v * 10 + (*q++ - '0');
		if (q == end || (q + 1 == end && *q == '\r'))
		{
			rp->kept = end - p;
			memmove(rp->buf, p, rp->kept);
			return end;
		}
		if (q == digits || q[0] != '\r' || q[1] != '\n')
			break;
		rp->ints(neg ? -v : v, rp->arg);
		rp->received++;
		*rp->got_any = true;
		p = q + 2;
	}
	return p;
}

/* read what the stream has and hand out complete replies */
static bool
read_replies(McConn *c, Replies *rp, McErr *err)
{
	ssize_t		n = mc_stream_recv(&c->stream, rp->buf + rp->kept,
								   sizeof(rp->buf) - rp->kept, err);
	const char *p = rp->buf;
	const char *end;

	if (n < 0)
		return false;
	if (n == 0)
		return true;			/* nothing yet */
	end = rp->buf + rp->kept + n;
	rp->kept = 0;
	if (rp->ints)
		p = take_ints(rp, p, end);
	if (p == end)
		return true;
	rp->ints = NULL;			/* the rest of the round trip: hiredis */
	if (redisReaderFeed(c->reader, p, end - p) != REDIS_OK)
	{
		mc_err_set(err, ERRCODE_PROTOCOL_VIOLATION,
				   "could not parse the reply of redis at %s", c->stream.name);
		return false;
	}
	while (rp->received < rp->want)
	{
		void	   *reply = NULL;

		if (redisReaderGetReply(c->reader, &reply) != REDIS_OK)
		{
			mc_err_set(err, ERRCODE_PROTOCOL_VIOLATION,
					   "could not parse the reply of redis at %s: %s",
					   c->stream.name, c->reader->errstr);
			return false;
		}
		if (reply == NULL)
			break;
		*rp->got_any = true;
		rp->received++;
		check_failover_reply(c, (redisReply *) reply, err);
		if (!rp->cb((redisReply *) reply, rp->arg, err))
			rp->ok = false;		/* keep reading: the stream stays in step */
	}
	return true;
}

/*
 * Send buf and collect exactly nreplies replies, reading while writing so
 * that neither side's buffers fill up.  Each reply is handed to cb, which
 * owns it, or with ints set a plain integer reply to ints (see Replies).
 * On failure fills err and returns false; *got_any tells whether any
 * reply arrived (a stale connection fails before the first one).
 */
static bool
roundtrip_ints(McConn *c, const char *buf, size_t len, int nreplies, int_cb ints,
			   reply_cb cb, void *arg, TimestampTz deadline, bool interruptible,
			   McErr *err, bool *got_any)
{
	size_t		sent = 0;
	Replies		rp;
	bool		first = true;

	rp.want = nreplies;
	rp.received = 0;
	rp.ints = ints;
	rp.cb = cb;
	rp.arg = arg;
	rp.ok = true;
	rp.got_any = got_any;
	rp.kept = 0;
	*got_any = false;
	c->busy = true;
	cur = c;
	while (rp.received < nreplies)
	{
		int			want = MC_WAIT_READ;
		int			ready;

		if (sent < len)
			want |= MC_WAIT_WRITE;

		/*
		 * The socket is almost always writable: send before polling.  No
		 * reply can be there before the request went: read only when the
		 * poll says so.
		 */
		if (first)
			ready = MC_WAIT_WRITE;
		else
			ready = mc_stream_wait(&c->stream, want, deadline, interruptible);
		first = false;
		if (ready == 0)
		{
			mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
					   "redis at %s did not answer within the deadline", c->stream.name);
			return false;
		}
		if ((ready & MC_WAIT_WRITE) && sent < len)
		{
			ssize_t		n = mc_stream_send(&c->stream, buf + sent, len - sent, err);

			if (n < 0)
				return false;
			sent += n;
		}
		if ((ready & MC_WAIT_READ) && !read_replies(c, &rp, err))
			return false;
	}
	if (c->demoted)
		return false;			/* still busy: the connection is dropped */
	c->busy = false;
	return rp.ok;
}

static bool
roundtrip(McConn *c, const char *buf, size_t len, int nreplies, reply_cb cb,
		  void *arg, TimestampTz deadline, bool interruptible, McErr *err,
		  bool *got_any)
{
	return roundtrip_ints(c, buf, len, nreplies, NULL, cb, arg, deadline,
						  interruptible, err, got_any);
}

/* ---- connection and handshake ---- */

/* what a connection is for: the handshake that opens it differs */
typedef enum HandshakeKind
{
	HS_SERVER,					/* the Redis of a redis_url without sentinels */
	HS_MASTER,					/* the master sentinels named: ROLE is checked */
	HS_SENTINEL					/* a sentinel, asked where the master is */
} HandshakeKind;

typedef struct HandshakeState
{
	/* what to send */
	HandshakeKind kind;
	const char *user;
	int			db;
	const char *master_name;
	/* the replies */
	int			idx;
	int			auth_idx;
	int			select_idx;
	int			setname_idx;
	int			role_idx;
	int			ask_idx;
	const char *endpoint;
	McEndpoint	master;			/* HS_SENTINEL: where it says the master is */
	bool		no_master;		/* HS_SENTINEL: it knows no such master */
} HandshakeState;

static void
handshake_init(HandshakeState *hs, HandshakeKind kind, const char *user, int db,
			   const char *master_name)
{
	memset(hs, 0, sizeof(*hs));
	hs->kind = kind;
	hs->user = user;
	hs->db = db;
	hs->master_name = master_name;
	hs->auth_idx = hs->select_idx = hs->setname_idx = hs->role_idx = hs->ask_idx = -1;
}

/* a host name or IP address a sentinel may give: fits, and only name characters */
static bool
valid_host(const redisReply *h, size_t size)
{
	return h->type == REDIS_REPLY_STRING && h->len > 0 && h->len < size &&
		strspn(h->str, "0123456789abcdefghijklmnopqrstuvwxyz"
			   "ABCDEFGHIJKLMNOPQRSTUVWXYZ.-:_") == h->len;
}

/* SENTINEL get-master-addr-by-name: [host, port], or nil for an unknown name */
static bool
master_addr_reply(redisReply *r, HandshakeState *hs, McErr *err)
{
	long		port = 0;

	if (r->type == REDIS_REPLY_NIL)
	{
		hs->no_master = true;
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "redis sentinel at %s knows no master named \"%s\"",
				   hs->endpoint, hs->master_name);
		return false;
	}
	if (r->type == REDIS_REPLY_ERROR)
	{
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "redis sentinel at %s refused SENTINEL get-master-addr-by-name", hs->endpoint);
		set_said(err, r);
		return false;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
		valid_host(r->element[0], sizeof(hs->master.host)) &&
		r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len > 0 &&
		r->element[1]->len < 6 &&
		strspn(r->element[1]->str, "0123456789") == r->element[1]->len)
		port = strtol(r->element[1]->str, NULL, 10);
	if (port < 1 || port > 65535)
	{
		mc_err_set(err, ERRCODE_PROTOCOL_VIOLATION,
				   "redis sentinel at %s sent an unexpected master address", hs->endpoint);
		return false;
	}
	memcpy(hs->master.host, r->element[0]->str, r->element[0]->len + 1);
	hs->master.port = (int) port;
	return true;
}

/* ROLE: the first element says "master"; a user refused ROLE is not checked */
static bool
role_reply(redisReply *r, HandshakeState *hs, McErr *err)
{
	if (r->type == REDIS_REPLY_ERROR)
		return true;			/* ACLs may refuse it: READONLY still tells */
	if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
		r->element[0]->type == REDIS_REPLY_STRING &&
		strcmp(r->element[0]->str, "master") == 0)
		return true;
	mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
			   "redis at %s, named by the sentinels, is not the master of \"%s\"",
			   hs->endpoint, hs->master_name);
	snprintf(err->detail, sizeof(err->detail), "Its role is \"%s\".",
			 r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
			 r->element[0]->type == REDIS_REPLY_STRING &&
			 strspn(r->element[0]->str, "abcdefghijklmnopqrstuvwxyz") == r->element[0]->len &&
			 r->element[0]->len < 32 ? r->element[0]->str : "unknown");
	strlcpy(err->hint, "A failover may be under way: the next connection asks the sentinels again.",
			sizeof(err->hint));
	return false;
}

static bool
handshake_cb(redisReply *r, void *arg, McErr *err)
{
	HandshakeState *hs = (HandshakeState *) arg;
	const char *what = hs->kind == HS_SENTINEL ? "redis sentinel" : "redis";
	bool		ok = true;

	if (err->msg[0] != '\0')
		ok = r->type != REDIS_REPLY_ERROR;	/* the first failure is reported */
	else if (hs->idx == hs->ask_idx)
		ok = master_addr_reply(r, hs, err);
	else if (hs->idx == hs->role_idx)
		ok = role_reply(r, hs, err);
	else if (r->type == REDIS_REPLY_ERROR && hs->idx == hs->setname_idx)
		ok = true;				/* CLIENT may be refused by ACLs or proxies */
	else if (r->type == REDIS_REPLY_ERROR)
	{
		if (hs->idx == hs->auth_idx)
			mc_err_set(err, ERRCODE_INVALID_PASSWORD,
					   "%s at %s refused the credentials", what, hs->endpoint);
		else if (hs->idx == hs->select_idx)
			mc_err_set(err, ERRCODE_INVALID_PARAMETER_VALUE,
					   "%s at %s refused to select database %d", what, hs->endpoint, hs->db);
		else
			mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
					   "%s at %s refused the connection handshake", what, hs->endpoint);
		set_said(err, r);
		ok = false;
	}
	hs->idx++;
	freeReplyObject(r);
	return ok;
}

/*
 * Commands formatted (RESP) into a malloc'd buffer, without a copy per
 * command.  The handshake's AUTH carries the password: no copy is freed
 * unwiped.
 */
typedef struct RawBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} RawBuf;

#define RESP_HEADER_MAX 24		/* '*' or '$', a 64-bit count, CRLF */

/* room for n more bytes; false when out of memory */
static bool
rawbuf_reserve(RawBuf *b, size_t n)
{
	if (b->len + n > b->cap)
	{
		size_t		ncap = Max(b->cap * 2, b->len + n + 4096);
		char	   *nd = malloc(ncap);

		if (nd == NULL)
			return false;
		if (b->data)
		{
			memcpy(nd, b->data, b->len);
			explicit_bzero(b->data, b->len);
			free(b->data);
		}
		b->data = nd;
		b->cap = ncap;
	}
	return true;
}

/* append bytes already formatted */
static bool
rawbuf_put(RawBuf *b, const char *data, size_t n)
{
	if (!rawbuf_reserve(b, n))
		return false;
	memcpy(b->data + b->len, data, n);
	b->len += n;
	return true;
}

/* a RESP header ('*' count, '$' length) into room reserved for it */
static void
rawbuf_header(RawBuf *b, char kind, size_t n)
{
	char	   *p = b->data + b->len;

	*p++ = kind;
	p += pg_ulltoa_n((uint64) n, p);
	*p++ = '\r';
	*p++ = '\n';
	b->len = p - b->data;
}

/*
 * One argument of a command.  It may have been written into the buffer's
 * reserved room, RESP_HEADER_MAX bytes past its end (see add_unlink).
 */
static bool
rawbuf_arg(RawBuf *b, const char *arg, size_t n)
{
	if (!rawbuf_reserve(b, RESP_HEADER_MAX + n + 2))
		return false;
	rawbuf_header(b, '$', n);
	memmove(b->data + b->len, arg, n);
	b->data[b->len + n] = '\r';
	b->data[b->len + n + 1] = '\n';
	b->len += n + 2;
	return true;
}

/* a command's header: the number of arguments that follow */
static bool
rawbuf_cmd(RawBuf *b, int argc)
{
	if (!rawbuf_reserve(b, RESP_HEADER_MAX))
		return false;
	rawbuf_header(b, '*', argc);
	return true;
}

static bool
rawbuf_add(RawBuf *b, int argc, const char **argv, const size_t *lens)
{
	bool		ok = rawbuf_cmd(b, argc);

	for (int i = 0; ok && i < argc; i++)
		ok = rawbuf_arg(b, argv[i], lens[i]);
	return ok;
}

/*
 * Format the handshake: AUTH (a named user is always authenticated,
 * without a password file too), then for a Redis server SELECT and CLIENT
 * SETNAME, then ROLE for a master named by sentinels, SENTINEL
 * get-master-addr-by-name for a sentinel, or else the PING that proves
 * the server answers (a frozen Redis still accepts connections).  Returns
 * the number of commands, or -1 when out of memory.  The buffer holds the
 * password: the caller wipes it.
 */
static int
handshake_format(RawBuf *b, HandshakeState *hs, const char *password)
{
	const char *argv[3];
	size_t		lens[3];
	char		name[64];
	char		dbstr[16];
	int			ncmds = 0;
	bool		ok = true;

	if (hs->user[0] || password[0])
	{
		int			argc = 0;

		argv[argc] = "AUTH";
		lens[argc++] = 4;
		if (hs->user[0])
		{
			argv[argc] = hs->user;
			lens[argc++] = strlen(hs->user);
		}
		argv[argc] = password;
		lens[argc++] = strlen(password);
		hs->auth_idx = ncmds++;
		ok &= rawbuf_add(b, argc, argv, lens);
	}
	if (hs->kind == HS_SENTINEL)
	{
		argv[0] = "SENTINEL";
		lens[0] = 8;
		argv[1] = "get-master-addr-by-name";
		lens[1] = 23;
		argv[2] = hs->master_name;
		lens[2] = strlen(hs->master_name);
		hs->ask_idx = ncmds++;
		ok &= rawbuf_add(b, 3, argv, lens);
		return ok ? ncmds : -1;
	}
	if (hs->db != 0)
	{
		snprintf(dbstr, sizeof(dbstr), "%d", hs->db);
		argv[0] = "SELECT";
		lens[0] = 6;
		argv[1] = dbstr;
		lens[1] = strlen(dbstr);
		hs->select_idx = ncmds++;
		ok &= rawbuf_add(b, 2, argv, lens);
	}
	snprintf(name, sizeof(name), "meetcache-%d", MyProcPid);
	argv[0] = "CLIENT";
	lens[0] = 6;
	argv[1] = "SETNAME";
	lens[1] = 7;
	argv[2] = name;
	lens[2] = strlen(name);
	hs->setname_idx = ncmds++;
	ok &= rawbuf_add(b, 3, argv, lens);
	argv[0] = hs->kind == HS_MASTER ? "ROLE" : "PING";
	lens[0] = 4;
	if (hs->kind == HS_MASTER)
		hs->role_idx = ncmds;
	ncmds++;
	ok &= rawbuf_add(b, 1, argv, lens);
	return ok ? ncmds : -1;
}

/* the handshake in one round trip; the password is wiped whatever happens */
static bool
handshake_run(McConn *c, HandshakeState *hs, const char *password,
			  TimestampTz deadline, bool interruptible, McErr *err)
{
	RawBuf		b = {NULL, 0, 0};
	int			ncmds;
	volatile bool ok = false;
	bool		got_any;

	hs->endpoint = c->stream.name;
	ncmds = handshake_format(&b, hs, password);
	PG_TRY();
	{
		if (ncmds < 0)
			mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "out of memory formatting the redis handshake");
		else
		{
			err->msg[0] = '\0';
			ok = roundtrip(c, b.data, b.len, ncmds, handshake_cb, hs, deadline,
						   interruptible, err, &got_any);
		}
	}
	PG_FINALLY();
	{
		if (b.data)
		{
			explicit_bzero(b.data, b.len);
			free(b.data);
		}
	}
	PG_END_TRY();
	return ok;
}

/* the connect deadline, which never stretches the caller's */
static TimestampTz
connect_deadline(TimestampTz outer_deadline)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   mc_connect_timeout);

	return Min(deadline, outer_deadline);
}

/*
 * Open c to ep and run the handshake hs describes.  Never throws unless
 * interruptible and interrupted; c is then left busy, and closed by its
 * next use.
 */
static bool
conn_connect(McConn *c, const McEndpoint *ep, HandshakeState *hs,
			 const char *password, TimestampTz deadline, bool interruptible,
			 McErr *err)
{
	conn_close(c);
	/* until the handshake succeeds the connection is unusable, even if a
	 * cancel interrupts us half way: the next use starts over */
	c->busy = true;
	if (!mc_stream_open(&c->stream, ep, deadline, interruptible, err))
	{
		conn_close(c);
		return false;
	}
	c->busy = true;
	c->reader = redisReaderCreate();
	if (c->reader == NULL)
	{
		mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "out of memory creating a redis reply reader");
		conn_close(c);
		return false;
	}
	if (!handshake_run(c, hs, password, deadline, interruptible, err))
	{
		conn_close(c);
		return false;
	}
	c->busy = false;
	return true;
}

/*
 * Ask the sentinels of url, in order, where its master is: the first that
 * names it wins.  Each gets the connect deadline, never past the caller's.
 * Fails (08006) when none answers, naming those tried, or when those that
 * answered know no such master.
 */
static bool
sentinel_find_master(const McRedisUrl *url, McEndpoint *master, bool interruptible,
					 TimestampTz outer_deadline, McErr *err)
{
	const char *password = mc_redis_password(MC_PASSWORD_SENTINEL,
											 interruptible || IsBackgroundWorker, err);
	char		tried[256] = "";
	int			len = 0;
	bool		unknown = false;
	McErr		last;

	if (password == NULL)
		return false;
	memset(&last, 0, sizeof(last));
	for (int i = 0; i < url->nsentinels && mc_ms_left(outer_deadline) > 0; i++)
	{
		HandshakeState hs;
		char		name[sizeof(sentinel.stream.name)];
		bool		found;

		handshake_init(&hs, HS_SENTINEL, "", 0, url->master_name);
		found = conn_connect(&sentinel, &url->sentinels[i], &hs, password,
							 connect_deadline(outer_deadline), interruptible, &last);
		conn_close(&sentinel);
		if (found)
		{
			*master = hs.master;
			master->tls = url->ep.tls;
			return true;
		}
		unknown |= hs.no_master;
		mc_endpoint_name(&url->sentinels[i], name, sizeof(name));
		if (len < (int) sizeof(tried))
			len += snprintf(tried + len, sizeof(tried) - len, "%s%s", i ? ", " : "", name);
	}
	if (unknown)
	{
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "the redis sentinels know no master named \"%s\"", url->master_name);
		snprintf(err->detail, sizeof(err->detail), "Sentinels asked: %s.", tried);
		strlcpy(err->hint, "Check the master name in meetcache.redis_url against the sentinels' \"sentinel monitor\" configuration.",
				sizeof(err->hint));
		return false;
	}
	mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
			   "no redis sentinel of master \"%s\" answered (tried %s)",
			   url->master_name, tried[0] ? tried : "none before the deadline");
	if (last.msg[0] == '\0')
		strlcpy(err->detail, "The deadline passed.", sizeof(err->detail));
	else
	{
		int			n = snprintf(err->detail, sizeof(err->detail), "Last error: %s%s%s",
								 last.msg, last.detail[0] ? ": " : "", last.detail);

		n = Min(n, (int) sizeof(err->detail) - 1);
		if (n > 0 && err->detail[n - 1] != '.' && n + 1 < (int) sizeof(err->detail))
			strcpy(err->detail + n, ".");
	}
	return false;
}

/*
 * Open the connection to meetcache.redis_url (with sentinels: to the
 * master they name, asked afresh on every connect) and run the handshake.
 * The sentinels, then the master, get the connect deadline each, never
 * past outer_deadline.  Never throws unless interruptible and interrupted.
 */
static bool
conn_open(McConn *c, bool interruptible, TimestampTz outer_deadline, McErr *err)
{
	const char *password;
	const McEndpoint *ep;
	McEndpoint	master;
	HandshakeState hs;

	conn_close(c);
	c->busy = true;
	err->msg[0] = '\0';
	if (mc_url == NULL)
	{
		mc_err_set(err, ERRCODE_CONFIG_FILE_ERROR, "meetcache.redis_url is not set");
		return false;
	}
	/*
	 * The commit path (a backend's non-interruptible exchanges) does no
	 * file I/O: it uses the password as last read.  SQL functions and the
	 * workers look at the file first.
	 */
	password = mc_redis_password(MC_PASSWORD_REDIS, interruptible || IsBackgroundWorker, err);
	if (password == NULL)
		return false;
	ep = &mc_url->ep;
	if (c->node >= 0)
	{
		c->ep = *mc_cluster_endpoint(c->node);
		ep = &c->ep;
	}
	else if (mc_url->nsentinels > 0)
	{
		if (!sentinel_find_master(mc_url, &master, interruptible, outer_deadline, err))
			return false;
		ep = &master;
	}
	handshake_init(&hs, mc_url->nsentinels > 0 ? HS_MASTER : HS_SERVER,
				   mc_url->user, mc_url->db, mc_url->master_name);
	c->sentinel_master = mc_url->nsentinels > 0;
	if (!conn_connect(c, ep, &hs, password, connect_deadline(outer_deadline),
					  interruptible, err))
		return false;
	c->generation = mc_url_generation;
	if (c->sentinel_master && strcmp(master_seen, c->stream.name) != 0)
	{
		/* a failover this process lived through; never logged by a commit */
		if (master_seen[0] && (interruptible || IsBackgroundWorker))
			ereport(LOG,
					(errmsg("meetcache: the redis sentinels name %s as the master of \"%s\", no longer %s",
							c->stream.name, mc_url->master_name, master_seen)));
		strlcpy(master_seen, c->stream.name, sizeof(master_seen));
	}
	return true;
}

/* a new meetcache.redis_url: close the nodes opened for the old one */
static void
close_stale_nodes(void)
{
	static uint64 checked = 0;

	if (checked == mc_url_generation || !nodes_ready)
		return;
	checked = mc_url_generation;
	for (int i = 0; i < MC_CLUSTER_MAX_NODES; i++)
		if (mc_stream_is_open(&nodes[i].stream) && nodes[i].generation != mc_url_generation)
			conn_close(&nodes[i]);
}

/* make sure a usable connection exists */
static bool
conn_ensure(McConn *c, bool interruptible, TimestampTz deadline, McErr *err,
			bool *fresh)
{
	*fresh = false;
	close_stale_nodes();
	if (mc_stream_is_open(&c->stream) &&
		(c->busy || c->generation != mc_url_generation ||
		 (c->node >= 0 && memcmp(&c->ep, mc_cluster_endpoint(c->node), sizeof(McEndpoint)) != 0)))
		conn_close(c);
	if (mc_stream_is_open(&c->stream))
		return true;
	*fresh = true;
	return conn_open(c, interruptible, deadline, err);
}

/*
 * One exchange on a connection, with a retry: a reused connection that
 * fails before any reply (the server restarted since) is reopened once.
 * Timeouts are not retried.  A cluster master that does not answer makes
 * the slot map stale: a failover may have moved its slots.
 */
static bool
exchange_ints(McConn *c, const char *buf, size_t len, int nreplies, int_cb ints,
			  reply_cb cb, void *arg, TimestampTz deadline, bool interruptible,
			  McErr *err)
{
	bool		fresh;
	bool		got_any;

	for (int attempt = 0; attempt < 2; attempt++)
	{
		if (!conn_ensure(c, interruptible, deadline, err, &fresh))
			break;
		err->msg[0] = '\0';
		if (roundtrip_ints(c, buf, len, nreplies, ints, cb, arg, deadline,
						   interruptible, err, &got_any))
			return true;
		if (!c->busy)
			return false;		/* in step: the replies said no */
		conn_close(c);
		if (fresh || got_any || mc_ms_left(deadline) <= 0 ||
			err->sqlstate == ERRCODE_PROTOCOL_VIOLATION)
			break;
	}
	if (c->node >= 0)
		mc_cluster_map_stale();
	return false;
}

static bool
exchange(McConn *c, const char *buf, size_t len, int nreplies, reply_cb cb,
		 void *arg, TimestampTz deadline, bool interruptible, McErr *err)
{
	return exchange_ints(c, buf, len, nreplies, NULL, cb, arg, deadline,
						 interruptible, err);
}

/* ---- Redis Cluster: the slot map and routing (the map itself: cluster.c) ---- */

bool
mc_redis_cluster(void)
{
	return mc_url != NULL && mc_url->nseeds > 0;
}

/* an IP address or host name and a port from a node's reply */
static bool
node_endpoint(const redisReply *host, long long port, const char *asked, McEndpoint *ep)
{
	memset(ep, 0, sizeof(*ep));
	ep->tls = mc_url->ep.tls;
	if (port < 1 || port > 65535)
		return false;
	ep->port = (int) port;
	/* an empty or "?" host means the node asked: its own address is unknown to it */
	if (host->type == REDIS_REPLY_STRING && host->len > 0 && strcmp(host->str, "?") != 0)
	{
		if (!valid_host(host, sizeof(ep->host)))
			return false;
		memcpy(ep->host, host->str, host->len + 1);
	}
	else
		strlcpy(ep->host, asked, sizeof(ep->host));
	return true;
}

/* CLUSTER SLOTS: [[first, last, [host, port, id...], replicas...]...] */
static bool
slots_cb(redisReply *r, void *arg, McErr *err)
{
	const McEndpoint *asked = (const McEndpoint *) arg;
	bool		ok = r->type == REDIS_REPLY_ARRAY;

	if (r->type == REDIS_REPLY_ERROR)
	{
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "redis at %s refused CLUSTER SLOTS", cur->stream.name);
		set_said(err, r);
		strlcpy(err->hint, "A redis-cluster:// URL must name nodes of a Redis Cluster.",
				sizeof(err->hint));
		freeReplyObject(r);
		return false;
	}
	mc_cluster_build_begin();
	for (size_t i = 0; ok && i < r->elements; i++)
	{
		redisReply *e = r->element[i];
		McEndpoint	ep;
		int			node;

		ok = e->type == REDIS_REPLY_ARRAY && e->elements >= 3 &&
			e->element[0]->type == REDIS_REPLY_INTEGER &&
			e->element[1]->type == REDIS_REPLY_INTEGER &&
			e->element[2]->type == REDIS_REPLY_ARRAY && e->element[2]->elements >= 2 &&
			e->element[2]->element[1]->type == REDIS_REPLY_INTEGER &&
			node_endpoint(e->element[2]->element[0], e->element[2]->element[1]->integer,
						  asked->host, &ep);
		if (ok)
		{
			node = mc_cluster_build_node(&ep);
			ok = node >= 0 &&
				mc_cluster_build_slots((int) e->element[0]->integer,
									   (int) e->element[1]->integer, node);
		}
	}
	if (!ok)
		mc_err_set(err, ERRCODE_PROTOCOL_VIOLATION,
				   "redis at %s sent an unexpected CLUSTER SLOTS reply", cur->stream.name);
	else if (!mc_cluster_build_end())
	{
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "redis cluster node %s serves not every slot yet", cur->stream.name);
		ok = false;
	}
	freeReplyObject(r);
	return ok;
}

/*
 * Ask the seed nodes, in order, then the masters of the last map, for the
 * slot map: the first complete answer is installed.  Each gets the connect
 * deadline, never past the caller's.  No palloc, no throw unless
 * interruptible and interrupted.
 */
static bool
cluster_load_map(bool interruptible, TimestampTz deadline, McErr *err)
{
	static const char cmd[] = "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";
	static McEndpoint ask[MC_MAX_SEEDS + MC_CLUSTER_MAX_NODES];
	const char *password;
	int			nask = 0;
	McErr		last;

	if (!nodes_ready)
	{
		for (int i = 0; i < MC_CLUSTER_MAX_NODES; i++)
		{
			nodes[i] = (McConn) MC_CONN_INIT;
			nodes[i].node = i;
		}
		nodes_ready = true;
	}
	password = mc_redis_password(MC_PASSWORD_REDIS, interruptible || IsBackgroundWorker, err);
	if (password == NULL)
		return false;
	for (int i = 0; i < mc_url->nseeds; i++)
		ask[nask++] = mc_url->seeds[i];
	for (int i = 0; i < mc_cluster_nnodes(); i++)
		ask[nask++] = *mc_cluster_endpoint(i);
	memset(&last, 0, sizeof(last));
	for (int i = 0; i < nask && mc_ms_left(deadline) > 0; i++)
	{
		HandshakeState hs;
		bool		got_any;
		bool		ok;

		handshake_init(&hs, HS_SERVER, mc_url->user, 0, "");
		ok = conn_connect(&probe, &ask[i], &hs, password, connect_deadline(deadline),
						  interruptible, &last) &&
			roundtrip(&probe, cmd, sizeof(cmd) - 1, 1, slots_cb, &ask[i], deadline,
					  interruptible, &last, &got_any);
		conn_close(&probe);
		if (ok)
			return true;
		if (last.sqlstate == ERRCODE_INVALID_PASSWORD)
			break;				/* the others want the same credentials */
	}
	*err = last;
	if (err->msg[0] == '\0')
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "no node of the redis cluster answered before the deadline");
	if (err->sqlstate != ERRCODE_INVALID_PASSWORD)
		err->sqlstate = ERRCODE_CONNECTION_FAILURE;
	return false;
}

/* where a command goes: the master of its slot, a given master, or the first */
static int
route_node(int route)
{
	if (route >= 0)
		return mc_cluster_node_of(route);
	if (route == MC_ROUTE_ANY)
		return 0;
	return -2 - route;
}

/* a reply of a routed run: which command it answers */
typedef bool (*cmd_cb) (redisReply *r, int cmd, void *arg, McErr *err);

typedef struct RouteState
{
	int		   *order;			/* reply i answers command order[i]; -1: ASKING */
	int			pos;
	int		   *redo;			/* commands redirected, sent again */
	int			nredo;
	int		   *ask;			/* the master to ASK for a command, else -1 */
	bool		redirects;		/* a command of this round was redirected */
	bool		tryagain;		/* ... or got -TRYAGAIN */
	bool		retry_tryagain; /* -TRYAGAIN: again after a nap, else to cb */
	McErr		tryagain_err;	/* the error if the deadline passes so */
	cmd_cb		cb;
	void	   *arg;
} RouteState;

/* -MOVED slot host:port or -ASK slot host:port: the command goes again */
static bool
redirected(redisReply *r, int cmd, RouteState *st)
{
	bool		is_ask = strncmp(r->str, "ASK ", 4) == 0;
	const char *addr;
	const char *colon;
	McEndpoint	ep;

	if (!is_ask && strncmp(r->str, "MOVED ", 6) != 0)
		return false;
	mc_stat_add(is_ask ? MC_STAT_ASK_REDIRECTS : MC_STAT_MOVED_REDIRECTS, 1);
	st->redirects = true;
	st->redo[st->nredo++] = cmd;
	st->ask[cmd] = -1;
	addr = strchr(r->str + (is_ask ? 4 : 6), ' ');
	colon = addr ? strrchr(addr, ':') : NULL;
	memset(&ep, 0, sizeof(ep));
	ep.tls = mc_url->ep.tls;
	if (is_ask && colon && colon - addr - 1 < (int) sizeof(ep.host))
	{
		memcpy(ep.host, addr + 1, colon - addr - 1);
		ep.port = atoi(colon + 1);
		st->ask[cmd] = mc_cluster_find(&ep);
	}
	/* MOVED, or an ASK to a master the map does not know: ask the cluster */
	if (st->ask[cmd] < 0)
		mc_cluster_map_stale();
	return true;
}

static bool
route_cb(redisReply *r, void *arg, McErr *err)
{
	RouteState *st = (RouteState *) arg;
	int			cmd = st->order[st->pos++];

	if (cmd < 0 || (r->type == REDIS_REPLY_ERROR && redirected(r, cmd, st)))
	{
		freeReplyObject(r);		/* ASKING's +OK, or the redirect */
		return true;
	}
	if (st->retry_tryagain && r->type == REDIS_REPLY_ERROR &&
		strncmp(r->str, "TRYAGAIN", 8) == 0)
	{
		/* the same master again (or the one it ASKed for), after a nap */
		mc_err_set(&st->tryagain_err, ERRCODE_CONNECTION_FAILURE,
				   "the redis cluster at %s cannot serve the command while its slot migrates",
				   cur->stream.name);
		set_said(&st->tryagain_err, r);
		st->tryagain = true;
		st->redo[st->nredo++] = cmd;
		freeReplyObject(r);
		return true;
	}
	if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "CLUSTERDOWN", 11) == 0)
	{
		if (err->msg[0] == '\0')
		{
			mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
					   "the redis cluster at %s cannot serve the command now", cur->stream.name);
			set_said(err, r);
		}
		mc_cluster_map_stale();
		freeReplyObject(r);
		return false;
	}
	return st->cb(r, cmd, st->arg, err);
}

/*
 * Run ncmds commands (command i is buf[start[i]..start[i+1]), the last
 * ending at len) on a cluster: grouped by master, one pipeline per master,
 * one after the other under the one deadline.  Redirected commands go
 * again (MOVED: to the master of a reloaded map; ASK: after ASKING), for
 * at most MOVED_MAX rounds; with retry_tryagain, those that got -TRYAGAIN
 * go again after a nap, until the deadline.  Every other reply goes to cb.
 * No palloc; no throw unless interruptible and interrupted.
 */
static bool
cluster_run(const char *buf, size_t len, const int *start, const int *route, int ncmds,
			cmd_cb cb, void *arg, TimestampTz deadline, bool interruptible,
			bool retry_tryagain, McErr *err)
{
	static const char asking[] = "*1\r\n$6\r\nASKING\r\n";
	int		   *todo = malloc(sizeof(int) * (7 * ncmds + 1));
	RawBuf	   *b = calloc(1, sizeof(RawBuf));	/* outlives a throw: not a local */
	int		   *ask;
	int		   *dest;
	int		   *asking_first;
	RouteState	st;
	volatile bool ok = true;

	if (todo == NULL || b == NULL)
	{
		free(todo);
		free(b);
		mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "out of memory routing redis commands");
		return false;
	}
	memset(&st, 0, sizeof(st));
	st.order = todo + ncmds;	/* a command and its ASKING: 2 * ncmds */
	st.redo = todo + 3 * ncmds;
	st.ask = ask = todo + 4 * ncmds;
	/* where todo[t] goes this round, fixed before a reply redirects it */
	dest = todo + 5 * ncmds;
	asking_first = todo + 6 * ncmds;
	st.cb = cb;
	st.arg = arg;
	st.retry_tryagain = retry_tryagain;
	PG_TRY();
	{
		int			ntodo = ncmds;

		for (int i = 0; i < ncmds; i++)
		{
			todo[i] = i;
			ask[i] = -1;
		}
		for (int round = 0; ok && ntodo > 0;)
		{
			if (round == MOVED_MAX)
			{
				mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
						   "the redis cluster kept redirecting commands");
				ok = false;
				break;
			}
			if (!mc_cluster_map_ready())
			{
				if (!cluster_load_map(interruptible, deadline, err))
				{
					ok = false;
					break;
				}
				for (int i = 0; i < ncmds; i++)
					ask[i] = -1;	/* the indexes changed */
			}
			for (int t = 0; t < ntodo; t++)
			{
				int			c = todo[t];

				if (route_node(route[c]) >= mc_cluster_nnodes())
				{
					mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
							   "the masters of the redis cluster changed during the command");
					ok = false;
				}
				asking_first[t] = ask[c] >= 0;
				dest[t] = ask[c] >= 0 ? ask[c] : route_node(route[c]);
			}
			st.nredo = 0;
			st.redirects = st.tryagain = false;
			for (int n = 0; ok && n < mc_cluster_nnodes(); n++)
			{
				int			nrep = 0;

				b->len = 0;
				for (int t = 0; ok && t < ntodo; t++)
				{
					int			c = todo[t];
					size_t		end = c + 1 < ncmds ? start[c + 1] : len;

					if (dest[t] != n)
						continue;
					if (asking_first[t])
					{
						ok = rawbuf_put(b, asking, sizeof(asking) - 1);
						st.order[nrep++] = -1;
					}
					ok = ok && rawbuf_put(b, buf + start[c], end - start[c]);
					st.order[nrep++] = c;
				}
				if (!ok)
					mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "out of memory routing redis commands");
				else if (nrep > 0)
				{
					st.pos = 0;
					ok = exchange(&nodes[n], b->data, b->len, nrep, route_cb, &st,
								  deadline, interruptible, err);
				}
			}
			memcpy(todo, st.redo, sizeof(int) * st.nredo);
			ntodo = st.nredo;
			if (st.redirects)
				round++;
			if (ok && st.tryagain)
			{
				mc_nap(TRYAGAIN_NAP_MS, deadline, interruptible);
				if (mc_ms_left(deadline) <= 0)
				{
					*err = st.tryagain_err;
					ok = false;
				}
			}
		}
	}
	PG_FINALLY();
	{
		free(b->data);
		free(b);
		free(todo);
	}
	PG_END_TRY();
	return ok;
}

/* ---- SQL-function path: palloc'd replies, errors thrown ---- */

static McReply *
copy_reply(redisReply *r)
{
	McReply    *m = palloc0(sizeof(McReply));

	switch (r->type)
	{
		case REDIS_REPLY_NIL:
			m->type = MC_REPLY_NIL;
			break;
		case REDIS_REPLY_STATUS:
		case REDIS_REPLY_ERROR:
		case REDIS_REPLY_STRING:
			m->type = r->type == REDIS_REPLY_STATUS ? MC_REPLY_STATUS :
				r->type == REDIS_REPLY_ERROR ? MC_REPLY_ERROR : MC_REPLY_STRING;
			m->str = palloc(r->len + 1);
			memcpy(m->str, r->str, r->len);
			m->str[r->len] = '\0';
			m->len = r->len;
			break;
		case REDIS_REPLY_INTEGER:
			m->type = MC_REPLY_INTEGER;
			m->integer = r->integer;
			break;
		case REDIS_REPLY_ARRAY:
			m->type = MC_REPLY_ARRAY;
			m->nelems = (int) r->elements;
			m->elems = palloc0(sizeof(McReply *) * Max(1, r->elements));
			for (size_t i = 0; i < r->elements; i++)
				m->elems[i] = copy_reply(r->element[i]);
			break;
		default:
			m->type = MC_REPLY_NIL;
	}
	return m;
}

typedef struct CollectState
{
	redisReply **raw;			/* malloc'd hiredis replies, freed by caller */
	int			n;
} CollectState;

static bool
collect_cb(redisReply *r, void *arg, McErr *err)
{
	CollectState *cs = (CollectState *) arg;

	cs->raw[cs->n++] = r;
	return true;
}

/* a routed run's replies land where their commands were */
static bool
collect_at_cb(redisReply *r, int cmd, void *arg, McErr *err)
{
	CollectState *cs = (CollectState *) arg;

	cs->raw[cmd] = r;
	cs->n++;
	return true;
}

void
mc_pipe_init(McPipe *pipe)
{
	initStringInfo(&pipe->buf);
	pipe->ncmds = 0;
	pipe->cap = 4;
	pipe->start = palloc(sizeof(int) * pipe->cap);
	pipe->route = palloc(sizeof(int) * pipe->cap);
}

static bool
is_cmd(const char *arg, size_t len, const char *name)
{
	return len == strlen(name) && pg_strncasecmp(arg, name, len) == 0;
}

/*
 * The slot a command's key lives in: the first key of EVALSHA, the key of
 * MEMORY USAGE, else the first argument; keyless commands go anywhere.
 */
static int
command_route(int argc, const char **argv, const size_t *lens)
{
	int			key = 1;

	if (argc < 2 || is_cmd(argv[0], lens[0], "SCAN") || is_cmd(argv[0], lens[0], "SCRIPT") ||
		is_cmd(argv[0], lens[0], "PING") || is_cmd(argv[0], lens[0], "INFO"))
		return MC_ROUTE_ANY;
	if (is_cmd(argv[0], lens[0], "EVALSHA"))
	{
		if (argc < 4 || atoi(argv[2]) < 1)
			return MC_ROUTE_ANY;
		key = 3;
	}
	else if (is_cmd(argv[0], lens[0], "MEMORY"))
		key = 2;
	if (key >= argc)
		return MC_ROUTE_ANY;
	return mc_cluster_slot(argv[key], (int) lens[key]);
}

void
mc_pipe_add(McPipe *pipe, int argc, const char **argv, const size_t *lens)
{
	char	   *cmd = NULL;
	long long	n = redisFormatCommandArgv(&cmd, argc, argv, lens);

	if (n < 0 || cmd == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory formatting a redis command")));
	if (pipe->ncmds == pipe->cap)
	{
		pipe->cap *= 2;
		pipe->start = repalloc(pipe->start, sizeof(int) * pipe->cap);
		pipe->route = repalloc(pipe->route, sizeof(int) * pipe->cap);
	}
	pipe->start[pipe->ncmds] = pipe->buf.len;
	pipe->route[pipe->ncmds] = command_route(argc, argv, lens);
	appendBinaryStringInfo(&pipe->buf, cmd, (int) n);
	free(cmd);
	pipe->ncmds++;
}

/* on a cluster, send every command of the pipeline to master node (SCAN, PING) */
void
mc_pipe_on_node(McPipe *pipe, int node)
{
	for (int i = 0; i < pipe->ncmds; i++)
		pipe->route[i] = MC_ROUTE_NODE(node);
}

/*
 * How many masters a keyless command (SCAN) must visit: 1, or a cluster's
 * masters (the slot map is loaded when needed).  -1 with err filled when
 * it cannot be.
 */
static int
masters_try(McErr *err)
{
	if (!mc_redis_cluster())
		return 1;
	if (!mc_cluster_map_ready() &&
		!cluster_load_map(true, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															mc_command_timeout), err))
		return -1;
	return mc_cluster_nnodes();
}

/* as masters_try, but a failure throws */
int
mc_redis_masters(void)
{
	McErr		err;
	int			n;

	memset(&err, 0, sizeof(err));
	n = masters_try(&err);
	if (n < 0)
		mc_throw(&err);
	return n;
}

void
mc_throw(McErr *err)
{
	ereport(ERROR,
			(errcode(err->sqlstate),
			 errmsg("%s", err->msg),
			 err->detail[0] ? errdetail("%s", err->detail) : 0,
			 err->hint[0] ? errhint("%s", err->hint) :
			 err->detail[0] ? 0 :
			 errhint("Check that Redis is running and that meetcache.redis_url points to it.")));
}

/*
 * Run a pipeline and return its replies (palloc'd; error replies are
 * returned, not thrown).  On a connection failure or timeout returns NULL
 * and fills err; only interrupts (cancel, statement_timeout) throw.
 */
McReply **
mc_pipe_try(McPipe *pipe, McErr *err)
{
	CollectState cs;
	McReply   **out;
	volatile bool ok = false;
	TimestampTz deadline;

	memset(err, 0, sizeof(*err));
	if (pipe->ncmds == 0)
		return palloc0(sizeof(McReply *));
	out = palloc0(sizeof(McReply *) * pipe->ncmds);
	cs.raw = calloc(pipe->ncmds, sizeof(redisReply *));
	cs.n = 0;
	if (cs.raw == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), mc_command_timeout);

	PG_TRY();
	{
		/* exchange() retries only when no reply arrived, so cs.n is exact */
		if (mc_redis_cluster())
			ok = cluster_run(pipe->buf.data, pipe->buf.len, pipe->start, pipe->route,
							 pipe->ncmds, collect_at_cb, &cs, deadline, true, true, err);
		else
			ok = exchange(&conn, pipe->buf.data, pipe->buf.len, pipe->ncmds, collect_cb,
						  &cs, deadline, true, err);
		if (ok)
		{
			for (int i = 0; i < pipe->ncmds; i++)
				out[i] = copy_reply(cs.raw[i]);
		}
	}
	PG_FINALLY();
	{
		for (int i = 0; i < pipe->ncmds; i++)
			if (cs.raw[i])
				freeReplyObject(cs.raw[i]);
		free(cs.raw);
	}
	PG_END_TRY();

	mc_stat_add(MC_STAT_COMMANDS, pipe->ncmds);
	if (!ok)
	{
		mc_stat_error(err->msg);
		return NULL;
	}
	return out;
}

/* as mc_pipe_try, but connection failures and timeouts throw */
McReply **
mc_pipe_exec(McPipe *pipe)
{
	McErr		err;
	McReply   **r = mc_pipe_try(pipe, &err);

	if (r == NULL)
		mc_throw(&err);
	return r;
}

McReply *
mc_redis_command(int argc, const char **argv, const size_t *lens)
{
	McPipe		pipe;
	McReply   **r;

	mc_pipe_init(&pipe);
	mc_pipe_add(&pipe, argc, argv, lens);
	r = mc_pipe_exec(&pipe);
	return r[0];
}

/* ---- scripts (their texts and the lease protocol: lease.c) ---- */

static char script_sha[MC_SCRIPT__COUNT][41];

/*
 * SCRIPT LOAD one script on the server, or on every master of a cluster
 * (an -ASK may send its EVALSHA to a master other than its slot's); its
 * SHA1, the same everywhere, is cached for every later EVALSHA.
 */
static bool
script_load(McScript which, McErr *err)
{
	McPipe		pipe;
	McReply   **r;
	const char *argv[3] = {"SCRIPT", "LOAD", mc_lease_script_text(which)};
	size_t		lens[3] = {6, 4, strlen(mc_lease_script_text(which))};
	int			nmasters = masters_try(err);

	if (nmasters < 0)
		return false;
	mc_pipe_init(&pipe);
	for (int n = 0; n < nmasters; n++)
	{
		mc_pipe_add(&pipe, 3, argv, lens);
		pipe.route[n] = MC_ROUTE_NODE(n);
	}
	r = mc_pipe_try(&pipe, err);
	if (r == NULL)
		return false;
	for (int n = 0; n < nmasters; n++)
		if (r[n]->type != MC_REPLY_STRING || r[n]->len != 40)
		{
			mc_err_set(err, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
					"redis refused to load a meetcache script: %.200s",
					r[n]->str ? r[n]->str : "");
			return false;
		}
	memcpy(script_sha[which], r[0]->str, 40);
	script_sha[which][40] = '\0';
	return true;
}

/*
 * EVALSHA a meetcache script (argv = keys then arguments), loading it first
 * when this backend has not yet, and again on NOSCRIPT (a restarted or
 * flushed Redis).  NULL with err set on a connection failure; error replies
 * are returned.
 */
McReply *
mc_redis_script(McScript which, int nkeys, int nargs, const char **argv,
				const size_t *lens, McErr *err)
{
	for (int attempt = 0; attempt < 2; attempt++)
	{
		McPipe		pipe;
		McReply   **r;
		const char **a = palloc(sizeof(char *) * (nkeys + nargs + 3));
		size_t	   *l = palloc(sizeof(size_t) * (nkeys + nargs + 3));
		char		nk[16];

		if (script_sha[which][0] == '\0' && !script_load(which, err))
			return NULL;
		snprintf(nk, sizeof(nk), "%d", nkeys);
		a[0] = "EVALSHA";
		l[0] = 7;
		a[1] = script_sha[which];
		l[1] = 40;
		a[2] = nk;
		l[2] = strlen(nk);
		for (int i = 0; i < nkeys + nargs; i++)
		{
			a[i + 3] = argv[i];
			l[i + 3] = lens[i];
		}
		mc_pipe_init(&pipe);
		mc_pipe_add(&pipe, nkeys + nargs + 3, a, l);
		r = mc_pipe_try(&pipe, err);
		if (r == NULL)
			return NULL;
		if (r[0]->type == MC_REPLY_ERROR && strncmp(r[0]->str, "NOSCRIPT", 8) == 0)
		{
			script_sha[which][0] = '\0';
			continue;
		}
		return r[0];
	}
	mc_err_set(err, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
			"redis at %s keeps forgetting meetcache's scripts", cur->stream.name);
	return NULL;
}

/* ---- commit path: no throw, no palloc ---- */

static bool
ping_cb(redisReply *r, void *arg, McErr *err)
{
	bool		ok = r->type == REDIS_REPLY_STATUS;

	if (!ok && err->msg[0] == '\0')
		mc_err_set(err, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
				"redis at %s refused PING: %.200s", cur->stream.name,
				r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
	freeReplyObject(r);
	return ok;
}

/* is Redis answering?  No throw, no palloc (the worker's health check) */
bool
mc_redis_ping(TimestampTz deadline, McErr *err)
{
	static const char cmd[] = "*1\r\n$4\r\nPING\r\n";

	memset(err, 0, sizeof(*err));
	if (!mc_redis_cluster())
		return exchange(&conn, cmd, sizeof(cmd) - 1, 1, ping_cb, NULL, deadline, false, err);
	/* a cluster answers when all its masters do */
	if (!mc_cluster_map_ready() && !cluster_load_map(false, deadline, err))
		return false;
	for (int n = 0; n < mc_cluster_nnodes(); n++)
		if (!exchange(&nodes[n], cmd, sizeof(cmd) - 1, 1, ping_cb, NULL, deadline, false, err))
			return false;
	return true;
}


typedef struct InvState
{
	McInvResult *res;
	bool		answered;		/* a reply arrived in this job */
	/* SCAN state */
	char		cursor[32];
	McStr	   *patterns;
	int			npatterns;
	RawBuf	   *unlink;			/* UNLINK commands built from scan results */
	int			unlink_cmds;
	int			per_unlink;		/* keys per UNLINK: 1 on a cluster (CROSSSLOT) */
	McConn	   *c;				/* the server, or the cluster master, scanned */
	bool		oom;
} InvState;

/* UNLINK's reply, parsed in place */
static void
unlink_int(long long n, void *arg)
{
	InvState   *st = (InvState *) arg;

	st->answered = true;
	st->res->keys_deleted += n;
}

static bool
unlink_cb(redisReply *r, void *arg, McErr *err)
{
	InvState   *st = (InvState *) arg;
	bool		ok = true;

	st->answered = true;
	if (r->type == REDIS_REPLY_INTEGER)
		unlink_int(r->integer, arg);
	else if (r->type == REDIS_REPLY_ERROR && err->msg[0] != '\0')
		ok = false;
	else if (r->type == REDIS_REPLY_ERROR &&
			 (strncmp(r->str, "MOVED ", 6) == 0 || strncmp(r->str, "ASK ", 4) == 0 ||
			  strncmp(r->str, "TRYAGAIN", 8) == 0))
	{
		/* a key SCAN found on a master whose slot is moving: all again later */
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "redis at %s no longer serves a key it listed", cur->stream.name);
		set_said(err, r);
		mc_cluster_map_stale();
		ok = false;
	}
	else if (r->type == REDIS_REPLY_ERROR)
	{
		mc_err_set(err, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
				   "redis at %s refused UNLINK: %.200s", cur->stream.name, r->str);
		ok = false;
	}
	freeReplyObject(r);
	return ok;
}

static bool
unlink_at_cb(redisReply *r, int cmd, void *arg, McErr *err)
{
	return unlink_cb(r, arg, err);
}

#define KEYS_PER_UNLINK 100

/* the commit path's UNLINK pipeline, reused from one transaction to the next */
static RawBuf unlink_buf = {NULL, 0, 0};

#define UNLINK_BUF_KEEP (64 * 1024) /* larger: freed after use */
#define SCAN_COUNT "1000"		/* SCAN's COUNT hint per page */

/* is a key's lease key deleted with it?  (not for a lease key itself) */
static bool
has_lease(const McStr *key)
{
	const char *base;
	int			blen;

	if (mc_lease_base(key->s, key->len, &base, &blen))
		return false;
	/* on a cluster, a lease outside its key's slot cannot exist (lease.c) */
	return !mc_redis_cluster() || mc_lease_same_slot(key->s, key->len);
}

/*
 * One UNLINK of up to KEYS_PER_UNLINK keys and, in the same command (so
 * atomically), their lease keys: an outstanding lease is cancelled with
 * its key.  A lease key given as such is deleted alone.  Formatted in
 * place: no allocation but the buffer's growth.
 */
static bool
add_unlink(RawBuf *b, McStr *keys, int n)
{
	int			argc = 1 + n;

	for (int i = 0; i < n; i++)
		argc += has_lease(&keys[i]);
	if (!rawbuf_cmd(b, argc) || !rawbuf_arg(b, "UNLINK", 6))
		return false;
	for (int i = 0; i < n; i++)
	{
		char	   *lease;
		int			l;

		if (!rawbuf_arg(b, keys[i].s, keys[i].len))
			return false;
		if (!has_lease(&keys[i]))
			continue;
		/* the lease key is made past its header's room, then moved in */
		if (!rawbuf_reserve(b, RESP_HEADER_MAX + keys[i].len + MC_LEASE_EXTRA + 2))
			return false;
		lease = b->data + b->len + RESP_HEADER_MAX;
		l = mc_lease_key(keys[i].s, keys[i].len, lease);
		if (!rawbuf_arg(b, lease, l))
			return false;
	}
	return true;
}

/* reply to SCAN: [cursor, [keys...]]; queue UNLINKs for matching keys */
static bool
scan_cb(redisReply *r, void *arg, McErr *err)
{
	InvState   *st = (InvState *) arg;
	McStr		batch[KEYS_PER_UNLINK];
	int			nb = 0;

	st->answered = true;
	if (r->type == REDIS_REPLY_INTEGER || r->type == REDIS_REPLY_ERROR)
		return unlink_cb(r, arg, err);	/* an UNLINK sent with this SCAN */
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
		r->element[0]->type != REDIS_REPLY_STRING ||
		r->element[1]->type != REDIS_REPLY_ARRAY)
	{
		if (err->msg[0] == '\0')
			mc_err_set(err, ERRCODE_PROTOCOL_VIOLATION,
					"redis at %s sent an unexpected SCAN reply", cur->stream.name);
		freeReplyObject(r);
		return false;
	}
	strlcpy(st->cursor, r->element[0]->str, sizeof(st->cursor));
	for (size_t i = 0; i < r->element[1]->elements; i++)
	{
		redisReply *k = r->element[1]->element[i];

		const char *base;
		int			blen;

		st->res->keys_scanned++;
		if (k->type != REDIS_REPLY_STRING)
			continue;
		mc_lease_base(k->str, (int) k->len, &base, &blen);
		for (int p = 0; p < st->npatterns; p++)
		{
			if (mc_glob_match(st->patterns[p].s, st->patterns[p].len, base, blen))
			{
				batch[nb].s = k->str;
				batch[nb].len = (int) k->len;
				if (++nb == st->per_unlink)
				{
					if (!add_unlink(st->unlink, batch, nb))
						st->oom = true;
					st->unlink_cmds++;
					st->res->keys_sent += nb;
					nb = 0;
				}
				break;
			}
		}
	}
	if (nb > 0)
	{
		if (!add_unlink(st->unlink, batch, nb))
			st->oom = true;
		st->unlink_cmds++;
		st->res->keys_sent += nb;
	}
	freeReplyObject(r);
	return true;
}

/*
 * One full SCAN pass: each page's matching keys are UNLINKed (with their
 * leases) in the same round trip as the next SCAN.  No throw, no palloc.
 */
static bool
scan_pass(InvState *st, RawBuf *ub, TimestampTz deadline, int step_ms,
		  McInvResult *res, McErr *err)
{
	bool		ok = true;

	strlcpy(st->cursor, "0", sizeof(st->cursor));
	for (bool scan_done = false; !scan_done || st->unlink_cmds > 0;)
	{
		/* the previous page's UNLINKs ride along with the next SCAN */
		RawBuf		cmd = *ub;
		int			nunlink = st->unlink_cmds;
		int			nscan = 0;

		ub->data = NULL;
		ub->len = ub->cap = 0;
		st->unlink_cmds = 0;
		if (st->oom)
		{
			free(cmd.data);
			mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "out of memory formatting UNLINK commands");
			return false;
		}
		if (!scan_done)
		{
			const char *argv[4] = {"SCAN", st->cursor, "COUNT", SCAN_COUNT};
			size_t		lens[4] = {4, strlen(st->cursor), 5, 4};

			if (!rawbuf_add(&cmd, 4, argv, lens))
			{
				free(cmd.data);
				mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "out of memory formatting SCAN");
				return false;
			}
			nscan = 1;
		}
		/* the workers' SCANs may run long, as long as each page is quick */
		if (step_ms > 0)
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), step_ms);
		ok = exchange_ints(st->c, cmd.data, cmd.len, nunlink + nscan, unlink_int, scan_cb,
						   st, deadline, false, err);
		res->commands += nunlink + nscan;
		free(cmd.data);
		if (!ok)
			return false;
		if (nscan && strcmp(st->cursor, "0") == 0)
			scan_done = true;
	}
	return true;
}

/* keys' indexes by slot, then by position (qsort_arg; arg: the slots) */
static int
slot_cmp(const void *a, const void *b, void *arg)
{
	const int  *slots = (const int *) arg;
	int			x = *(const int *) a;
	int			y = *(const int *) b;

	if (slots[x] != slots[y])
		return slots[x] < slots[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* a cluster_unlink's keys grouped by slot, and the groups that got -TRYAGAIN */
typedef struct SlotGroups
{
	McStr	   *keys;			/* the keys, ordered by slot */
	int		   *first;			/* group g: keys[first[g]..first[g + 1]) */
	int		   *slot;			/* group g's slot */
	int			ngroups;
	int		   *split;			/* groups to send again one name at a time */
	int			nsplit;
	InvState   *st;
} SlotGroups;

/* reply to a group's UNLINK: -TRYAGAIN marks the group to be split */
static bool
group_cb(redisReply *r, int cmd, void *arg, McErr *err)
{
	SlotGroups *g = (SlotGroups *) arg;

	if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "TRYAGAIN", 8) == 0)
	{
		g->st->answered = true;
		g->split[g->nsplit++] = cmd;
		freeReplyObject(r);
		return true;
	}
	return unlink_cb(r, g->st, err);
}

/*
 * One single-name UNLINK per key of the split groups: their lease keys
 * (leases), or the keys themselves (a lease key given as such is a key).
 */
static bool
unlink_split(SlotGroups *g, bool leases, TimestampTz deadline, McErr *err)
{
	RawBuf		b = {NULL, 0, 0};
	int			nkeys = 0;
	int		   *start;
	int		   *route;
	int			longest = 0;
	char	   *lease;
	int			ncmds = 0;
	bool		ok;

	for (int s = 0; s < g->nsplit; s++)
		for (int k = g->first[g->split[s]]; k < g->first[g->split[s] + 1]; k++)
		{
			nkeys++;
			longest = Max(longest, g->keys[k].len);
		}
	start = malloc(sizeof(int) * 2 * nkeys);
	lease = leases ? malloc(longest + MC_LEASE_EXTRA) : NULL;
	ok = start != NULL && (lease != NULL || !leases);
	route = ok ? start + nkeys : NULL;
	for (int s = 0; ok && s < g->nsplit; s++)
		for (int k = g->first[g->split[s]]; ok && k < g->first[g->split[s] + 1]; k++)
		{
			const char *argv[2] = {"UNLINK", g->keys[k].s};
			size_t		lens[2] = {6, g->keys[k].len};

			if (leases && !has_lease(&g->keys[k]))
				continue;
			if (leases)
			{
				argv[1] = lease;
				lens[1] = mc_lease_key(g->keys[k].s, g->keys[k].len, lease);
			}
			start[ncmds] = (int) b.len;
			route[ncmds++] = g->slot[g->split[s]];
			ok = rawbuf_add(&b, 2, argv, lens);
		}
	if (!ok)
		mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "out of memory formatting UNLINK commands");
	else if (ncmds > 0)
	{
		ok = cluster_run(b.data, b.len, start, route, ncmds, unlink_at_cb, g->st, deadline,
						 false, true, err);
		g->st->res->commands += ncmds;
	}
	free(lease);
	free(start);
	free(b.data);
	return ok;
}

/*
 * A cluster's keys: ordered by slot and grouped by master, one UNLINK per
 * slot of up to KEYS_PER_UNLINK keys with their lease keys (same slot by
 * construction), so each lease goes atomically with its key.  While a slot
 * migrates, such a command whose keys are split between the two masters,
 * or missing on the importing one, gets -TRYAGAIN until the migration
 * ends: such a group is sent again at once one name per UNLINK, its lease
 * keys first, then (once every lease is gone, so a lease holder cannot
 * store after its key was deleted) its keys.  No throw, no palloc.
 */
static bool
cluster_unlink(McStr *keys, int nkeys, InvState *st, TimestampTz deadline, McErr *err)
{
	RawBuf		b = {NULL, 0, 0};
	SlotGroups	g;
	int		   *start = malloc(sizeof(int) * (6 * nkeys + 1));
	bool		ok;

	memset(&g, 0, sizeof(g));
	g.st = st;
	g.keys = malloc(sizeof(McStr) * nkeys);
	ok = start != NULL && g.keys != NULL;
	if (ok)
	{
		int		   *slots = start + 4 * nkeys + 1;
		int		   *order = slots + nkeys;

		g.first = start + nkeys;
		g.slot = start + 2 * nkeys + 1;
		g.split = start + 3 * nkeys + 1;
		for (int i = 0; i < nkeys; i++)
		{
			slots[i] = mc_cluster_slot(keys[i].s, keys[i].len);
			order[i] = i;
		}
		qsort_arg(order, nkeys, sizeof(int), slot_cmp, slots);
		for (int i = 0; i < nkeys; i++)
		{
			g.keys[i] = keys[order[i]];
			if (i == 0 || slots[order[i]] != g.slot[g.ngroups - 1] ||
				i - g.first[g.ngroups - 1] == KEYS_PER_UNLINK)
			{
				g.first[g.ngroups] = i;
				g.slot[g.ngroups++] = slots[order[i]];
			}
		}
		g.first[g.ngroups] = nkeys;
	}
	for (int n = 0; ok && n < g.ngroups; n++)
	{
		start[n] = (int) b.len;
		ok = add_unlink(&b, g.keys + g.first[n], g.first[n + 1] - g.first[n]);
	}
	if (!ok)
		mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "out of memory formatting UNLINK commands");
	else
	{
		ok = cluster_run(b.data, b.len, start, g.slot, g.ngroups, group_cb, &g, deadline,
						 false, false, err);
		st->res->commands += g.ngroups;
	}
	if (ok && g.nsplit > 0)
		ok = unlink_split(&g, true, deadline, err) && unlink_split(&g, false, deadline, err);
	if (ok)
		st->res->keys_sent += nkeys;
	free(g.keys);
	free(start);
	free(b.data);
	return ok;
}

/*
 * Delete keys (pipelined UNLINK, KEYS_PER_UNLINK per command) and every key
 * matching one of the patterns (one SCAN over the prefix, matched here, so
 * any number of families costs one pass).  Runs inside the commit callback:
 * never throws, allocates with malloc only, and gives up at the deadline.
 * With step_ms > 0 (the workers) the deadline bounds the keys, and then
 * each SCAN round trip gets step_ms of its own: a large keyspace takes
 * as long as it takes, a frozen Redis fails within step_ms.
 *
 * Failures: ERRCODE_CONNECTION_FAILURE means Redis did not answer (no
 * reply within the deadline, a broken connection), which opens the
 * circuit breaker.  With step_ms == 0 (the commit path) the deadline
 * bounds the whole job, and a job that runs out of it after Redis
 * answered reports ERRCODE_QUERY_CANCELED instead: Redis is answering,
 * the job is too long for commit_timeout (a large SCAN).
 */
bool
mc_redis_invalidate(McStr *keys, int nkeys, McStr *patterns, int npatterns,
					TimestampTz deadline, int step_ms, McInvResult *res, McErr *err)
{
	InvState	st;
	bool		ok = true;

	memset(res, 0, sizeof(*res));
	memset(&st, 0, sizeof(st));
	memset(err, 0, sizeof(*err));
	st.res = res;

	st.c = &conn;
	st.per_unlink = KEYS_PER_UNLINK;
	if (nkeys > 0 && mc_redis_cluster())
		ok = cluster_unlink(keys, nkeys, &st, deadline, err);
	else if (nkeys > 0)
	{
		int			ncmds = 0;

		unlink_buf.len = 0;
		for (int i = 0; ok && i < nkeys; i += KEYS_PER_UNLINK)
		{
			ok = add_unlink(&unlink_buf, keys + i, Min(KEYS_PER_UNLINK, nkeys - i));
			ncmds++;
		}
		if (!ok)
			mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "out of memory formatting UNLINK commands");
		else
		{
			ok = exchange_ints(&conn, unlink_buf.data, unlink_buf.len, ncmds, unlink_int,
							   unlink_cb, &st, deadline, false, err);
			res->commands += ncmds;
			if (ok)
				res->keys_sent += nkeys;
		}
		/* a bulk transaction's buffer (or one half grown) is not kept */
		if (unlink_buf.cap > UNLINK_BUF_KEEP)
		{
			free(unlink_buf.data);
			unlink_buf.data = NULL;
			unlink_buf.len = unlink_buf.cap = 0;
		}
	}

	if (ok && npatterns > 0)
	{
		RawBuf		ub = {NULL, 0, 0};

		/*
		 * One SCAN without MATCH (lease keys do not start with the prefix
		 * and must go with their keys); keys are matched here, so any
		 * number of families costs the same.  Two full passes: a lease
		 * holder that stores its key behind the first pass's cursor, before
		 * the pass reached (and cancelled) its lease, leaves a key that
		 * exists throughout the second pass, which SCAN then guarantees to
		 * return.  After the first pass no such store can succeed.
		 */
		st.patterns = patterns;
		st.npatterns = npatterns;
		st.unlink = &ub;
		if (!mc_redis_cluster())
		{
			for (int pass = 0; pass < 2 && ok; pass++)
				ok = scan_pass(&st, &ub, deadline, step_ms, res, err);
		}
		else if (!mc_cluster_map_ready())
			ok = cluster_load_map(false, deadline, err);
		/* a cluster: both passes on every master, each holding its own keys */
		st.per_unlink = 1;
		for (int n = 0; ok && mc_redis_cluster() && n < mc_cluster_nnodes(); n++)
		{
			st.c = &nodes[n];
			for (int pass = 0; pass < 2 && ok; pass++)
				ok = scan_pass(&st, &ub, deadline, step_ms, res, err);
		}
		free(ub.data);
	}
	if (!ok && step_ms == 0 && st.answered && mc_ms_left(deadline) <= 0 &&
		err->sqlstate == ERRCODE_CONNECTION_FAILURE)
		mc_err_set(err, ERRCODE_QUERY_CANCELED,
				"redis at %s kept answering, but deleting the keys took longer than the deadline",
				cur->stream.name);
	return ok;
}
