/*
 * cache.c
 *	  The SQL-callable cache: key(), cache_get/set/del/del_pattern/exists/
 *	  ttl/keys/ping and cache_get_or_set.  Values are JSON text, stored
 *	  compact (as JSON.stringify writes it), so applications and SQL read
 *	  each other's values.  Keys are given and returned without
 *	  meetcache.key_prefix; it is applied here.
 *
 * Invariants:
 *	  - no function takes a key, or a pattern whose literal start is a key,
 *	    in the reserved lease namespace (MC_LEASE_NS), as given or after the
 *	    prefix: leases are made, used and cancelled by lease.c's scripts
 *	    only, which also set and delete keys here;
 *	  - the query of cache_get_or_set runs in a subtransaction of its own,
 *	    read-only, and whatever it wrote is refused and rolled back;
 *	  - every pipeline is bounded (MC_KEYS_CHUNK keys a round trip), each
 *	    round trip under its own command_timeout;
 *	  - Redis text reaches messages only through mc_excerpt.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/params.h"
#include "parser/parse_param.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "meetcache.h"

#define MC_KEYS_CHUNK 1000		/* keys per TYPE/TTL/MEMORY USAGE round trip */
#define DEL_CHUNK 100			/* keys (and their leases) per delete script */
#define SCAN_COUNT "1000"		/* SCAN's COUNT hint per page */
#define MC_EXCERPT_VALUE 44		/* bytes (NUL included) of a value in a message */
#define MC_EXCERPT_REPLY 204	/* ... and of an error reply */

/* ---- helpers ---- */

static char *
prefixed(const char *key)
{
	return psprintf("%s%s", mc_key_prefix, key);
}

/*
 * Refuse a key, or a pattern whose literal start is a key, in the lease
 * namespace: as given, or after meetcache.key_prefix.  Writing a lease key
 * would make every fill of its key wait lease_wait and cache nothing.
 */
static void
check_reserved(const char *given, const char *full, bool glob, const char *what)
{
	if (mc_lease_namespace(given, glob) || mc_lease_namespace(full, glob))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s \"%s\" is in the reserved namespace \"%s\"", what, given, MC_LEASE_NS),
				 errdetail("Keys starting with \"%s\", as given or after meetcache.key_prefix, are meetcache's leases.",
						   MC_LEASE_NS),
				 errhint("Choose another name. meetcache manages lease keys itself: cache_del() and cache_del_pattern() delete a key's lease with the key.")));
}

/* Redis text (a value or an error reply) made fit for a message */
static char *
excerpt(const char *s, int len, int size)
{
	char	   *out = palloc(size);

	mc_excerpt(out, size, s, len);
	return out;
}

static char *
arg_key(FunctionCallInfo fcinfo, int argno, const char *what)
{
	char	   *key;
	int			len;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	key = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	len = strlen(key);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (len > MC_MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too long", what),
				 errdetail("It has %d bytes; the limit is %d.", len, MC_MAX_KEY_BYTES)));
	check_reserved(key, prefixed(key), false, what);
	return key;
}

/* a SCAN pattern under the prefix: the prefix is literal, the rest a glob */
static char *
prefixed_pattern(const char *pattern)
{
	StringInfoData s;

	initStringInfo(&s);
	mc_append_glob_escaped(&s, mc_key_prefix, strlen(mc_key_prefix));
	appendStringInfoString(&s, pattern);
	return s.data;
}

static void
check_reply_error(McReply *r, const char *key)
{
	if (r->type != MC_REPLY_ERROR)
		return;
	if (strncmp(r->str, "WRONGTYPE", 9) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cache key \"%s\" does not hold a string value", key),
				 errdetail("Redis said: %s", excerpt(r->str, r->len, MC_EXCERPT_REPLY))));
	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
			 errmsg("redis refused the command for key \"%s\"", key ? key : ""),
			 errdetail("Redis said: %s", excerpt(r->str, r->len, MC_EXCERPT_REPLY))));
}

/*
 * The TTL to store a key with: ttl_seconds if given (must be positive),
 * else its family's.  Returns 0 and sets *family when the family decides,
 * which may depend on the value (family_ttl).  Errors before any Redis I/O.
 */
static int
ttl_arg(const char *key, FunctionCallInfo fcinfo, int argno, McFamily **family)
{
	McFamily   *f;

	*family = NULL;
	if (!PG_ARGISNULL(argno))
	{
		int			ttl = PG_GETARG_INT32(argno);

		if (ttl <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("ttl_seconds must be positive, not %d", ttl),
					 errhint("Use meetcache.cache_del() to remove a key.")));
		return ttl;
	}
	f = mc_family_for_key(key, strlen(key));
	if (f == NULL || f->ttl_seconds <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no ttl_seconds given and no key family with a TTL matches \"%s\"", key),
				 errhint("Pass ttl_seconds, or add a family with a ttl to meetcache.families.")));
	*family = f;
	return 0;
}

/* a family's TTL for a value: ttl_by_value[value->ttl_field], else ttl_seconds */
static int
family_ttl(McFamily *f, Jsonb *jb)
{
	JsonbValue	v;

	if (f->ttl_field && JB_ROOT_IS_OBJECT(jb) &&
		getKeyJsonValueFromContainer(&jb->root, f->ttl_field, strlen(f->ttl_field), &v) != NULL &&
		v.type == jbvString)
	{
		for (int i = 0; i < f->nttl_values; i++)
			if (f->ttl_values[i] && (int) strlen(f->ttl_values[i]) == v.val.string.len &&
				memcmp(f->ttl_values[i], v.val.string.val, v.val.string.len) == 0)
				return f->ttl_by_value[i];
	}
	return f->ttl_seconds;
}

static int
ttl_final(int ttl, McFamily *f, Jsonb *jb)
{
	return ttl > 0 ? ttl : family_ttl(f, jb);
}

/* JSON text without insignificant whitespace, as JSON.stringify writes it */
static char *
json_compact(const char *in, int len, int *outlen)
{
	char	   *out = palloc(len + 1);
	int			o = 0;
	bool		instr = false;

	for (int i = 0; i < len; i++)
	{
		char		c = in[i];

		if (instr)
		{
			out[o++] = c;
			if (c == '\\' && i + 1 < len)
				out[o++] = in[++i];
			else if (c == '"')
				instr = false;
		}
		else if (c == '"')
		{
			instr = true;
			out[o++] = c;
		}
		else if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			out[o++] = c;
	}
	out[o] = '\0';
	*outlen = o;
	return out;
}

static bool
json_valid(const char *s, int len)
{
	JsonParseErrorType rc;

	if (!pg_verifymbstr(s, len, true))
		return false;
#if PG_VERSION_NUM >= 170000
	{
		JsonLexContext lex;

		makeJsonLexContextCstringLen(&lex, s, len, GetDatabaseEncoding(), true);
		rc = pg_parse_json(&lex, &nullSemAction);
		freeJsonLexContext(&lex);
	}
#elif PG_VERSION_NUM >= 140000
	rc = pg_parse_json(makeJsonLexContextCstringLen((char *) s, len, GetDatabaseEncoding(), true),
					   &nullSemAction);
#else
	rc = pg_parse_json(makeJsonLexContextCstringLen((char *) s, len, true), &nullSemAction);
#endif
	return rc == JSON_SUCCESS;
}

static Datum
json_text_to_jsonb(const char *key, const char *s, size_t len)
{
	char	   *z = pnstrdup(s, len);

	if (!json_valid(z, (int) len))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("cache key \"%s\" does not hold valid JSON", key),
				 errdetail("The value starts with: %s", excerpt(s, len, MC_EXCERPT_VALUE)),
				 errhint("meetcache stores JSON text; delete the key with meetcache.cache_del().")));
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(z));
}

/* ---- key() ---- */

PG_FUNCTION_INFO_V1(meetcache_key);
Datum
meetcache_key(PG_FUNCTION_ARGS)
{
	char	   *name;
	McFamily   *f;
	Datum	   *elems = NULL;
	bool	   *enulls = NULL;
	int			n = 0;
	const char **values;
	StringInfoData out;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("key family must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	f = mc_lookup_family(name);
	if (f == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown cache key family \"%s\"", name),
				 errhint("The families are listed by: SELECT name, template FROM meetcache.families;")));
	if (!PG_ARGISNULL(1))
		deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &enulls, &n);
	if (n != f->tmpl->nargs)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg_plural("key family \"%s\" takes %d argument, not %d",
							   "key family \"%s\" takes %d arguments, not %d",
							   f->tmpl->nargs, name, f->tmpl->nargs, n),
				 errdetail("Its template is \"%s\".", f->tmpl->source)));
	values = palloc(sizeof(char *) * Max(1, n));
	for (int i = 0; i < n; i++)
	{
		if (enulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("argument %d of key family \"%s\" is null", i + 1, name)));
		values[i] = TextDatumGetCString(elems[i]);
	}
	initStringInfo(&out);
	mc_render(&out, f->tmpl, NULL, values);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}

/* ---- simple commands ---- */

/* "cmd key" for the function's key argument (*key); an error reply is thrown */
static McReply *
key_command(FunctionCallInfo fcinfo, const char *cmd, char **key)
{
	char	   *full;
	const char *argv[2];
	size_t		lens[2];
	McReply    *r;

	*key = arg_key(fcinfo, 0, "cache key");
	full = prefixed(*key);
	argv[0] = cmd;
	lens[0] = strlen(cmd);
	argv[1] = full;
	lens[1] = strlen(full);
	r = mc_redis_command(2, argv, lens);
	check_reply_error(r, *key);
	return r;
}

PG_FUNCTION_INFO_V1(meetcache_cache_get);
Datum
meetcache_cache_get(PG_FUNCTION_ARGS)
{
	char	   *key;
	McReply    *r = key_command(fcinfo, "GET", &key);

	if (r->type == MC_REPLY_NIL)
	{
		mc_stat_add(MC_STAT_CACHE_MISSES, 1);
		PG_RETURN_NULL();
	}
	mc_stat_add(MC_STAT_CACHE_HITS, 1);
	PG_RETURN_DATUM(json_text_to_jsonb(key, r->str, r->len));
}

static char *
jsonb_compact_text(Datum jb)
{
	char	   *txt = DatumGetCString(DirectFunctionCall1(jsonb_out, jb));
	int			len;

	return json_compact(txt, strlen(txt), &len);
}

static McReply *
set_command(const char *fullkey, const char *json, int jlen, int ttl, McErr *err)
{
	McPipe		pipe;
	char		ttlbuf[16];
	const char *argv[5];
	size_t		lens[5];
	McReply   **r;

	snprintf(ttlbuf, sizeof(ttlbuf), "%d", ttl);
	argv[0] = "SET";
	lens[0] = 3;
	argv[1] = fullkey;
	lens[1] = strlen(fullkey);
	argv[2] = json;
	lens[2] = jlen;
	argv[3] = "EX";
	lens[3] = 2;
	argv[4] = ttlbuf;
	lens[4] = strlen(ttlbuf);
	mc_pipe_init(&pipe);
	mc_pipe_add(&pipe, 5, argv, lens);
	r = mc_pipe_try(&pipe, err);
	return r ? r[0] : NULL;
}

PG_FUNCTION_INFO_V1(meetcache_cache_set);
Datum
meetcache_cache_set(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0, "cache key");
	char	   *json;
	int			ttl;
	McReply    *r;
	McFamily   *family;
	McErr		err;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("cache value must not be null"),
				 errhint("Store the JSON null as 'null'::jsonb, or delete the key with meetcache.cache_del().")));
	ttl = ttl_arg(key, fcinfo, 2, &family);
	json = jsonb_compact_text(PG_GETARG_DATUM(1));
	ttl = ttl_final(ttl, family, PG_GETARG_JSONB_P(1));
	/* a newer value cancels any lease: a slower reader cannot overwrite it */
	r = mc_lease_set_cancel(prefixed(key), json, ttl, &err);
	if (r == NULL)
		mc_throw(&err);
	check_reply_error(r, key);
	PG_RETURN_VOID();
}

static int
cmp_slot(const void *a, const void *b)
{
	const char *ka = *(char *const *) a;
	const char *kb = *(char *const *) b;

	return mc_cluster_slot(ka, strlen(ka)) - mc_cluster_slot(kb, strlen(kb));
}

/*
 * Delete full keys, each with its lease key in the same atomic script, so
 * that an outstanding lease is cancelled with its key; returns how many of
 * the keys existed.  On a cluster one script holds keys of one slot only.
 */
static int64
unlink_keys(char **keys, int n)
{
	int64		total = 0;
	bool		cluster = mc_redis_cluster();
	int			chunk;

	if (cluster)
		qsort(keys, n, sizeof(char *), cmp_slot);
	for (int i = 0; i < n; i += chunk)
	{
		McErr		err;
		McReply    *r;

		for (chunk = 1; chunk < DEL_CHUNK && i + chunk < n; chunk++)
			if (cluster && mc_cluster_slot(keys[i + chunk], strlen(keys[i + chunk])) !=
				mc_cluster_slot(keys[i], strlen(keys[i])))
				break;
		r = mc_lease_del_pairs(keys + i, chunk, &err);

		if (r == NULL)
			mc_throw(&err);
		check_reply_error(r, NULL);
		total += r->integer;
	}
	return total;
}

PG_FUNCTION_INFO_V1(meetcache_cache_del);
Datum
meetcache_cache_del(PG_FUNCTION_ARGS)
{
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	char	  **keys;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("cache keys must not be null")));
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &enulls, &n);
	keys = palloc(sizeof(char *) * Max(1, n));
	for (int i = 0; i < n; i++)
	{
		char	   *k;

		if (enulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("cache key %d must not be null", i + 1)));
		k = TextDatumGetCString(elems[i]);
		if (k[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cache key %d must not be empty", i + 1)));
		if (strlen(k) > MC_MAX_KEY_BYTES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("cache key %d is too long", i + 1),
					 errdetail("The limit is %d bytes.", MC_MAX_KEY_BYTES)));
		keys[i] = prefixed(k);
		check_reserved(k, keys[i], false, "cache key");
	}
	PG_RETURN_INT64(unlink_keys(keys, n));
}

/*
 * SCAN under the prefix with a glob, on every master of a cluster.  Calls
 * fn for every page of keys (full Redis keys) until fn returns false or
 * the cursor is back to 0 on the last master.
 */
typedef bool (*scan_page_fn) (McReply *keys, void *arg);

static void
scan_match(const char *match, scan_page_fn fn, void *arg);

static void
scan_keys(const char *pattern, scan_page_fn fn, void *arg)
{
	scan_match(prefixed_pattern(pattern), fn, arg);
}

static void
scan_match(const char *match, scan_page_fn fn, void *arg)
{
	char		cursor[32] = "0";
	MemoryContext page_cxt = AllocSetContextCreate(CurrentMemoryContext, "meetcache scan page",
												   ALLOCSET_DEFAULT_SIZES);
	MemoryContext outer = MemoryContextSwitchTo(page_cxt);
	bool		more = true;
	int			node = 0;

	/* each page's replies are freed before the next: memory stays flat */
	while (more)
	{
		const char *argv[6] = {"SCAN", cursor, "MATCH", match, "COUNT", SCAN_COUNT};
		size_t		lens[6] = {4, strlen(cursor), 5, strlen(match), 5, strlen(SCAN_COUNT)};
		McPipe		pipe;
		McReply    *r;

		mc_pipe_init(&pipe);
		mc_pipe_add(&pipe, 6, argv, lens);
		mc_pipe_on_node(&pipe, node);
		r = mc_pipe_exec(&pipe)[0];
		check_reply_error(r, NULL);
		if (r->type != MC_REPLY_ARRAY || r->nelems != 2 ||
			r->elems[0]->type != MC_REPLY_STRING ||
			r->elems[1]->type != MC_REPLY_ARRAY)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("redis sent an unexpected SCAN reply")));
		strlcpy(cursor, r->elems[0]->str, sizeof(cursor));
		if (r->elems[1]->nelems > 0 && !fn(r->elems[1], arg))
			more = false;
		if (strcmp(cursor, "0") == 0 && ++node == mc_redis_masters())
			more = false;
		MemoryContextReset(page_cxt);
		CHECK_FOR_INTERRUPTS();
	}
	MemoryContextSwitchTo(outer);
	MemoryContextDelete(page_cxt);
}

static bool
del_page(McReply *keys, void *arg)
{
	int64	   *total = (int64 *) arg;
	char	  **k = palloc(sizeof(char *) * keys->nelems);
	int			n = 0;

	/* lease keys were handled before; a key is deleted with its lease */
	for (int i = 0; i < keys->nelems; i++)
		if (!mc_lease_namespace(keys->elems[i]->str, false))
			k[n++] = keys->elems[i]->str;
	*total += unlink_keys(k, n);
	return true;
}

static bool
del_lease_page(McReply *keys, void *arg)
{
	McPipe		pipe;
	McReply   **r;

	/* one UNLINK per lease key: on a cluster they are in different slots */
	mc_pipe_init(&pipe);
	for (int i = 0; i < keys->nelems; i++)
	{
		const char *argv[2] = {"UNLINK", keys->elems[i]->str};
		size_t		lens[2] = {6, keys->elems[i]->len};

		mc_pipe_add(&pipe, 2, argv, lens);
	}
	r = mc_pipe_exec(&pipe);
	for (int i = 0; i < pipe.ncmds; i++)
		check_reply_error(r[i], NULL);
	return true;
}

static char *
arg_pattern(FunctionCallInfo fcinfo, int argno)
{
	char	   *p;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("pattern must not be null")));
	p = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (p[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pattern must not be empty"),
				 errhint("Use '*' to match every key under meetcache.key_prefix.")));
	check_reserved(p, prefixed_pattern(p), true, "pattern");
	return p;
}

PG_FUNCTION_INFO_V1(meetcache_cache_del_pattern);
Datum
meetcache_cache_del_pattern(PG_FUNCTION_ARGS)
{
	char	   *pattern = arg_pattern(fcinfo, 0);
	int64		total = 0;
	char	   *untagged,
			   *tagged;

	/*
	 * Leases first, then keys.  A lease holder that stores while the lease
	 * pass runs creates its key before the key pass starts, which then
	 * deletes it; once the lease pass is over, no store can succeed.
	 */
	mc_lease_globs(prefixed_pattern(pattern), &untagged, &tagged);
	scan_match(untagged, del_lease_page, NULL);
	scan_match(tagged, del_lease_page, NULL);
	scan_keys(pattern, del_page, &total);
	PG_RETURN_INT64(total);
}

PG_FUNCTION_INFO_V1(meetcache_cache_exists);
Datum
meetcache_cache_exists(PG_FUNCTION_ARGS)
{
	char	   *key;
	McReply    *r = key_command(fcinfo, "EXISTS", &key);

	PG_RETURN_BOOL(r->integer > 0);
}

PG_FUNCTION_INFO_V1(meetcache_cache_ttl);
Datum
meetcache_cache_ttl(PG_FUNCTION_ARGS)
{
	char	   *key;
	McReply    *r = key_command(fcinfo, "TTL", &key);

	if (r->integer == -2)
		PG_RETURN_NULL();
	PG_RETURN_INT64(r->integer);
}

PG_FUNCTION_INFO_V1(meetcache_cache_ping);
Datum
meetcache_cache_ping(PG_FUNCTION_ARGS)
{
	const char *argv[1] = {"PING"};
	size_t		lens[1] = {4};
	McPipe		pipe;
	McReply   **r;

	/* a cluster answers when every master does */
	mc_pipe_init(&pipe);
	for (int n = 0; n < mc_redis_masters(); n++)
	{
		mc_pipe_add(&pipe, 1, argv, lens);
		pipe.route[n] = MC_ROUTE_NODE(n);
	}
	r = mc_pipe_exec(&pipe);
	for (int n = 0; n < pipe.ncmds; n++)
		check_reply_error(r[n], NULL);
	PG_RETURN_TEXT_P(cstring_to_text(r[0]->str ? r[0]->str : ""));
}

/* ---- cache_keys ---- */

typedef struct KeysState
{
	List	   *keys;			/* full keys */
	int			max;
	MemoryContext cxt;			/* where the list lives */
} KeysState;

static bool
keys_page(McReply *keys, void *arg)
{
	KeysState  *st = (KeysState *) arg;
	MemoryContext old = MemoryContextSwitchTo(st->cxt);

	for (int i = 0; i < keys->nelems && list_length(st->keys) < st->max; i++)
		st->keys = lappend(st->keys, pnstrdup(keys->elems[i]->str, keys->elems[i]->len));
	MemoryContextSwitchTo(old);
	return list_length(st->keys) < st->max;
}

static int
cmp_str(const ListCell *a, const ListCell *b)
{
	return strcmp((char *) lfirst(a), (char *) lfirst(b));
}

/*
 * TYPE, TTL and MEMORY USAGE of keys[0..n-1] in one round trip, one row
 * each into ts (keys gone since the SCAN are skipped).
 */
static void
keys_describe(char **keys, int n, Tuplestorestate *ts, TupleDesc desc)
{
	McPipe		pipe;
	McReply   **r;
	int			plen = strlen(mc_key_prefix);

	mc_pipe_init(&pipe);
	for (int i = 0; i < n; i++)
	{
		const char *k = keys[i];
		const char *a1[2] = {"TYPE", k};
		const char *a2[2] = {"TTL", k};
		const char *a3[3] = {"MEMORY", "USAGE", k};
		size_t		l1[2] = {4, strlen(k)};
		size_t		l2[2] = {3, strlen(k)};
		size_t		l3[3] = {6, 5, strlen(k)};

		mc_pipe_add(&pipe, 2, a1, l1);
		mc_pipe_add(&pipe, 2, a2, l2);
		mc_pipe_add(&pipe, 3, a3, l3);
	}
	r = mc_pipe_exec(&pipe);

	for (int i = 0; i < n; i++)
	{
		McReply    *type = r[i * 3],
				   *ttl = r[i * 3 + 1],
				   *size = r[i * 3 + 2];
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		if (type->type == MC_REPLY_STATUS && strcmp(type->str, "none") == 0)
			continue;			/* expired or deleted since the SCAN */
		values[0] = CStringGetTextDatum(keys[i] + plen);
		if (type->type == MC_REPLY_STATUS)
			values[1] = CStringGetTextDatum(type->str);
		else
			nulls[1] = true;
		if (ttl->type == MC_REPLY_INTEGER && ttl->integer >= -1)
			values[2] = Int64GetDatum(ttl->integer);
		else
			nulls[2] = true;
		if (size->type == MC_REPLY_INTEGER)
			values[3] = Int64GetDatum(size->integer);
		else
			nulls[3] = true;
		tuplestore_putvalues(ts, desc, values, nulls);
	}
}

PG_FUNCTION_INFO_V1(meetcache_cache_keys);
Datum
meetcache_cache_keys(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *pattern = arg_pattern(fcinfo, 0);
	KeysState	st = {NIL, 0, CurrentMemoryContext};
	TupleDesc	desc;
	Tuplestorestate *ts;
	MemoryContext old;
	MemoryContext chunk_cxt;
	char	  **keys;
	int			nkeys;
	ListCell   *lc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (PG_ARGISNULL(1) || PG_GETARG_INT32(1) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_keys must be a positive number")));
	st.max = PG_GETARG_INT32(1);

	scan_keys(pattern, keys_page, &st);
	list_sort(st.keys, cmp_str);
	nkeys = list_length(st.keys);
	keys = palloc(sizeof(char *) * Max(1, nkeys));
	foreach(lc, st.keys)
		keys[foreach_current_index(lc)] = lfirst(lc);

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	desc = CreateTupleDescCopy(desc);
	ts = tuplestore_begin_heap(true, false, work_mem);
	MemoryContextSwitchTo(old);

	/* bounded round trips, each under its own deadline; replies freed as we go */
	chunk_cxt = AllocSetContextCreate(CurrentMemoryContext, "meetcache cache_keys chunk",
									  ALLOCSET_DEFAULT_SIZES);
	for (int i = 0; i < nkeys; i += MC_KEYS_CHUNK)
	{
		old = MemoryContextSwitchTo(chunk_cxt);
		keys_describe(keys + i, Min(MC_KEYS_CHUNK, nkeys - i), ts, desc);
		MemoryContextSwitchTo(old);
		MemoryContextReset(chunk_cxt);
		CHECK_FOR_INTERRUPTS();
	}
	MemoryContextDelete(chunk_cxt);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = ts;
	rsinfo->setDesc = desc;
	return (Datum) 0;
}

/* ---- cache_get_or_set ---- */

typedef struct VarParams
{
	Oid		   *types;
	int			n;
} VarParams;

static void
var_param_setup(ParseState *pstate, void *arg)
{
	VarParams  *vp = (VarParams *) arg;

#if PG_VERSION_NUM >= 150000
	setup_parse_variable_parameters(pstate, &vp->types, &vp->n);
#else
	parse_variable_parameters(pstate, &vp->types, &vp->n);
#endif
}

/* to_json(value) for a value of any type */
static char *
value_to_json(Datum value, Oid type)
{
	FmgrInfo	flinfo;
	FuncExpr   *expr;
	Datum		res;

	fmgr_info(F_TO_JSON, &flinfo);
	expr = makeFuncExpr(F_TO_JSON, JSONOID,
						list_make1(makeNullConst(type, -1, InvalidOid)),
						InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	fmgr_info_set_expr((Node *) expr, &flinfo);
	res = FunctionCall1(&flinfo, value);
	return text_to_cstring(DatumGetTextPP(res));
}

/* one cache_get_or_set call: its key, its query, and whether it may store */
typedef struct Fill
{
	char	   *key;			/* as given */
	char	   *full;			/* with meetcache.key_prefix */
	char	   *lease;			/* full's lease key */
	char		token[MC_LEASE_TOKEN];
	char	   *query;
	int			ttl;			/* ttl_seconds, or 0: the family's (by value) */
	McFamily   *family;
	Datum	   *ptexts;			/* the query's parameters, as text */
	bool	   *pnulls;
	int			nparams;
	bool		bypass;			/* neither take a lease nor store */
	bool		use_lease;
	bool		redis_ok;		/* false: Redis did not answer, err says why */
	McErr		err;
	bool		hold;			/* we hold the lease */
} Fill;

/* parse the query with parameters whose types it infers; one SELECT only */
static SPIPlanPtr
prepare_query(const Fill *f, VarParams *vp)
{
	SPIPlanPtr	plan;
	List	   *sources;

#if PG_VERSION_NUM >= 140000
	SPIPrepareOptions opts;

	memset(&opts, 0, sizeof(opts));
	opts.parserSetup = var_param_setup;
	opts.parserSetupArg = vp;
	opts.parseMode = RAW_PARSE_DEFAULT;
	plan = SPI_prepare_extended(f->query, &opts);
#else
	plan = SPI_prepare_params(f->query, var_param_setup, vp, 0);
#endif
	if (plan == NULL)
		elog(ERROR, "meetcache: could not prepare query: %s", SPI_result_code_string(SPI_result));
	sources = SPI_plan_get_plan_sources(plan);
	if (list_length(sources) != 1 ||
		((CachedPlanSource *) linitial(sources))->commandTag != CMDTAG_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the query of cache_get_or_set must be a single SELECT")));
	if (vp->n != f->nparams)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_PARAMETER),
				 errmsg_plural("the query uses %d parameter but %d were given",
							   "the query uses %d parameters but %d were given",
							   vp->n, vp->n, f->nparams),
				 errhint("Pass one value per $n after ttl_seconds.")));
	return plan;
}

/* the parameters' text values read as the types the query gave them */
static ParamListInfo
bind_params(const Fill *f, const VarParams *vp)
{
	ParamListInfo params = makeParamList(f->nparams);

	for (int i = 0; i < f->nparams; i++)
	{
		ParamExternData *p = &params->params[i];
		Oid			typ = vp->types[i] == InvalidOid || vp->types[i] == UNKNOWNOID ? TEXTOID : vp->types[i];

		p->ptype = typ;
		p->pflags = PARAM_FLAG_CONST;
		p->isnull = f->pnulls[i];
		if (f->pnulls[i])
			p->value = (Datum) 0;
		else
		{
			Oid			infn,
						ioparam;

			getTypeInputInfo(typ, &infn, &ioparam);
			p->value = OidInputFunctionCall(infn, TextDatumGetCString(f->ptexts[i]), ioparam, -1);
		}
	}
	if (f->nparams > 0 && vp->types[0] == InvalidOid)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_PARAMETER),
				 errmsg("the query does not use parameter $1")));
	return params;
}

/* the JSON of the query's result (SPI_tuptable): no row is null */
static char *
result_json(const Fill *f)
{
	HeapTuple	tup;
	TupleDesc	td = SPI_tuptable->tupdesc;
	bool		isnull;

	if (SPI_processed > 1)
		ereport(ERROR,
				(errcode(ERRCODE_CARDINALITY_VIOLATION),
				 errmsg("the query for cache key \"%s\" returned more than one row", f->key),
				 errhint("Aggregate rows into one value, e.g. SELECT json_agg(t) FROM (...) t, to cache a list.")));
	if (SPI_processed == 0)
		return "null";
	tup = SPI_tuptable->vals[0];
	if (td->natts == 1)
	{
		Datum		v = SPI_getbinval(tup, td, 1, &isnull);

		return isnull ? "null" : value_to_json(v, TupleDescAttr(td, 0)->atttypid);
	}
	return text_to_cstring(DatumGetTextPP(DirectFunctionCall1(row_to_json,
															  heap_copy_tuple_as_datum(tup, BlessTupleDesc(td)))));
}

/*
 * Run the query as the caller, with its parameters bound (types inferred
 * from the query, values given as text).  Returns its JSON.  Called by
 * run_query_readonly only.
 */
static char *
run_query(const Fill *f)
{
	VarParams	vp = {NULL, 0};
	SPIPlanPtr	plan;
	ParamListInfo params;
	int			ret;
	char	   *json;
	MemoryContext outer = CurrentMemoryContext;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = prepare_query(f, &vp);
	params = bind_params(f, &vp);

	/*
	 * A snapshot taken now, after the lease: a commit whose invalidation
	 * has already run is visible to it (READ COMMITTED; the other levels
	 * never store).  SPI read-only mode runs the query on it.
	 */
	PushActiveSnapshot(GetTransactionSnapshot());
	ret = SPI_execute_plan_with_paramlist(plan, params, true, 2);
	PopActiveSnapshot();
	if (ret != SPI_OK_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the query of cache_get_or_set must be a single SELECT")));
	json = MemoryContextStrdup(outer, result_json(f));
	SPI_finish();
	return json;
}

/*
 * run_query in a subtransaction of its own, with the transaction read-only
 * (XactReadOnly) throughout, so that no function the query calls can write:
 * what the executor checks fails with its own 25006 error, and what it does
 * not check but a write needs, a transaction id, is caught here (on
 * PostgreSQL 15 large objects and temporary tables).  The subtransaction is
 * always rolled back: nothing the query did outlives its result.
 */
static char *
run_query_readonly(const Fill *f)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	bool		save_ro = XactReadOnly;
	char	   *json = NULL;
	bool		wrote = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	XactReadOnly = true;
	PG_TRY();
	{
		json = run_query(f);
		wrote = GetCurrentTransactionIdIfAny() != InvalidTransactionId;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		XactReadOnly = save_ro;
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ReThrowError(edata);
	}
	PG_END_TRY();
	XactReadOnly = save_ro;
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (wrote)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("the query for cache key \"%s\" must not write", f->key),
				 errdetail("The query of cache_get_or_set runs read-only; what it wrote (a large object or a temporary table, for instance) was rolled back."),
				 errhint("Compute the value with a query that only reads.")));
	return json;
}

/* store (or not) a computed value; see cache_get_or_set */
static void
store_result(Fill *f, const char *json, int jlen, int ttl)
{
	McReply    *r;

	if (!f->redis_ok)
	{
		mc_stat_add(MC_STAT_CACHE_BYPASSES, 1);
		ereport(WARNING,
				(errcode(f->err.sqlstate),
				 errmsg("meetcache: cache unavailable, returning the query result uncached: %s",
						excerpt(f->err.msg, strlen(f->err.msg), 4 * sizeof(f->err.msg)))));
		return;
	}
	if (f->bypass || (f->use_lease && !f->hold))
	{
		mc_stat_add(MC_STAT_CACHE_BYPASSES, 1);
		return;
	}
	if (f->hold)				/* stored only if no invalidation cancelled our lease meanwhile */
		r = mc_lease_set(f->full, f->lease, f->token, json, ttl, &f->err);
	else						/* meetcache.lease_check = off: a plain SET, racy by design */
		r = set_command(f->full, json, jlen, ttl, &f->err);
	if (r == NULL)
		ereport(WARNING,
				(errcode(f->err.sqlstate),
				 errmsg("meetcache: could not store cache key \"%s\": %s", f->key,
						excerpt(f->err.msg, strlen(f->err.msg), 4 * sizeof(f->err.msg)))));
	else
	{
		check_reply_error(r, f->key);
		if (f->hold && r->type == MC_REPLY_INTEGER && r->integer == 0)
			mc_stat_add(MC_STAT_LEASE_REFUSED, 1);
	}
}

/* the arguments: key, query, ttl_seconds and the query's parameters */
static void
fill_args(FunctionCallInfo fcinfo, Fill *f)
{
	f->key = arg_key(fcinfo, 0, "cache key");
	f->full = prefixed(f->key);
	f->lease = mc_lease_of(f->full);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("query must not be null")));
	f->query = text_to_cstring(PG_GETARG_TEXT_PP(1));
	f->ttl = ttl_arg(f->key, fcinfo, 2, &f->family);
	if (!PG_ARGISNULL(3))
		deconstruct_array(PG_GETARG_ARRAYTYPE_P(3), TEXTOID, -1, false, TYPALIGN_INT,
						  &f->ptexts, &f->pnulls, &f->nparams);
	f->redis_ok = true;
}

/*
 * Never publish what may be uncommitted or outdated: after this
 * transaction wrote anything, while it has pending invalidations, or
 * when its snapshot predates the lease (REPEATABLE READ, SERIALIZABLE).
 * Such a call neither takes a lease nor stores.
 */
static void
fill_decide(Fill *f)
{
	f->bypass = GetTopTransactionIdIfAny() != InvalidTransactionId || mc_pending_any() ||
		IsolationUsesXactSnapshot() ||
		RecoveryInProgress();	/* a standby may not have replayed the commit yet */
	f->use_lease = mc_lease_check && !f->bypass;
	mc_lease_token(f->token);
}

/* a plain GET (no lease); the reply, or NULL when Redis did not answer */
static McReply *
get_command(Fill *f)
{
	McPipe		pipe;
	McReply   **rs;
	const char *argv[2] = {"GET", f->full};
	size_t		lens[2] = {3, strlen(f->full)};

	mc_pipe_init(&pipe);
	mc_pipe_add(&pipe, 2, argv, lens);
	rs = mc_pipe_try(&pipe, &f->err);
	return rs ? rs[0] : NULL;
}

/*
 * The cached value, if any (a hit, or what the lease holder stored while
 * we waited); otherwise sets what the miss may do (hold, redis_ok).
 */
static bool
fill_lookup(Fill *f, Datum *value)
{
	McReply    *r = NULL;

	if (GetTopTransactionIdIfAny() != InvalidTransactionId || mc_pending_any())
		return false;			/* our own writes may be behind the key: do not even read it */
	if (!f->use_lease)
	{
		r = get_command(f);
		f->redis_ok = r != NULL;
		if (r)
			check_reply_error(r, f->key);
		if (r == NULL || r->type != MC_REPLY_STRING)
			return false;
	}
	else
	{
		switch (mc_lease_get(f->full, f->lease, f->token, &r, &f->err))
		{
			case MC_LEASE_VALUE:
				break;
			case MC_LEASE_HELD:
				f->hold = true;
				return false;
			case MC_LEASE_TIMED_OUT:
				return false;	/* run the query ourselves, without caching */
			case MC_LEASE_REFUSED:
				check_reply_error(r, f->key);	/* throws */
				return false;
			case MC_LEASE_NO_REDIS:
				f->redis_ok = false;
				return false;
		}
	}
	mc_stat_add(MC_STAT_CACHE_HITS, 1);
	*value = json_text_to_jsonb(f->key, r->str, r->len);
	return true;
}

/* a miss: run the query, store its value as we may, return it */
static Datum
fill_compute(Fill *f)
{
	char	   *json = run_query_readonly(f);
	int			jlen;
	Datum		result;

	json = json_compact(json, strlen(json), &jlen);
	result = DirectFunctionCall1(jsonb_in, CStringGetDatum(json));
	store_result(f, json, jlen, ttl_final(f->ttl, f->family, DatumGetJsonbP(result)));
	return result;
}

PG_FUNCTION_INFO_V1(meetcache_cache_get_or_set);
Datum
meetcache_cache_get_or_set(PG_FUNCTION_ARGS)
{
	Fill		f = {0};
	Datum		value;
	volatile Datum result = (Datum) 0;

	fill_args(fcinfo, &f);
	fill_decide(&f);
	if (fill_lookup(&f, &value))
		PG_RETURN_DATUM(value);
	mc_stat_add(MC_STAT_CACHE_MISSES, 1);

	/* any error from the query to the store gives the lease back */
	PG_TRY();
	{
		result = fill_compute(&f);
		mc_lease_forget();		/* stored, refused or released: ours no more */
	}
	PG_CATCH();
	{
		if (f.hold)
			mc_lease_release(f.lease, f.token);
		PG_RE_THROW();
	}
	PG_END_TRY();
	PG_RETURN_DATUM(result);
}
