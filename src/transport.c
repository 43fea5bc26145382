/*
 * transport.c
 *	  The byte stream to a Redis endpoint: resolving its host name,
 *	  connecting (TCP, Unix domain socket), the TLS handshake and
 *	  certificate checks, sending, receiving and waiting under deadlines.
 *	  Nothing above it (redis.c) knows which kind of stream it uses.
 *
 * Invariants:
 *	  - Every wait is bounded by the caller's deadline.  Interruptible waits
 *		(SQL functions) go through a WaitEventSet with the process latch and
 *		may throw on cancel; the others (the commit path, where interrupts
 *		are held) use poll() and never throw or palloc: OpenSSL and c-ares
 *		allocate with malloc.
 *	  - Host names are resolved by c-ares under the same deadline, never by
 *		a blocking getaddrinfo(); IP addresses are parsed without any
 *		lookup.  The channel is made once per process (c-ares then reads
 *		/etc/resolv.conf), and each lookup reads the hosts file: the only
 *		file a commit that must reconnect to a named host reads.
 *	  - The TLS context (CA, client certificate and key: file I/O) is built
 *		by mc_transport_reconfigure(), which the settings' assign hooks
 *		call, never on the commit path; a connection only makes an SSL
 *		object from it.  ERR_clear_error() precedes every SSL call whose
 *		error queue is read; OpenSSL's global cleanup is never called (the
 *		postgres binary links OpenSSL too).
 *	  - Decrypted bytes buffered inside OpenSSL (SSL_pending) count as
 *		readable, so a pipelined reply is never left unread.
 *	  - Messages name the endpoint and what failed, never key material or a
 *		password (this layer never sees the password).
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <ares.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#if PG_VERSION_NUM >= 140000
#include "utils/wait_event.h"
#endif

#include "transport.h"

#define MAX_ADDRS 8				/* addresses of one name tried in order */

typedef struct McAddrs
{
	int			n;
	struct sockaddr_storage addr[MAX_ADDRS];
	socklen_t	len[MAX_ADDRS];
} McAddrs;

/* ---- errors and deadlines ---- */

void
mc_err_set(McErr *err, int sqlstate, const char *fmt,...)
{
	va_list		ap;
	char		raw[sizeof(err->msg)];

	err->sqlstate = sqlstate;
	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	/* messages may quote Redis: printable, never a cut character */
	mc_excerpt(err->msg, sizeof(err->msg), raw, strlen(raw));
	err->detail[0] = '\0';
	err->hint[0] = '\0';
}

long
mc_ms_left(TimestampTz deadline)
{
	TimestampTz now = GetCurrentTimestamp();

	if (now >= deadline)
		return 0;
	return (long) ((deadline - now + 999) / 1000);
}

/* wait ms milliseconds, never past deadline, in the caller's discipline */
void
mc_nap(long ms, TimestampTz deadline, bool interruptible)
{
	ms = Min(ms, mc_ms_left(deadline));
	if (ms <= 0)
		return;
	if (!interruptible)
	{
		(void) poll(NULL, 0, (int) ms);
		return;
	}
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

void
mc_endpoint_name(const McEndpoint *ep, char *buf, size_t len)
{
	if (ep->unix_socket)
		strlcpy(buf, ep->path, len);
	else if (strchr(ep->host, ':'))
		snprintf(buf, len, "[%s]:%d", ep->host, ep->port);
	else
		snprintf(buf, len, "%s:%d", ep->host, ep->port);
}

/* ---- waiting on the socket ---- */

/*
 * Wait until the socket is ready for `events` (WL_SOCKET_READABLE and/or
 * WL_SOCKET_WRITEABLE).  Returns the ready events, or 0 on timeout.
 * Interruptible waits may throw (query cancel, statement_timeout).
 */
static int
wait_socket(McStream *s, int events, TimestampTz deadline, bool interruptible)
{
	for (;;)
	{
		long		timeout = mc_ms_left(deadline);

		if (timeout <= 0)
			return 0;

		if (interruptible)
		{
			WaitEvent	ev;
			int			rc;

			if (s->wes == NULL)
			{
#if PG_VERSION_NUM >= 170000
				s->wes = CreateWaitEventSet(NULL, 3);
#else
				s->wes = CreateWaitEventSet(TopMemoryContext, 3);
#endif
				AddWaitEventToSet(s->wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
				AddWaitEventToSet(s->wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
				s->wes_pos = AddWaitEventToSet(s->wes, events, s->fd, NULL, NULL);
			}
			else
				ModifyWaitEvent(s->wes, s->wes_pos, events, NULL);

			rc = WaitEventSetWait(s->wes, timeout, &ev, 1, PG_WAIT_EXTENSION);
			if (rc == 0)
				continue;		/* re-check the deadline */
			if (ev.events & WL_LATCH_SET)
			{
				ResetLatch(MyLatch);
				CHECK_FOR_INTERRUPTS();
				continue;
			}
			if (ev.events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
				return ev.events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE);
		}
		else
		{
			struct pollfd pfd;
			int			rc;

			pfd.fd = s->fd;
			pfd.events = ((events & WL_SOCKET_READABLE) ? POLLIN : 0) |
				((events & WL_SOCKET_WRITEABLE) ? POLLOUT : 0);
			pfd.revents = 0;
			rc = poll(&pfd, 1, (int) Min(timeout, 1000));
			if (rc < 0 && errno != EINTR)
				return events;	/* let the following read/write see the error */
			if (rc > 0)
			{
				int			r = 0;

				if (pfd.revents & (POLLIN | POLLERR | POLLHUP))
					r |= WL_SOCKET_READABLE;
				if (pfd.revents & (POLLOUT | POLLERR | POLLHUP))
					r |= WL_SOCKET_WRITEABLE;
				r &= events;
				if (r)
					return r;
				return events;
			}
		}
	}
}

int
mc_stream_wait(McStream *s, int events, TimestampTz deadline, bool interruptible)
{
	int			sock = 0;
	int			ready;
	int			out = 0;

	/* a TLS record already decrypted: the socket may stay silent */
	if ((events & MC_WAIT_READ) && s->ssl && SSL_pending((SSL *) s->ssl) > 0)
		return MC_WAIT_READ;
	/* TLS may need the other direction to make progress (renegotiation, tickets) */
	if (events & MC_WAIT_READ)
		sock |= s->read_needs;
	if (events & MC_WAIT_WRITE)
		sock |= s->write_needs;
	ready = wait_socket(s, sock, deadline, interruptible);
	if (ready == 0)
		return 0;
	if ((events & MC_WAIT_READ) && (ready & s->read_needs))
		out |= MC_WAIT_READ;
	if ((events & MC_WAIT_WRITE) && (ready & s->write_needs))
		out |= MC_WAIT_WRITE;
	return out;
}

/* ---- the stream's life ---- */

/* the socket only: a failed address of several is closed this way */
static void
close_socket(McStream *s)
{
	if (s->wes)
	{
		FreeWaitEventSet(s->wes);
		s->wes = NULL;
		s->wes_pos = -1;
	}
	if (s->fd != PGINVALID_SOCKET)
	{
		close(s->fd);
		s->fd = PGINVALID_SOCKET;
	}
}

void
mc_stream_close(McStream *s)
{
	if (s->ssl)
	{
		/* no close_notify: the peer may be frozen, and we never wait for it */
		SSL_free((SSL *) s->ssl);
		s->ssl = NULL;
	}
	close_socket(s);
}

bool
mc_stream_is_open(const McStream *s)
{
	return s->fd != PGINVALID_SOCKET;
}

/* ---- host names ---- */

static ares_channel dns_channel;
static bool dns_ready = false;
static char dns_servers_applied[1024];

typedef struct Lookup
{
	bool		done;
	int			status;
	int			port;
	McAddrs    *out;
} Lookup;

static void
lookup_done(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
	Lookup	   *l = (Lookup *) arg;

	l->done = true;
	l->status = status;
	if (status == ARES_SUCCESS && res != NULL)
	{
		for (struct ares_addrinfo_node *n = res->nodes;
			 n != NULL && l->out->n < MAX_ADDRS; n = n->ai_next)
		{
			struct sockaddr_storage *a = &l->out->addr[l->out->n];

			if (n->ai_addrlen > sizeof(*a) ||
				(n->ai_family != AF_INET && n->ai_family != AF_INET6))
				continue;
			memcpy(a, n->ai_addr, n->ai_addrlen);
			if (n->ai_family == AF_INET)
				((struct sockaddr_in *) a)->sin_port = htons(l->port);
			else
				((struct sockaddr_in6 *) a)->sin6_port = htons(l->port);
			l->out->len[l->out->n++] = n->ai_addrlen;
		}
	}
	if (res)
		ares_freeaddrinfo(res);
}

/*
 * The process's resolver channel, with meetcache.redis_dns_servers applied
 * when set.  A setting that went back to empty makes a fresh channel, which
 * reads the system's configuration again.
 */
static bool
dns_channel_ready(McErr *err)
{
	const char *want = mc_dns_servers ? mc_dns_servers : "";
	int			rc;

	if (dns_ready && strcmp(want, dns_servers_applied) != 0 && want[0] == '\0')
	{
		ares_destroy(dns_channel);
		dns_ready = false;
	}
	if (!dns_ready)
	{
		rc = ares_init(&dns_channel);
		if (rc != ARES_SUCCESS)
		{
			mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
					   "could not start the DNS resolver: %s", ares_strerror(rc));
			return false;
		}
		dns_ready = true;
		dns_servers_applied[0] = '\0';
	}
	if (strcmp(want, dns_servers_applied) != 0)
	{
		rc = ares_set_servers_ports_csv(dns_channel, want);
		if (rc != ARES_SUCCESS)
		{
			mc_err_set(err, ERRCODE_CONFIG_FILE_ERROR,
					   "could not use meetcache.redis_dns_servers: %s", ares_strerror(rc));
			return false;
		}
		strlcpy(dns_servers_applied, want, sizeof(dns_servers_applied));
	}
	return true;
}

/* let c-ares work on its sockets until the lookup ends or the deadline */
static void
lookup_wait(Lookup *l, TimestampTz deadline, bool interruptible)
{
	while (!l->done)
	{
		ares_socket_t socks[ARES_GETSOCK_MAXNUM];
		struct pollfd pfds[ARES_GETSOCK_MAXNUM];
		struct timeval tv,
				   *tvp;
		int			mask = ares_getsock(dns_channel, socks, ARES_GETSOCK_MAXNUM);
		int			n = 0;
		long		wait = mc_ms_left(deadline);
		int			rc;

		if (wait <= 0)
			return;
		for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++)
		{
			if (!ARES_GETSOCK_READABLE(mask, i) && !ARES_GETSOCK_WRITABLE(mask, i))
				continue;
			pfds[n].fd = socks[i];
			pfds[n].events = (ARES_GETSOCK_READABLE(mask, i) ? POLLIN : 0) |
				(ARES_GETSOCK_WRITABLE(mask, i) ? POLLOUT : 0);
			pfds[n].revents = 0;
			n++;
		}
		tvp = ares_timeout(dns_channel, NULL, &tv);
		if (tvp)
			wait = Min(wait, tvp->tv_sec * 1000L + (tvp->tv_usec + 999) / 1000);
		/* c-ares has several sockets, the latch is not one of them: short slices */
		if (interruptible)
			wait = Min(wait, 50);
		rc = poll(pfds, n, (int) wait);
		if (rc > 0)
		{
			for (int i = 0; i < n; i++)
				if (pfds[i].revents)
					ares_process_fd(dns_channel,
									(pfds[i].revents & (POLLIN | POLLERR | POLLHUP)) ? pfds[i].fd : ARES_SOCKET_BAD,
									(pfds[i].revents & (POLLOUT | POLLERR | POLLHUP)) ? pfds[i].fd : ARES_SOCKET_BAD);
		}
		else
			ares_process_fd(dns_channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);	/* timeouts */
		if (interruptible)
			CHECK_FOR_INTERRUPTS();
	}
}

/* resolve a host name with c-ares, under the deadline */
static bool
resolve_name(const McEndpoint *ep, McAddrs *out, TimestampTz deadline,
			 bool interruptible, McErr *err)
{
	struct ares_addrinfo_hints hints;
	Lookup		l = {false, ARES_SUCCESS, ep->port, out};

	if (!dns_channel_ready(err))
		return false;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	/* CARES_HOSTS names another hosts file (see README) */
	hints.ai_flags = ARES_AI_ENVHOSTS;
	ares_getaddrinfo(dns_channel, ep->host, NULL, &hints, lookup_done, &l);
	PG_TRY();
	{
		lookup_wait(&l, deadline, interruptible);
	}
	PG_CATCH();
	{
		/* the callback must not outlive l */
		ares_cancel(dns_channel);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (!l.done)
	{
		ares_cancel(dns_channel);
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "could not resolve redis host \"%s\": no answer within the deadline", ep->host);
		return false;
	}
	if (l.status != ARES_SUCCESS || out->n == 0)
	{
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "could not resolve redis host \"%s\": %s", ep->host,
				   l.status != ARES_SUCCESS ? ares_strerror(l.status) : "no IPv4 or IPv6 address");
		return false;
	}
	return true;
}

/* an IP address is parsed here, a name goes to the resolver */
static bool
resolve(const McEndpoint *ep, McAddrs *out, TimestampTz deadline,
		bool interruptible, McErr *err)
{
	struct addrinfo hints,
			   *res = NULL;
	char		portstr[16];

	out->n = 0;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	snprintf(portstr, sizeof(portstr), "%d", ep->port);
	if (getaddrinfo(ep->host, portstr, &hints, &res) != 0 || res == NULL)
		return resolve_name(ep, out, deadline, interruptible, err);
	if (res->ai_addrlen <= sizeof(out->addr[0]))
	{
		memcpy(&out->addr[0], res->ai_addr, res->ai_addrlen);
		out->len[0] = res->ai_addrlen;
		out->n = 1;
	}
	freeaddrinfo(res);
	return out->n == 1;
}

static bool
is_ip_address(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* ---- connecting ---- */

/*
 * connect() on s->fd, waiting for a non-blocking connect to finish.
 * Returns 0, or an errno (ETIMEDOUT at the deadline).
 */
static int
connect_socket(McStream *s, const struct sockaddr *addr, socklen_t len,
			   TimestampTz deadline, bool interruptible)
{
	int			soerr = 0;
	socklen_t	sl = sizeof(soerr);

	if (connect(s->fd, addr, len) == 0)
		return 0;
	/*
	 * Only TCP says EINPROGRESS; a Unix socket whose backlog is full says
	 * EAGAIN, and has not started a connection a wait could finish.
	 */
	if (errno != EINPROGRESS)
		return errno;
	if (wait_socket(s, WL_SOCKET_WRITEABLE, deadline, interruptible) == 0)
		return ETIMEDOUT;
	if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
		return errno;
	return soerr;
}

/*
 * An address that drops the SYN must not use up the whole deadline: each of
 * the n addresses still to try gets an equal share of what is left.
 */
static TimestampTz
address_deadline(TimestampTz deadline, int n)
{
	TimestampTz now = GetCurrentTimestamp();

	if (n <= 1 || deadline <= now)
		return deadline;
	return now + (deadline - now) / n;
}

/* each address in turn, until one accepts */
static bool
connect_tcp(McStream *s, const McEndpoint *ep, TimestampTz deadline,
			bool interruptible, McErr *err)
{
	McAddrs		addrs;
	int			rc = 0;

	if (!resolve(ep, &addrs, deadline, interruptible, err))
		return false;
	for (int i = 0; i < addrs.n; i++)
	{
		int			one = 1;

		s->fd = socket(addrs.addr[i].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (s->fd < 0)
		{
			rc = errno;
			s->fd = PGINVALID_SOCKET;
			continue;
		}
		(void) setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		rc = connect_socket(s, (struct sockaddr *) &addrs.addr[i], addrs.len[i],
							address_deadline(deadline, addrs.n - i), interruptible);
		if (rc == 0)
			return true;
		close_socket(s);
	}
	mc_err_set(err, ERRCODE_CONNECTION_FAILURE, "could not connect to redis at %s: %s",
			   s->name, rc == ETIMEDOUT ? "timed out" : strerror(rc));
	return false;
}

static bool
connect_unix(McStream *s, const McEndpoint *ep, TimestampTz deadline,
			 bool interruptible, McErr *err)
{
	struct sockaddr_un sun;
	int			rc;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strlcpy(sun.sun_path, ep->path, sizeof(sun.sun_path));
	s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
	{
		rc = errno;
		s->fd = PGINVALID_SOCKET;
	}
	else
		rc = connect_socket(s, (struct sockaddr *) &sun, sizeof(sun), deadline, interruptible);
	if (rc == 0)
		return true;
	close_socket(s);
	mc_err_set(err, ERRCODE_CONNECTION_FAILURE, "could not connect to redis at %s: %s",
			   s->name, rc == ETIMEDOUT ? "timed out" : rc == EAGAIN ? "its listen backlog is full" : strerror(rc));
	return false;
}

/* ---- TLS ---- */

static SSL_CTX *tls_ctx = NULL;
static int	tls_verify = MC_TLS_VERIFY_FULL;	/* of tls_ctx */
static McErr tls_ctx_err;		/* why tls_ctx is NULL, when it should not be */

/* an encrypted key is refused, never prompted for on a terminal */
static int
no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
	return 0;
}

/* the reason of OpenSSL's latest error, or fallback */
static const char *
tls_reason(const char *fallback)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	return r ? r : fallback;
}

static SSL_CTX *
tls_ctx_build(const McTlsSettings *t, McErr *err)
{
	SSL_CTX    *ctx;
	const char *ca = t->ca_file && t->ca_file[0] ? t->ca_file : NULL;
	const char *cert = t->cert_file && t->cert_file[0] ? t->cert_file : NULL;
	const char *key = t->key_file && t->key_file[0] ? t->key_file : cert;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL)
	{
		mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "could not create a TLS context: %s",
				   tls_reason("unknown error"));
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* a write cut short is retried from where it stopped, buffer moved or not */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
	if (t->verify != MC_TLS_VERIFY_NONE &&
		(ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL) :
		 SSL_CTX_set_default_verify_paths(ctx)) != 1)
	{
		mc_err_set(err, ERRCODE_CONFIG_FILE_ERROR,
				   "could not load the CA certificates of meetcache.redis_tls_ca_file \"%s\": %s",
				   ca ? ca : "(system)", tls_reason("unknown error"));
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (cert && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
	{
		mc_err_set(err, ERRCODE_CONFIG_FILE_ERROR,
				   "could not load the client certificate of meetcache.redis_tls_cert_file \"%s\": %s",
				   cert, tls_reason("unknown error"));
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (key && (!cert || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
				SSL_CTX_check_private_key(ctx) != 1))
	{
		mc_err_set(err, ERRCODE_CONFIG_FILE_ERROR,
				   "could not use the client key of meetcache.redis_tls_key_file \"%s\": %s",
				   key, cert ? tls_reason("unknown error") : "meetcache.redis_tls_cert_file is not set");
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

/*
 * Called by the assign hooks of redis_url and the redis_tls_* settings:
 * build the TLS context now, off the commit path, when the URL wants TLS.
 * A failure is kept and reported by the next connection attempt.
 */
void
mc_transport_reconfigure(const McTlsSettings *t)
{
	if (tls_ctx)
	{
		/* connections hold their own reference */
		SSL_CTX_free(tls_ctx);
		tls_ctx = NULL;
	}
	memset(&tls_ctx_err, 0, sizeof(tls_ctx_err));
	tls_verify = t->verify;
	if (mc_url != NULL && mc_url->ep.tls)
		tls_ctx = tls_ctx_build(t, &tls_ctx_err);
	ERR_clear_error();
}

/* what a failed handshake or TLS read/write tells */
static void
tls_error(McStream *s, int sslerr, const char *what, McErr *err)
{
	/* with verify = none OpenSSL still records what it found: not a failure */
	long		verify = tls_verify == MC_TLS_VERIFY_NONE ? X509_V_OK :
		SSL_get_verify_result((SSL *) s->ssl);

	if (verify != X509_V_OK)
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "could not verify the TLS certificate of redis at %s: %s",
				   s->name, X509_verify_cert_error_string(verify));
	else if (sslerr == SSL_ERROR_ZERO_RETURN ||
			 (sslerr == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0))
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "redis at %s closed the connection%s", s->name, what);
	else if (sslerr == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE, "TLS error with redis at %s%s: %s",
				   s->name, what, strerror(errno));
	else
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE, "TLS error with redis at %s%s: %s",
				   s->name, what, tls_reason("unknown error"));
}

/* the client's half of the handshake, SNI and the name checks included */
static bool
tls_handshake(McStream *s, const McEndpoint *ep, TimestampTz deadline,
			  bool interruptible, McErr *err)
{
	SSL		   *ssl;

	if (tls_ctx == NULL)
	{
		*err = tls_ctx_err;
		if (err->msg[0] == '\0')
			mc_err_set(err, ERRCODE_CONFIG_FILE_ERROR, "the TLS context of meetcache.redis_url is not set up");
		return false;
	}
	ERR_clear_error();
	ssl = SSL_new(tls_ctx);
	if (ssl == NULL || SSL_set_fd(ssl, s->fd) != 1)
	{
		if (ssl)
			SSL_free(ssl);
		mc_err_set(err, ERRCODE_OUT_OF_MEMORY, "could not start TLS with redis at %s: %s",
				   s->name, tls_reason("out of memory"));
		return false;
	}
	s->ssl = ssl;
	/* SNI for names; verify-full checks the name or the address: never skipped */
	if ((!is_ip_address(ep->host) && SSL_set_tlsext_host_name(ssl, ep->host) != 1) ||
		(tls_verify == MC_TLS_VERIFY_FULL &&
		 (is_ip_address(ep->host) ?
		  X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ep->host) :
		  SSL_set1_host(ssl, ep->host)) != 1))
	{
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
				   "could not set up the TLS name check for redis at %s: %s",
				   s->name, tls_reason("unknown error"));
		return false;
	}
	SSL_set_verify(ssl, tls_verify == MC_TLS_VERIFY_NONE ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
	for (;;)
	{
		int			rc,
					e,
					want;

		ERR_clear_error();
		errno = 0;
		rc = SSL_connect(ssl);
		if (rc == 1)
			return true;
		e = SSL_get_error(ssl, rc);
		if (e == SSL_ERROR_WANT_READ)
			want = WL_SOCKET_READABLE;
		else if (e == SSL_ERROR_WANT_WRITE)
			want = WL_SOCKET_WRITEABLE;
		else
		{
			tls_error(s, e, " during the TLS handshake", err);
			return false;
		}
		if (wait_socket(s, want, deadline, interruptible) == 0)
		{
			mc_err_set(err, ERRCODE_CONNECTION_FAILURE,
					   "redis at %s did not finish the TLS handshake within the deadline", s->name);
			return false;
		}
	}
}

/* ---- the stream's interface ---- */

bool
mc_stream_open(McStream *s, const McEndpoint *ep, TimestampTz deadline,
			   bool interruptible, McErr *err)
{
	bool		ok;

	mc_stream_close(s);
	mc_endpoint_name(ep, s->name, sizeof(s->name));
	s->read_needs = WL_SOCKET_READABLE;
	s->write_needs = WL_SOCKET_WRITEABLE;
	if (ep->unix_socket)
		ok = connect_unix(s, ep, deadline, interruptible, err);
	else
		ok = connect_tcp(s, ep, deadline, interruptible, err);
	if (ok && ep->tls)
		ok = tls_handshake(s, ep, deadline, interruptible, err);
	if (!ok)
		mc_stream_close(s);
	return ok;
}

/*
 * After SSL_read/SSL_write returned rc: 0 when it must be retried once the
 * socket is ready for *needs, -1 (err filled) when the stream failed.
 */
static ssize_t
tls_retry(McStream *s, int rc, int *needs, const char *what, McErr *err)
{
	int			e = SSL_get_error((SSL *) s->ssl, rc);

	if (e == SSL_ERROR_WANT_READ)
		*needs = WL_SOCKET_READABLE;
	else if (e == SSL_ERROR_WANT_WRITE)
		*needs = WL_SOCKET_WRITEABLE;
	else
	{
		tls_error(s, e, what, err);
		return -1;
	}
	return 0;
}

ssize_t
mc_stream_send(McStream *s, const char *buf, size_t len, McErr *err)
{
	ssize_t		n;

	if (s->ssl)
	{
		ERR_clear_error();
		errno = 0;
		n = SSL_write((SSL *) s->ssl, buf, (int) Min(len, INT_MAX));
		if (n > 0)
		{
			s->write_needs = WL_SOCKET_WRITEABLE;
			return n;
		}
		return tls_retry(s, (int) n, &s->write_needs, " while sending", err);
	}
	n = send(s->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (n >= 0)
		return n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return 0;
	mc_err_set(err, ERRCODE_CONNECTION_FAILURE, "could not send to redis at %s: %s",
			   s->name, strerror(errno));
	return -1;
}

ssize_t
mc_stream_recv(McStream *s, char *buf, size_t len, McErr *err)
{
	ssize_t		n;

	if (s->ssl)
	{
		ERR_clear_error();
		errno = 0;
		n = SSL_read((SSL *) s->ssl, buf, (int) Min(len, INT_MAX));
		if (n > 0)
		{
			s->read_needs = WL_SOCKET_READABLE;
			return n;
		}
		return tls_retry(s, (int) n, &s->read_needs, "", err);
	}
	n = recv(s->fd, buf, len, MSG_DONTWAIT);
	if (n > 0)
		return n;
	if (n == 0)
	{
		mc_err_set(err, ERRCODE_CONNECTION_FAILURE, "redis at %s closed the connection", s->name);
		return -1;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return 0;
	mc_err_set(err, ERRCODE_CONNECTION_FAILURE, "could not read from redis at %s: %s",
			   s->name, strerror(errno));
	return -1;
}
