/*
 * rules.c
 *	  The rule catalog (meetcache.families, meetcache.rules) as seen by C:
 *	  loading and caching it per backend, key templates, resolving rule
 *	  columns on a concrete table (exact name, else its camelCase spelling),
 *	  and turning changed rows into keys, with one batched lookup query per
 *	  group of related-table rules per statement.
 *
 * The cache is dropped on any relcache invalidation of a watched relation:
 * the catalog tables (a statement trigger on them broadcasts one), the
 * tables rules were compiled for, and the tables their lookups read.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/genam.h"
#include "access/nbtree.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_am.h"
#include "parser/parse_coerce.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "nodes/makefuncs.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "utils/varlena.h"

#include "meetcache.h"

typedef struct RawRule
{
	int			id;
	char	   *table_name;
	McFamily   *family;
	char	  **args;			/* family->tmpl->nargs column names */
	uint8		events;
	char	   *when_column;	/* NULL: unconditional */
	int			nwhen;
	char	  **when_values;
	char	   *via_table;		/* NULL: direct rule */
	char	   *via_column;
	char	   *match_column;
} RawRule;

typedef struct CRule
{
	RawRule    *raw;
	int		   *cols;			/* direct: source attnums; lookup: result column (1-based) */
	int			group;			/* -1: direct */
	AttrNumber	cond_attno;
} CRule;

typedef struct LGroup
{
	Oid			via_relid;
	AttrNumber	match_attno;	/* in the changed table */
	char	   *via_colname;	/* resolved, in the via table */
	AttrNumber	cond_attno;
	RawRule    *cond;			/* rule whose when_* applies (NULL: none) */
	int			ncols;
	char	  **cols;			/* resolved via-table column names selected */
	uint8		events;
	SPIPlanPtr	plan;			/* fallback: SPI query (no usable index) */
	/* preferred: a direct probe of a btree index on via_colname */
	bool		index_checked;
	Oid			indexoid;		/* InvalidOid: use the SPI plan */
	RegProcedure eqproc;
	Oid			collation;
	Oid			typinput;		/* text -> via column type */
	Oid			typioparam;
	AttrNumber *col_attnos;		/* ncols, in the via table */
	FmgrInfo   *col_out;
	bool	   *col_is_text;
} LGroup;

typedef struct McRelRules
{
	Oid			relid;
	char	   *table_name;
	int			nrules;
	CRule	   *rules;
	int			ngroups;
	LGroup	   *groups;
	int			natts;
	FmgrInfo   *outfn;			/* per attribute, lazily set */
	bool	   *outfn_set;
	bool	   *is_text;
} McRelRules;

static MemoryContext rules_cxt = NULL;
static bool rules_valid = false;
static uint64 rules_inval_count = 0;	/* bumped by every relevant invalidation */
static int	nfamilies = 0;
static McFamily **families = NULL;
static int	nraw = 0;
static RawRule *raw_rules = NULL;
static Oid	rules_relid = InvalidOid;
static Oid	families_relid = InvalidOid;
static int	nrels = 0;
static McRelRules **rels = NULL;
static List *plans_to_free = NIL;	/* SPI plans of a dropped cache */

static McFamily *mc_find_family(const char *name);

/* ---- templates and globs ---- */

void
mc_append_glob_escaped(StringInfo out, const char *s, int len)
{
	for (int i = 0; i < len; i++)
	{
		if (s[i] == '*' || s[i] == '?' || s[i] == '[' || s[i] == ']' || s[i] == '\\')
			appendStringInfoChar(out, '\\');
		appendStringInfoChar(out, s[i]);
	}
}

/*
 * Glob match for the patterns we generate: '*' matches any run, '\x' is a
 * literal x, everything else is literal.
 */
bool
mc_glob_match(const char *pat, int plen, const char *s, int slen)
{
	int			p = 0,
				i = 0,
				star_p = -1,
				star_i = 0;

	while (i < slen)
	{
		if (p < plen && pat[p] == '*')
		{
			star_p = ++p;
			star_i = i;
			continue;
		}
		if (p < plen)
		{
			char		c = pat[p];
			int			step = 1;

			if (c == '\\' && p + 1 < plen)
			{
				c = pat[p + 1];
				step = 2;
			}
			if (c == s[i])
			{
				p += step;
				i++;
				continue;
			}
		}
		if (star_p < 0)
			return false;
		p = star_p;
		i = ++star_i;
	}
	while (p < plen && pat[p] == '*')
		p++;
	return p == plen;
}

static McTemplate *
mc_parse_template(const char *tmpl)
{
	McTemplate *t = palloc0(sizeof(McTemplate));
	List	   *lits = NIL,
			   *args = NIL;
	StringInfoData lit,
				glob;
	const char *p = tmpl;
	int			i;

	initStringInfo(&lit);
	initStringInfo(&glob);
	while (*p)
	{
		if (*p == '{')
		{
			const char *close = strchr(p, '}');
			const char *q;

			if (close == NULL || close == p + 1)
				goto bad;
			for (q = p + 1; q < close; q++)
				if (!(isalnum((unsigned char) *q) || *q == '_'))
					goto bad;
			lits = lappend(lits, pnstrdup(lit.data, lit.len));
			args = lappend(args, pnstrdup(p + 1, close - p - 1));
			mc_append_glob_escaped(&glob, lit.data, lit.len);
			appendStringInfoChar(&glob, '*');
			t->literal_chars += lit.len;
			resetStringInfo(&lit);
			p = close + 1;
			continue;
		}
		if (*p == '}')
			goto bad;
		appendStringInfoChar(&lit, *p++);
	}
	lits = lappend(lits, pnstrdup(lit.data, lit.len));
	mc_append_glob_escaped(&glob, lit.data, lit.len);
	t->literal_chars += lit.len;
	if (t->literal_chars == 0 && list_length(args) == 0)
		goto bad;
	if (list_length(args) > 64)
		goto bad;

	t->nargs = list_length(args);
	t->argnames = palloc(sizeof(char *) * Max(1, t->nargs));
	t->lits = palloc(sizeof(char *) * (t->nargs + 1));
	t->litlens = palloc(sizeof(int) * (t->nargs + 1));
	i = 0;
	for (ListCell *lc = list_head(args); lc; lc = lnext(args, lc))
		t->argnames[i++] = lfirst(lc);
	i = 0;
	for (ListCell *lc = list_head(lits); lc; lc = lnext(lits, lc))
	{
		t->lits[i] = lfirst(lc);
		t->litlens[i] = strlen(t->lits[i]);
		i++;
	}
	t->glob = glob.data;
	t->source = pstrdup(tmpl);
	return t;

bad:
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid key template \"%s\"", tmpl),
			 errdetail("A template is literal text with placeholders such as {id}; placeholder names are letters, digits and underscores, and braces appear only around them."),
			 errhint("Example: \"meeting:{meeting_id}:participants\".")));
	return NULL;
}

void
mc_render(StringInfo out, McTemplate *t, const char *prefix, const char **values)
{
	if (prefix)
		appendStringInfoString(out, prefix);
	for (int i = 0; i < t->nargs; i++)
	{
		appendBinaryStringInfo(out, t->lits[i], t->litlens[i]);
		appendStringInfoString(out, values[i]);
	}
	appendBinaryStringInfo(out, t->lits[t->nargs], t->litlens[t->nargs]);
}

/* ---- loading the catalog ---- */

static void
rules_inval_callback(Datum arg, Oid relid)
{
	bool		hit = false;

	if (!OidIsValid(relid) || relid == rules_relid || relid == families_relid ||
		!OidIsValid(rules_relid))
		hit = true;
	for (int i = 0; i < nrels && !hit; i++)
	{
		if (rels[i]->relid == relid)
			hit = true;
		for (int g = 0; g < rels[i]->ngroups && !hit; g++)
			if (rels[i]->groups[g].via_relid == relid)
				hit = true;
	}
	if (hit)
	{
		rules_valid = false;
		rules_inval_count++;
	}
}

void
mc_rules_init(void)
{
	CacheRegisterRelcacheCallback(rules_inval_callback, (Datum) 0);
}

static char *
spi_text(HeapTuple tup, TupleDesc td, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, td, col, &isnull);

	if (isnull)
		return NULL;
	return TextDatumGetCString(d);
}

static char **
spi_text_array(HeapTuple tup, TupleDesc td, int col, int *n)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, td, col, &isnull);
	Datum	   *elems;
	bool	   *enulls;
	char	  **out;

	*n = 0;
	if (isnull)
		return NULL;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &enulls, n);
	out = palloc(sizeof(char *) * Max(1, *n));
	for (int i = 0; i < *n; i++)
		out[i] = enulls[i] ? NULL : TextDatumGetCString(elems[i]);
	return out;
}

static void
drop_cache(void)
{
	/* SPI plans are freed later, outside any callback */
	for (int i = 0; i < nrels; i++)
		for (int g = 0; g < rels[i]->ngroups; g++)
			if (rels[i]->groups[g].plan)
			{
				MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

				plans_to_free = lappend(plans_to_free, rels[i]->groups[g].plan);
				MemoryContextSwitchTo(old);
			}
	/*
	 * Callers up the stack may still hold pointers into the old generation
	 * (a lookup that ran user code which reloaded the cache): it lives on
	 * until the end of the transaction instead of being freed now.
	 */
	if (rules_cxt)
		MemoryContextSetParent(rules_cxt, TopTransactionContext);
	rules_cxt = AllocSetContextCreate(CacheMemoryContext, "meetcache rules",
									  ALLOCSET_DEFAULT_SIZES);
	nfamilies = 0;
	families = NULL;
	nraw = 0;
	raw_rules = NULL;
	nrels = 0;
	rels = NULL;
}

/* run a catalog query on a fresh snapshot (SPI connected); rows in SPI_tuptable */
static void
catalog_query(const char *sql)
{
	SPIPlanPtr	plan = SPI_prepare(sql, 0, NULL);

	if (plan == NULL ||
		SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "meetcache: could not read its catalog: %s", sql);
}

static void
load_catalog(void)
{
	Oid			nsp;
	MemoryContext old;
	uint64		inval_before;

	drop_cache();
	while (plans_to_free != NIL)
	{
		SPIPlanPtr	plan = linitial(plans_to_free);

		plans_to_free = list_delete_first(plans_to_free);
		SPI_freeplan(plan);
	}

	nsp = get_namespace_oid("meetcache", true);
	if (!OidIsValid(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"meetcache\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION meetcache.")));
	rules_relid = get_relname_relid("rules", nsp);
	families_relid = get_relname_relid("families", nsp);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/*
	 * Read the catalog with a fresh snapshot, not the caller's (which may be
	 * an old REPEATABLE READ one), after taking the locks; an invalidation
	 * arriving meanwhile leaves the cache marked stale for the next use.
	 */
	inval_before = rules_inval_count;
	catalog_query("SELECT name, template, ttl_seconds, ttl_field, "
				  "(SELECT array_agg(key ORDER BY key) FROM jsonb_each(ttl_by_value)), "
				  "(SELECT array_agg(value::text::int ORDER BY key) FROM jsonb_each(ttl_by_value)) "
				  "FROM meetcache.families ORDER BY name");
	old = MemoryContextSwitchTo(rules_cxt);
	nfamilies = SPI_processed;
	families = palloc(sizeof(McFamily *) * Max(1, nfamilies));
	for (int i = 0; i < nfamilies; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		McFamily   *f = palloc0(sizeof(McFamily));
		bool		isnull;
		Datum		ttl;

		f->name = spi_text(tup, td, 1);
		f->tmpl = mc_parse_template(spi_text(tup, td, 2));
		ttl = SPI_getbinval(tup, td, 3, &isnull);
		f->ttl_seconds = isnull ? 0 : DatumGetInt32(ttl);
		f->ttl_field = spi_text(tup, td, 4);
		if (f->ttl_field)
		{
			int			n2;
			Datum		a = SPI_getbinval(tup, td, 6, &isnull);

			f->ttl_values = spi_text_array(tup, td, 5, &f->nttl_values);
			f->ttl_by_value = palloc0(sizeof(int) * Max(1, f->nttl_values));
			if (!isnull)
			{
				Datum	   *elems;
				bool	   *enulls;

				deconstruct_array(DatumGetArrayTypeP(a), INT4OID, 4, true, TYPALIGN_INT,
								  &elems, &enulls, &n2);
				for (int k = 0; k < n2 && k < f->nttl_values; k++)
					f->ttl_by_value[k] = DatumGetInt32(elems[k]);
			}
		}
		families[i] = f;
	}
	MemoryContextSwitchTo(old);

	catalog_query("SELECT id, table_name, family, args, on_insert, on_update, on_delete, "
				  "when_column, when_values, via_table, via_column, match_column "
				  "FROM meetcache.rules WHERE enabled ORDER BY id");
	old = MemoryContextSwitchTo(rules_cxt);
	nraw = SPI_processed;
	raw_rules = palloc0(sizeof(RawRule) * Max(1, nraw));
	for (int i = 0; i < nraw; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		RawRule    *r = &raw_rules[i];
		bool		isnull;
		char	   *fam;
		int			nargs;
		char	  **args;

		r->id = DatumGetInt32(SPI_getbinval(tup, td, 1, &isnull));
		r->table_name = spi_text(tup, td, 2);
		fam = spi_text(tup, td, 3);
		r->family = mc_find_family(fam);
		if (r->family == NULL)
			elog(ERROR, "meetcache rule %d names unknown family \"%s\"", r->id, fam);
		args = spi_text_array(tup, td, 4, &nargs);
		if (args == NULL)
		{
			args = r->family->tmpl->argnames;
			nargs = r->family->tmpl->nargs;
		}
		if (nargs != r->family->tmpl->nargs)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("meetcache rule %d gives %d arguments, family \"%s\" takes %d",
							r->id, nargs, fam, r->family->tmpl->nargs)));
		r->args = args;
		if (DatumGetBool(SPI_getbinval(tup, td, 5, &isnull)))
			r->events |= MC_EV_INSERT;
		if (DatumGetBool(SPI_getbinval(tup, td, 6, &isnull)))
			r->events |= MC_EV_UPDATE;
		if (DatumGetBool(SPI_getbinval(tup, td, 7, &isnull)))
			r->events |= MC_EV_DELETE;
		r->when_column = spi_text(tup, td, 8);
		r->when_values = spi_text_array(tup, td, 9, &r->nwhen);
		r->via_table = spi_text(tup, td, 10);
		r->via_column = spi_text(tup, td, 11);
		r->match_column = spi_text(tup, td, 12);
	}
	MemoryContextSwitchTo(old);
	SPI_finish();
	rules_valid = (rules_inval_count == inval_before);
}

static void
ensure_catalog(void)
{
	if (!rules_valid)
		load_catalog();
}

static McFamily *
mc_find_family(const char *name)
{
	for (int i = 0; i < nfamilies; i++)
		if (strcmp(families[i]->name, name) == 0)
			return families[i];
	return NULL;
}

/* public: load the catalog first */
McFamily *
mc_lookup_family(const char *name)
{
	ensure_catalog();
	return mc_find_family(name);
}

/* the most specific family whose template matches an unprefixed key */
McFamily *
mc_family_for_key(const char *key, int len)
{
	McFamily   *best = NULL;

	ensure_catalog();
	for (int i = 0; i < nfamilies; i++)
	{
		McFamily   *f = families[i];

		if (mc_glob_match(f->tmpl->glob, strlen(f->tmpl->glob), key, len) &&
			(best == NULL || f->tmpl->literal_chars > best->tmpl->literal_chars))
			best = f;
	}
	return best;
}

/*
 * Every family's SCAN pattern under a prefix (palloc'd McStr list), for the
 * drains' family flush.
 */
List *
mc_family_globs(const char *prefix)
{
	List	   *out = NIL;

	ensure_catalog();
	for (int i = 0; i < nfamilies; i++)
	{
		StringInfoData pat;
		McStr	   *m = palloc(sizeof(McStr));

		initStringInfo(&pat);
		mc_append_glob_escaped(&pat, prefix, strlen(prefix));
		appendStringInfoString(&pat, families[i]->tmpl->glob);
		m->s = pat.data;
		m->len = pat.len;
		out = lappend(out, m);
	}
	return out;
}

/* ---- compiling rules for one table ---- */

static char *
camel_case(const char *snake)
{
	StringInfoData s;
	bool		up = false;

	initStringInfo(&s);
	for (const char *p = snake; *p; p++)
	{
		if (*p == '_' && s.len > 0)
		{
			up = true;
			continue;
		}
		appendStringInfoChar(&s, up ? pg_toupper((unsigned char) *p) : *p);
		up = false;
	}
	return s.data;
}

/* exact column name, else its camelCase spelling; 0 if neither exists */
static AttrNumber
find_column(Oid relid, const char *name, char **resolved)
{
	AttrNumber	att = get_attnum(relid, name);

	if (att > 0)
	{
		if (resolved)
			*resolved = pstrdup(name);
		return att;
	}
	{
		char	   *camel = camel_case(name);

		att = get_attnum(relid, camel);
		if (att > 0)
		{
			if (resolved)
				*resolved = camel;
			return att;
		}
	}
	return InvalidAttrNumber;
}

static AttrNumber
require_column(Oid relid, const char *name, RawRule *r, char **resolved)
{
	AttrNumber	att = find_column(relid, name, resolved);

	if (att <= 0)
	{
		char	   *camel = camel_case(name);

		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("table \"%s\" has no column \"%s\" needed by meetcache rule %d",
						get_rel_name(relid), name, r->id),
				 strcmp(camel, name) != 0 ?
				 errdetail("Rule %d (table \"%s\", family \"%s\") looked for column \"%s\" and its camelCase spelling \"%s\".",
						   r->id, r->table_name, r->family->name, name, camel) :
				 errdetail("Rule %d (table \"%s\", family \"%s\") looked for column \"%s\".",
						   r->id, r->table_name, r->family->name, name),
				 errhint("Add the column, change or disable the rule in meetcache.rules, or attach the table under another name.")));
	}
	return att;
}

static Oid
resolve_via(Relation rel, RawRule *r)
{
	Oid			relid;

	if (strchr(r->via_table, '.'))
	{
		List	   *names = stringToQualifiedNameList(r->via_table
#if PG_VERSION_NUM >= 160000
													  ,NULL
#endif
			);

		relid = RangeVarGetRelid(makeRangeVarFromNameList(names), AccessShareLock, true);
	}
	else
		relid = get_relname_relid(r->via_table, RelationGetNamespace(rel));
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("meetcache rule %d looks up table \"%s\", which does not exist in schema \"%s\"",
						r->id, r->via_table, get_namespace_name(RelationGetNamespace(rel))),
				 errhint("Rules look up related tables in the schema of the changed table unless the name is schema-qualified.")));
	return relid;
}

static bool
same_cond(RawRule *a, RawRule *b)
{
	if ((a->when_column == NULL) != (b->when_column == NULL))
		return false;
	if (a->when_column == NULL)
		return true;
	if (strcmp(a->when_column, b->when_column) != 0 || a->nwhen != b->nwhen)
		return false;
	for (int i = 0; i < a->nwhen; i++)
		if (strcmp(a->when_values[i] ? a->when_values[i] : "",
				   b->when_values[i] ? b->when_values[i] : "") != 0)
			return false;
	return true;
}

static McRelRules *
compile_rel(Relation rel, const char *table_name)
{
	Oid			relid = RelationGetRelid(rel);
	TupleDesc	td = RelationGetDescr(rel);
	MemoryContext old = MemoryContextSwitchTo(rules_cxt);
	McRelRules *rr = palloc0(sizeof(McRelRules));
	int			n = 0;

	rr->relid = relid;
	rr->table_name = pstrdup(table_name);
	for (int i = 0; i < nraw; i++)
		if (strcmp(raw_rules[i].table_name, table_name) == 0)
			n++;
	rr->rules = palloc0(sizeof(CRule) * Max(1, n));
	rr->groups = palloc0(sizeof(LGroup) * Max(1, n));
	rr->natts = td->natts;
	rr->outfn = palloc0(sizeof(FmgrInfo) * Max(1, td->natts));
	rr->outfn_set = palloc0(sizeof(bool) * Max(1, td->natts));
	rr->is_text = palloc0(sizeof(bool) * Max(1, td->natts));
	for (int a = 0; a < td->natts; a++)
	{
		Oid			typ = TupleDescAttr(td, a)->atttypid;

		rr->is_text[a] = (typ == TEXTOID || typ == VARCHAROID);
	}

	for (int i = 0; i < nraw; i++)
	{
		RawRule    *r = &raw_rules[i];
		CRule	   *c;
		int			nargs = r->family->tmpl->nargs;

		if (strcmp(r->table_name, table_name) != 0)
			continue;
		c = &rr->rules[rr->nrules++];
		c->raw = r;
		c->group = -1;
		c->cols = palloc0(sizeof(int) * Max(1, nargs));
		if (r->when_column)
			c->cond_attno = require_column(relid, r->when_column, r, NULL);

		if (r->via_table == NULL)
		{
			for (int a = 0; a < nargs; a++)
				c->cols[a] = require_column(relid, r->args[a], r, NULL);
		}
		else
		{
			Oid			via = resolve_via(rel, r);
			AttrNumber	match = require_column(relid, r->match_column, r, NULL);
			char	   *via_col;
			LGroup	   *g = NULL;

			(void) require_column(via, r->via_column, r, &via_col);
			for (int k = 0; k < rr->ngroups; k++)
			{
				LGroup	   *cand = &rr->groups[k];

				if (cand->via_relid == via && cand->match_attno == match &&
					strcmp(cand->via_colname, via_col) == 0 &&
					((cand->cond == NULL && r->when_column == NULL) ||
					 (cand->cond != NULL && same_cond(cand->cond, r))))
				{
					g = cand;
					c->group = k;
					break;
				}
			}
			if (g == NULL)
			{
				c->group = rr->ngroups;
				g = &rr->groups[rr->ngroups++];
				g->via_relid = via;
				g->match_attno = match;
				g->via_colname = via_col;
				g->cond = r->when_column ? r : NULL;
				g->cond_attno = c->cond_attno;
				g->cols = palloc0(sizeof(char *) * 32);
			}
			g->events |= r->events;
			for (int a = 0; a < nargs; a++)
			{
				char	   *colname;
				int			k;

				(void) require_column(via, r->args[a], r, &colname);
				for (k = 0; k < g->ncols; k++)
					if (strcmp(g->cols[k], colname) == 0)
						break;
				if (k == g->ncols)
				{
					if (g->ncols >= 32)
						ereport(ERROR,
								(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
								 errmsg("too many lookup columns for table \"%s\"", r->via_table)));
					g->cols[g->ncols++] = colname;
				}
				c->cols[a] = k + 1;
			}
		}
	}
	MemoryContextSwitchTo(old);
	return rr;
}

/* build and keep the lookup plan of a group */
static void
prepare_group(LGroup *g)
{
	StringInfoData sql;
	Oid			argtypes[1] = {TEXTARRAYOID};
	AttrNumber	att = get_attnum(g->via_relid, g->via_colname);
	Oid			typ = get_atttype(g->via_relid, att);
	char	   *nspname = get_namespace_name(get_rel_namespace(g->via_relid));
	char	   *relname = get_rel_name(g->via_relid);

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT DISTINCT ");
	if (g->ncols == 0)
		appendStringInfoString(&sql, "NULL::text");
	for (int k = 0; k < g->ncols; k++)
		appendStringInfo(&sql, "%s%s::pg_catalog.text", k ? ", " : "", quote_identifier(g->cols[k]));
	appendStringInfo(&sql, " FROM %s WHERE %s OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[]::%s[])",
					 quote_qualified_identifier(nspname, relname),
					 quote_identifier(g->via_colname),
					 format_type_be_qualified(typ));
	if (g->ncols == 0)
		appendStringInfoString(&sql, " LIMIT 1");
	/* a generic plan: custom plans would re-plan (and estimate the array) every time */
	g->plan = SPI_prepare_cursor(sql.data, 1, argtypes, CURSOR_OPT_GENERIC_PLAN);
	if (g->plan == NULL)
		elog(ERROR, "meetcache: could not prepare lookup \"%s\": %s",
			 sql.data, SPI_result_code_string(SPI_result));
	SPI_keepplan(g->plan);
	pfree(sql.data);
}

McRelRules *
mc_rel_rules(Relation rel, const char *table_name, bool fresh)
{
	Oid			relid = RelationGetRelid(rel);
	McRelRules *rr;
	MemoryContext old;

	if (fresh)
		rules_valid = false;
	ensure_catalog();
	/* the generation just loaded serves this call even if already stale */
	for (int i = 0; i < nrels; i++)
		if (rels[i]->relid == relid && strcmp(rels[i]->table_name, table_name) == 0)
			return rels[i];

	rr = compile_rel(rel, table_name);
	old = MemoryContextSwitchTo(rules_cxt);
	if (rels == NULL)
		rels = palloc(sizeof(McRelRules *) * 64);
	else if (nrels % 64 == 0)
		rels = repalloc(rels, sizeof(McRelRules *) * (nrels + 64));
	rels[nrels++] = rr;
	MemoryContextSwitchTo(old);
	return rr;
}

int
mc_rel_nrules(McRelRules *rr)
{
	return rr->nrules;
}

/* ---- collecting keys ---- */

static const char *
value_text(McRelRules *rr, TupleTableSlot *slot, AttrNumber att)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, att, &isnull);

	if (isnull)
		return NULL;
	if (rr->is_text[att - 1])
		return TextDatumGetCString(d);
	if (!rr->outfn_set[att - 1])
	{
		Oid			outfn;
		bool		isvarlena;

		getTypeOutputInfo(TupleDescAttr(slot->tts_tupleDescriptor, att - 1)->atttypid,
						  &outfn, &isvarlena);
		fmgr_info_cxt(outfn, &rr->outfn[att - 1], rules_cxt);
		rr->outfn_set[att - 1] = true;
	}
	return OutputFunctionCall(&rr->outfn[att - 1], d);
}

static bool
cond_holds(McRelRules *rr, RawRule *r, AttrNumber att, TupleTableSlot *slot)
{
	const char *v;

	if (r == NULL || r->when_column == NULL)
		return true;
	v = value_text(rr, slot, att);
	if (v == NULL)
		return false;
	for (int i = 0; i < r->nwhen; i++)
		if (r->when_values[i] && strcmp(r->when_values[i], v) == 0)
			return true;
	return false;
}

static void
emit(StringInfo buf, CRule *c, const char *prefix, const char **values,
	 McKeySink sink, void *arg)
{
	for (int a = 0; a < c->raw->family->tmpl->nargs; a++)
		if (values[a] == NULL)
			return;				/* no key can hold a NULL part */
	resetStringInfo(buf);
	mc_render(buf, c->raw->family->tmpl, prefix, values);
	sink(arg, buf->data, buf->len, c->raw->family, c->raw->id);
}

static void
scan_table(McRelRules *rr, int event, Tuplestorestate *tab, TupleTableSlot *slot,
		   const char *prefix, McKeySink sink, void *arg,
		   List **groupvals, StringInfo buf)
{
	const char *values[64];

	if (tab == NULL)
		return;
	tuplestore_rescan(tab);
	while (tuplestore_gettupleslot(tab, true, false, slot))
	{
		for (int i = 0; i < rr->nrules; i++)
		{
			CRule	   *c = &rr->rules[i];

			if (c->group >= 0 || !(c->raw->events & event))
				continue;
			if (!cond_holds(rr, c->raw, c->cond_attno, slot))
				continue;
			for (int a = 0; a < c->raw->family->tmpl->nargs && a < 64; a++)
				values[a] = value_text(rr, slot, c->cols[a]);
			emit(buf, c, prefix, values, sink, arg);
		}
		for (int g = 0; g < rr->ngroups; g++)
		{
			LGroup	   *grp = &rr->groups[g];
			const char *v;

			if (!(grp->events & event))
				continue;
			if (!cond_holds(rr, grp->cond, grp->cond_attno, slot))
				continue;
			v = value_text(rr, slot, grp->match_attno);
			if (v != NULL)
				groupvals[g] = lappend(groupvals[g], (void *) v);
		}
	}
}

/*
 * Find a valid, non-partial btree index whose first column is the group's
 * lookup column, so a lookup is an index probe instead of an SPI query
 * (which costs more than the user's UPDATE).  Also sets up the output of
 * the selected columns.
 */
static void
choose_index(LGroup *g)
{
	Relation	heap = table_open(g->via_relid, AccessShareLock);
	TupleDesc	td = RelationGetDescr(heap);
	AttrNumber	att = get_attnum(g->via_relid, g->via_colname);
	Oid			atttype = TupleDescAttr(td, att - 1)->atttypid;
	List	   *indexes = RelationGetIndexList(heap);
	ListCell   *lc;
	MemoryContext old = MemoryContextSwitchTo(rules_cxt);

	g->index_checked = true;
	g->indexoid = InvalidOid;
	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index ind = idx->rd_index;
		bool		ok;

		ok = idx->rd_rel->relam == BTREE_AM_OID &&
			ind->indisvalid && ind->indisready && ind->indislive &&
			ind->indkey.values[0] == att &&
			heap_attisnull(idx->rd_indextuple, Anum_pg_index_indpred, NULL) &&
			heap_attisnull(idx->rd_indextuple, Anum_pg_index_indexprs, NULL) &&
			(idx->rd_opcintype[0] == atttype || IsBinaryCoercible(atttype, idx->rd_opcintype[0]));
		if (ok)
		{
			Oid			eqop = get_opfamily_member(idx->rd_opfamily[0], idx->rd_opcintype[0],
												   idx->rd_opcintype[0], BTEqualStrategyNumber);

			if (OidIsValid(eqop))
			{
				g->indexoid = RelationGetRelid(idx);
				g->eqproc = get_opcode(eqop);
				g->collation = idx->rd_indcollation[0];
			}
		}
		index_close(idx, AccessShareLock);
		if (OidIsValid(g->indexoid))
			break;
	}
	if (OidIsValid(g->indexoid))
	{
		getTypeInputInfo(atttype, &g->typinput, &g->typioparam);
		g->col_attnos = palloc0(sizeof(AttrNumber) * Max(1, g->ncols));
		g->col_out = palloc0(sizeof(FmgrInfo) * Max(1, g->ncols));
		g->col_is_text = palloc0(sizeof(bool) * Max(1, g->ncols));
		for (int k = 0; k < g->ncols; k++)
		{
			AttrNumber	a = get_attnum(g->via_relid, g->cols[k]);
			Oid			typ = TupleDescAttr(td, a - 1)->atttypid;
			Oid			outfn;
			bool		isvarlena;

			g->col_attnos[k] = a;
			g->col_is_text[k] = (typ == TEXTOID || typ == VARCHAROID);
			getTypeOutputInfo(typ, &outfn, &isvarlena);
			fmgr_info_cxt(outfn, &g->col_out[k], rules_cxt);
		}
	}
	MemoryContextSwitchTo(old);
	list_free(indexes);
	table_close(heap, AccessShareLock);
}

/* emit every rule of group g for one related row, given its selected columns */
static void
emit_group_row(McRelRules *rr, int g, int event, const char **colvals,
			   const char *prefix, McKeySink sink, void *arg, StringInfo buf)
{
	const char *values[64];

	for (int i = 0; i < rr->nrules; i++)
	{
		CRule	   *c = &rr->rules[i];

		if (c->group != g || !(c->raw->events & event))
			continue;
		for (int a = 0; a < c->raw->family->tmpl->nargs && a < 64; a++)
			values[a] = colvals[c->cols[a] - 1];
		emit(buf, c, prefix, values, sink, arg);
	}
}

static const char *
via_text(LGroup *g, TupleTableSlot *slot, int col)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, g->col_attnos[col - 1], &isnull);

	if (isnull)
		return NULL;
	if (g->col_is_text[col - 1])
		return TextDatumGetCString(d);
	return OutputFunctionCall(&g->col_out[col - 1], d);
}

/*
 * Probe the index once per value, with a fresh snapshot (rows committed by
 * others up to now count too).  No permission or row-security check: the
 * invalidation of a cache must not depend on who made the change.
 */
static void
index_lookup(McRelRules *rr, int g, List *vals, int event, const char *prefix,
			 McKeySink sink, void *arg, StringInfo buf)
{
	LGroup	   *grp = &rr->groups[g];
	Relation	heap = table_open(grp->via_relid, AccessShareLock);
	Relation	idx = index_open(grp->indexoid, AccessShareLock);
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	TupleTableSlot *slot = table_slot_create(heap, NULL);
	IndexScanDesc scan = index_beginscan(heap, idx, snap, 1, 0);
	const char **colvals = palloc(sizeof(char *) * Max(1, grp->ncols));
	ListCell   *lc;

	foreach(lc, vals)
	{
		ScanKeyData key;
		Datum		d = OidInputFunctionCall(grp->typinput, (char *) lfirst(lc),
											 grp->typioparam, -1);

		ScanKeyEntryInitialize(&key, 0, 1, BTEqualStrategyNumber, InvalidOid,
							   grp->collation, grp->eqproc, d);
		index_rescan(scan, &key, 1, NULL, 0);
		while (index_getnext_slot(scan, ForwardScanDirection, slot))
		{
			for (int k = 0; k < grp->ncols; k++)
				colvals[k] = via_text(grp, slot, k + 1);
			emit_group_row(rr, g, event, colvals, prefix, sink, arg, buf);
		}
		CHECK_FOR_INTERRUPTS();
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snap);
	index_close(idx, AccessShareLock);
	table_close(heap, AccessShareLock);
}

/* fallback: one SPI query per group, = ANY over all values */
static void spi_lookup_as_owner(McRelRules *rr, int g, List *vals, int event,
								const char *prefix, McKeySink sink, void *arg,
								StringInfo buf);

static void
spi_lookup(McRelRules *rr, int g, List *vals, int event, const char *prefix,
		   McKeySink sink, void *arg, StringInfo buf)
{
	Oid			save_userid;
	int			save_sec;

	/*
	 * Like the index probe, the lookup must see every row whoever made the
	 * change: run it as the bootstrap superuser (no ACL, no row security),
	 * restricted so that no user code can exploit it.
	 */
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		spi_lookup_as_owner(rr, g, vals, event, prefix, sink, arg, buf);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
}

static void
spi_lookup_as_owner(McRelRules *rr, int g, List *vals, int event, const char *prefix,
					McKeySink sink, void *arg, StringInfo buf)
{
	LGroup	   *grp = &rr->groups[g];
	Datum	   *elems;
	int			n = 0;
	Datum		param;
	int			ret;
	ListCell   *lc;
	const char **colvals = palloc(sizeof(char *) * Max(1, grp->ncols));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (grp->plan == NULL)
		prepare_group(grp);
	elems = palloc(sizeof(Datum) * list_length(vals));
	foreach(lc, vals)
		elems[n++] = CStringGetTextDatum((char *) lfirst(lc));
	param = PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));

	/* a fresh snapshot: see rows committed by others until now too */
	ret = SPI_execute_snapshot(grp->plan, &param, NULL, GetLatestSnapshot(),
							   InvalidSnapshot, false, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "meetcache: lookup failed: %s", SPI_result_code_string(ret));
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		for (int k = 0; k < grp->ncols; k++)
			colvals[k] = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, k + 1);
		emit_group_row(rr, g, event, colvals, prefix, sink, arg, buf);
	}
	SPI_freetuptable(SPI_tuptable);
	SPI_finish();
}

/*
 * Collect the keys that changed rows (old and/or new images, from
 * transition tables) affect, then run each lookup group once.
 */
void
mc_collect(McRelRules *rr, Relation rel, int event,
		   Tuplestorestate *oldtab, Tuplestorestate *newtab,
		   TupleTableSlot *oldslot, TupleTableSlot *newslot,
		   const char *prefix, McKeySink sink, void *arg)
{
	List	  **groupvals = palloc0(sizeof(List *) * Max(1, rr->ngroups));
	StringInfoData buf;

	initStringInfo(&buf);
	scan_table(rr, event, oldtab, oldslot, prefix, sink, arg, groupvals, &buf);
	scan_table(rr, event, newtab, newslot, prefix, sink, arg, groupvals, &buf);

	for (int g = 0; g < rr->ngroups; g++)
	{
		LGroup	   *grp = &rr->groups[g];

		if (groupvals[g] == NIL)
			continue;
		if (!grp->index_checked)
			choose_index(grp);
		if (OidIsValid(grp->indexoid))
			index_lookup(rr, g, groupvals[g], event, prefix, sink, arg, &buf);
		else
			spi_lookup(rr, g, groupvals[g], event, prefix, sink, arg, &buf);
	}
}

/* every family any rule of the table can produce (for TRUNCATE) */
List *
mc_rel_families(McRelRules *rr)
{
	List	   *out = NIL;

	for (int i = 0; i < rr->nrules; i++)
		out = list_append_unique_ptr(out, rr->rules[i].raw->family);
	return out;
}
