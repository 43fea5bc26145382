/*
 * transport.h
 *	  The byte stream to one Redis endpoint (transport.c): TCP, a Unix
 *	  domain socket or TLS over TCP.  Callers see one kind of stream; what
 *	  it runs over is chosen by the endpoint it was opened for.
 *
 * A stream is an object per endpoint, so a client of several servers
 * (Redis Cluster: one per node; Sentinel: a sentinel, then the master)
 * holds one McStream each.  Every function takes a deadline and the
 * waiting discipline: interruptible (SQL functions: the process latch,
 * so cancel and statement_timeout work; may throw) or not (the commit
 * path: poll(), no palloc, no throw).
 */
#ifndef MC_TRANSPORT_H
#define MC_TRANSPORT_H

#include "meetcache.h"
#include "storage/latch.h"

#define MC_WAIT_READ	0x01
#define MC_WAIT_WRITE	0x02

typedef struct McStream
{
	pgsocket	fd;
	void	   *ssl;			/* SSL *, NULL on a plain stream */
	int			read_needs;		/* socket event the last SSL_read waits for */
	int			write_needs;	/* socket event the last SSL_write waits for */
	WaitEventSet *wes;			/* for interruptible waits; lazily made */
	int			wes_pos;
	char		name[300];		/* the endpoint, for messages */
} McStream;

#define MC_STREAM_INIT {PGINVALID_SOCKET, NULL, 0, 0, NULL, -1, ""}

/*
 * Connect to ep (resolving a host name first), then run the TLS handshake
 * when ep->tls, all before deadline.  False with err filled on failure;
 * the stream is then closed.  Interruptible waits may throw, leaving a
 * half-open stream that mc_stream_close() releases.
 */
extern bool mc_stream_open(McStream *s, const McEndpoint *ep,
						   TimestampTz deadline, bool interruptible, McErr *err);
extern void mc_stream_close(McStream *s);
extern bool mc_stream_is_open(const McStream *s);

/*
 * Wait until the stream can make progress on events (MC_WAIT_*): returns
 * the ready ones, or 0 at the deadline.  Data already decrypted but not
 * yet read counts as readable.
 */
extern int	mc_stream_wait(McStream *s, int events, TimestampTz deadline,
						   bool interruptible);

/* bytes moved (0: would block), or -1 with err filled (closed, failed) */
extern ssize_t mc_stream_send(McStream *s, const char *buf, size_t len, McErr *err);
extern ssize_t mc_stream_recv(McStream *s, char *buf, size_t len, McErr *err);

/* "host:port", "[v6]:port" or the socket path */
extern void mc_endpoint_name(const McEndpoint *ep, char *buf, size_t len);

/* milliseconds until deadline, rounded up; 0 once it passed */
extern long mc_ms_left(TimestampTz deadline);

/* wait ms milliseconds, never past deadline (interruptible: may throw) */
extern void mc_nap(long ms, TimestampTz deadline, bool interruptible);

/* fill err; the message is made printable (it may quote a server) */
extern void mc_err_set(McErr *err, int sqlstate, const char *fmt,...) pg_attribute_printf(3, 4);

#endif							/* MC_TRANSPORT_H */
