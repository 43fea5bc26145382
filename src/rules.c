/*
 * rules.c
 *	  The rule catalog (meetcache.families, meetcache.rules) as seen by C:
 *	  loading and caching it per backend, resolving rule columns on a
 *	  concrete table (exact name, else its camelCase spelling), turning
 *	  changed rows into keys with one batched lookup per group of
 *	  related-table rules per statement, and resolving those lookups again
 *	  after commit (the drains).  The key grammar is keys.c's.
 *
 * The cache is dropped on any relcache invalidation of a watched relation:
 * the catalog tables (a statement trigger on them broadcasts one), the
 * tables rules were compiled for, and the tables their lookups read.  The
 * same callback passes every invalidation on to queue.c, whose cache of
 * meetcache.queue needs one too (a process has only ten callback slots).
 *
 * Keys go to a McSink; when it says a family is covered (pending.c: the
 * family is already deleted whole by its pattern), its rules are skipped,
 * lookups included, and a table scan stops once nothing is left.
 *
 * The loader uses keys.c's parsers, as the catalog's checks do, so the
 * catalog accepts exactly what is compiled.  Loading and compiling for a
 * write never fail the write: a family or rule that cannot be used (which
 * the checks keep out, unless a superuser bypasses them) is skipped with a
 * WARNING, and a rule that no longer compiles against its table deletes its
 * whole family instead of exact keys.  Strict compiling (attach, the guard)
 * raises the error instead.
 *
 * Lookups read only ordinary and partitioned tables, resolved to an OID at
 * compile time, as the owner of the table they read, under
 * SECURITY_RESTRICTED_OPERATION and without row security (as PostgreSQL's
 * foreign-key checks do).  Keys rendered from columns whose text form
 * depends on session settings are rendered under fixed ones (settings.c).
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/xact.h"
#include "access/htup_details.h"
#include "access/genam.h"
#include "access/nbtree.h"
#include "access/relation.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_am.h"
#include "parser/parse_coerce.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
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
	bool		broken;			/* does not compile: every change deletes its family */
} CRule;

typedef struct LGroup
{
	Oid			via_relid;
	Oid			via_owner;		/* lookups run as this role */
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
	bool		canonical;		/* some key part's text form depends on settings */
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
static List *plans_to_free = NIL;	/* SPI plans of a dropped cache ... */
static LocalTransactionId plans_lxid = InvalidLocalTransactionId;	/* ... since */

#if PG_VERSION_NUM >= 170000
#define MY_LXID (MyProc->vxid.lxid)
#else
#define MY_LXID (MyProc->lxid)
#endif

static McFamily *mc_find_family(const char *name);

/* the owner of a relation */
static Oid
get_rel_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
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
	/* one callback slot of the process's ten serves the queue's and recheck.c's caches too */
	mc_queue_relcache_inval(relid);
	mc_recheck_relcache_inval(relid);
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
				plans_lxid = MY_LXID;
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

/* SPI plans of older generations, once no caller up the stack can use them */
static void
free_old_plans(void)
{
	/* plans of this transaction's generations may still be in use up the stack */
	while (plans_to_free != NIL && plans_lxid != MY_LXID)
	{
		SPIPlanPtr	plan = linitial(plans_to_free);

		plans_to_free = list_delete_first(plans_to_free);
		SPI_freeplan(plan);
	}
}

/* the OIDs of meetcache.rules and meetcache.families (the callback watches them) */
static void
find_catalog_tables(void)
{
	Oid			nsp = get_namespace_oid("meetcache", true);

	if (!OidIsValid(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"meetcache\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION meetcache.")));
	rules_relid = get_relname_relid("rules", nsp);
	families_relid = get_relname_relid("families", nsp);
}

/* one row of meetcache.families; NULL (with a WARNING) if it cannot be used */
static McFamily *
family_from_row(HeapTuple tup, TupleDesc td)
{
	McFamily   *f = palloc0(sizeof(McFamily));
	bool		isnull;
	Datum		d;
	const char *why = NULL;

	f->name = spi_text(tup, td, 1);
	f->tmpl = mc_template_parse(spi_text(tup, td, 2), &why);
	d = SPI_getbinval(tup, td, 3, &isnull);
	f->ttl_seconds = isnull ? 0 : DatumGetInt32(d);
	f->ttl_field = spi_text(tup, td, 4);
	d = SPI_getbinval(tup, td, 5, &isnull);
	if (f->tmpl != NULL && f->ttl_field != NULL && !isnull)
		(void) mc_parse_ttl_by_value(d, f, &why);
	if (why != NULL)
	{
		/* only a superuser bypassing the catalog's checks gets here */
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("meetcache: ignoring cache key family \"%s\"", f->name),
				 errdetail("%s", why),
				 errhint("Fix the row in meetcache.families.")));
		return NULL;
	}
	return f;
}

static void
load_families(void)
{
	MemoryContext old;

	catalog_query("SELECT f.name, f.template, f.ttl_seconds, f.ttl_field, f.ttl_by_value "
				  "FROM meetcache.families f ORDER BY f.name");
	old = MemoryContextSwitchTo(rules_cxt);
	families = palloc(sizeof(McFamily *) * Max(1, SPI_processed));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		McFamily   *f = family_from_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);

		if (f != NULL)
			families[nfamilies++] = f;
	}
	MemoryContextSwitchTo(old);
}

/* one row of meetcache.rules into *r; false (with a WARNING) if it cannot be used */
static bool
rule_from_row(HeapTuple tup, TupleDesc td, RawRule *r)
{
	bool		isnull;
	char	   *fam;
	int			nargs;
	char	  **args;

	r->id = DatumGetInt32(SPI_getbinval(tup, td, 1, &isnull));
	r->table_name = spi_text(tup, td, 2);
	fam = spi_text(tup, td, 3);
	r->family = mc_find_family(fam);
	args = spi_text_array(tup, td, 4, &nargs);
	if (r->family != NULL && args == NULL)
	{
		args = r->family->tmpl->argnames;
		nargs = r->family->tmpl->nargs;
	}
	if (r->family == NULL || nargs != r->family->tmpl->nargs)
	{
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("meetcache: ignoring rule %d", r->id),
				 r->family == NULL ?
				 errdetail("Its family \"%s\" is unknown or ignored.", fam) :
				 errdetail("It gives %d arguments; family \"%s\" takes %d.",
						   nargs, fam, r->family->tmpl->nargs),
				 errhint("Fix the row in meetcache.rules.")));
		return false;
	}
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
	return true;
}

static void
load_rules(void)
{
	MemoryContext old;

	catalog_query("SELECT r.id, r.table_name, r.family, r.args, r.on_insert, r.on_update, r.on_delete, "
				  "r.when_column, r.when_values, r.via_table, r.via_column, r.match_column "
				  "FROM meetcache.rules r WHERE r.enabled ORDER BY r.id");
	old = MemoryContextSwitchTo(rules_cxt);
	raw_rules = palloc0(sizeof(RawRule) * Max(1, SPI_processed));
	/* a row that cannot be used leaves its slot to the next (events unset) */
	for (uint64 i = 0; i < SPI_processed; i++)
		if (rule_from_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &raw_rules[nraw]))
			nraw++;
	MemoryContextSwitchTo(old);
}

/*
 * A new generation of the cache: the families, then the rules naming them.
 * The catalog is read with a fresh snapshot, not the caller's (which may be
 * an old REPEATABLE READ one), after taking the locks; an invalidation
 * arriving meanwhile leaves the cache marked stale for the next use.
 */
static void
load_catalog(void)
{
	uint64		inval_before;
	int			lvl;

	drop_cache();
	free_old_plans();
	find_catalog_tables();
	lvl = mc_settings_pin(false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	inval_before = rules_inval_count;
	load_families();
	load_rules();
	SPI_finish();
	mc_settings_restore(lvl);
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

/*
 * A rule that does not compile: strict, an error; otherwise a WARNING, and
 * the caller marks the rule broken (each change then deletes its family).
 */
static bool quiet_compile = false;	/* mc_rel_broken(): no WARNING */

static void
rule_problem(bool strict, RawRule *r, int sqlstate, const char *msg,
			 const char *detail, const char *hint)
{
	if (quiet_compile && !strict)
		return;
	ereport(strict ? ERROR : WARNING,
			(errcode(sqlstate),
			 errmsg_internal("%s", msg),
			 detail ? errdetail_internal("%s", detail) : 0,
			 strict ? errhint("%s", hint) :
			 errhint("%s Until then, every change to the table deletes the whole family \"%s\".",
					 hint, r->family->name)));
}

static AttrNumber
require_column(Oid relid, const char *name, RawRule *r, char **resolved, bool strict)
{
	AttrNumber	att = find_column(relid, name, resolved);

	if (att <= 0)
	{
		char	   *camel = camel_case(name);

		rule_problem(strict, r, ERRCODE_UNDEFINED_COLUMN,
					 psprintf("table \"%s\" has no column \"%s\" needed by meetcache rule %d",
							  get_rel_name(relid), name, r->id),
					 strcmp(camel, name) != 0 ?
					 psprintf("Rule %d (table \"%s\", family \"%s\") looked for column \"%s\" and its camelCase spelling \"%s\".",
							  r->id, r->table_name, r->family->name, name, camel) :
					 psprintf("Rule %d (table \"%s\", family \"%s\") looked for column \"%s\".",
							  r->id, r->table_name, r->family->name, name),
					 "Add the column, change or disable the rule in meetcache.rules (in the same transaction as the DDL: changes to the rules are checked at COMMIT), or attach the table under another name.");
	}
	return att;
}

/* the via_table of a rule: an ordinary or partitioned table, never temporary */
static Oid
resolve_via(Relation rel, RawRule *r, bool strict)
{
	Oid			relid;
	char		kind;

	if (strchr(r->via_table, '.'))
	{
		List	   *names = stringToQualifiedNameList(r->via_table
#if PG_VERSION_NUM >= 160000
													  ,NULL
#endif
			);
		RangeVar   *rv = makeRangeVarFromNameList(names);

		/* never a temporary relation through the pg_temp search path */
		relid = rv->schemaname ? get_relname_relid(rv->relname, get_namespace_oid(rv->schemaname, true))
			: InvalidOid;
		if (OidIsValid(relid))
			LockRelationOid(relid, AccessShareLock);
	}
	else
		relid = get_relname_relid(r->via_table, RelationGetNamespace(rel));
	if (!OidIsValid(relid))
	{
		rule_problem(strict, r, ERRCODE_UNDEFINED_TABLE,
					 psprintf("meetcache rule %d looks up table \"%s\", which does not exist in schema \"%s\"",
							  r->id, r->via_table, get_namespace_name(RelationGetNamespace(rel))),
					 NULL,
					 "Rules look up related tables in the schema of the changed table unless the name is schema-qualified; change the rule in meetcache.rules in the same transaction as the DDL.");
		return InvalidOid;
	}
	kind = get_rel_relkind(relid);
	if ((kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE) ||
		get_rel_persistence(relid) == RELPERSISTENCE_TEMP)
	{
		rule_problem(strict, r, ERRCODE_WRONG_OBJECT_TYPE,
					 psprintf("meetcache rule %d looks up \"%s\", which is not a table",
							  r->id, r->via_table),
					 "Lookups read ordinary and partitioned tables only, never a view, a foreign, temporary or other relation.",
					 "Point via_table at the table itself.");
		return InvalidOid;
	}
	return relid;
}

/* does the text form of a value of this type depend on session settings? */
static bool
type_needs_canonical(Oid typ)
{
	typ = getBaseType(typ);
	switch (typ)
	{
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
		case NAMEOID:
		case CHAROID:
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case NUMERICOID:
		case BOOLOID:
		case UUIDOID:
			return false;
		default:
			return !type_is_enum(typ);
	}
}

static void
note_column_type(McRelRules *rr, Oid relid, AttrNumber att)
{
	if (att > 0 && type_needs_canonical(get_atttype(relid, att)))
		rr->canonical = true;
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

/* compile one lookup rule into its group; false if it does not compile */
static bool
compile_lookup(McRelRules *rr, Relation rel, CRule *c, bool strict)
{
	RawRule    *r = c->raw;
	Oid			relid = RelationGetRelid(rel);
	int			nargs = r->family->tmpl->nargs;
	Oid			via = resolve_via(rel, r, strict);
	AttrNumber	match;
	char	   *via_col;
	LGroup	   *g = NULL;
	AttrNumber	via_att;

	if (!OidIsValid(via))
		return false;
	match = require_column(relid, r->match_column, r, NULL, strict);
	via_att = require_column(via, r->via_column, r, &via_col, strict);
	if (match <= 0 || via_att <= 0)
		return false;
	for (int a = 0; a < nargs; a++)
		if (require_column(via, r->args[a], r, NULL, strict) <= 0)
			return false;
	note_column_type(rr, relid, match);
	note_column_type(rr, via, via_att);

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
		g->via_owner = get_rel_owner(via);
		g->match_attno = match;
		g->via_colname = via_col;
		g->cond = r->when_column ? r : NULL;
		g->cond_attno = c->cond_attno;
		g->cols = palloc0(sizeof(char *) * MC_MAX_LOOKUP_COLUMNS);
	}
	g->events |= r->events;
	for (int a = 0; a < nargs; a++)
	{
		char	   *colname;
		AttrNumber	att = require_column(via, r->args[a], r, &colname, strict);
		int			k;

		note_column_type(rr, via, att);
		for (k = 0; k < g->ncols; k++)
			if (strcmp(g->cols[k], colname) == 0)
				break;
		if (k == g->ncols)
		{
			if (g->ncols >= MC_MAX_LOOKUP_COLUMNS)
			{
				rule_problem(strict, r, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
							 psprintf("too many lookup columns for table \"%s\"", r->via_table),
							 psprintf("The rules of one table select at most %d columns of one related table.",
									  MC_MAX_LOOKUP_COLUMNS),
							 "Split the rules over two rule names, or select fewer columns.");
				return false;
			}
			g->cols[g->ncols++] = colname;
		}
		c->cols[a] = k + 1;
	}
	return true;
}

static McRelRules *
compile_rel(Relation rel, const char *table_name, bool strict)
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
		bool		ok = true;

		if (strcmp(r->table_name, table_name) != 0)
			continue;
		c = &rr->rules[rr->nrules++];
		c->raw = r;
		c->group = -1;
		c->cols = palloc0(sizeof(int) * Max(1, nargs));
		if (r->when_column)
		{
			c->cond_attno = require_column(relid, r->when_column, r, NULL, strict);
			ok = c->cond_attno > 0;
			note_column_type(rr, relid, c->cond_attno);
		}
		if (ok && r->via_table == NULL)
		{
			for (int a = 0; a < nargs && ok; a++)
			{
				c->cols[a] = require_column(relid, r->args[a], r, NULL, strict);
				ok = c->cols[a] > 0;
				note_column_type(rr, relid, c->cols[a]);
			}
		}
		else if (ok)
			ok = compile_lookup(rr, rel, c, strict);
		if (!ok)
		{
			c->broken = true;
			c->group = -1;
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

static McRelRules *
cached_rel(Relation rel, const char *table_name)
{
	Oid			relid = RelationGetRelid(rel);

	for (int i = 0; i < nrels; i++)
		if (rels[i]->relid == relid && strcmp(rels[i]->table_name, table_name) == 0)
			return rels[i];
	return NULL;
}

static void
cache_rel(McRelRules *rr)
{
	MemoryContext old = MemoryContextSwitchTo(rules_cxt);

	if (rels == NULL)
		rels = palloc(sizeof(McRelRules *) * 64);
	else if (nrels % 64 == 0)
		rels = repalloc(rels, sizeof(McRelRules *) * (nrels + 64));
	rels[nrels++] = rr;
	MemoryContextSwitchTo(old);
}

/* the rules of a table for a write: never fails because of the catalog */
McRelRules *
mc_rel_rules(Relation rel, const char *table_name, bool fresh)
{
	McRelRules *rr;

	if (fresh)
		rules_valid = false;
	ensure_catalog();
	/* the generation just loaded serves this call even if already stale */
	rr = cached_rel(rel, table_name);
	if (rr == NULL)
	{
		rr = compile_rel(rel, table_name, false);
		cache_rel(rr);
	}
	return rr;
}

/* read the catalog again before the next use */
void
mc_rules_reload(void)
{
	rules_valid = false;
}

static bool
any_broken(McRelRules *rr)
{
	for (int i = 0; i < rr->nrules; i++)
		if (rr->rules[i].broken)
			return true;
	return false;
}

/* does some rule of table_name not compile against rel?  (never an error) */
bool
mc_rel_broken(Relation rel, const char *table_name)
{
	McRelRules *rr;

	ensure_catalog();
	rr = cached_rel(rel, table_name);
	if (rr != NULL)
		return any_broken(rr);
	quiet_compile = true;
	PG_TRY();
	{
		rr = compile_rel(rel, table_name, false);
	}
	PG_FINALLY();
	{
		quiet_compile = false;
	}
	PG_END_TRY();
	if (any_broken(rr))
		return true;
	/* what a write would compile: keep it (a broken one is not, so writes warn) */
	cache_rel(rr);
	return false;
}

/*
 * Compile the rules of table_name against rel strictly: a rule that does
 * not compile is an error.  Returns the number of rules.
 */
int
mc_check_rel(Relation rel, const char *table_name)
{
	McRelRules *rr;

	ensure_catalog();
	rr = cached_rel(rel, table_name);
	if (rr == NULL)
	{
		rr = compile_rel(rel, table_name, true);
		cache_rel(rr);
	}
	if (any_broken(rr))
		return compile_rel(rel, table_name, true)->nrules;	/* raises the error */
	return rr->nrules;
}

int
mc_rel_nrules(McRelRules *rr)
{
	return rr->nrules;
}

/* ---- collecting keys ---- */

/* a column value too long to be part of a key (see emit) */
static const char too_long[] = "";

/* a varlena datum whose text form is surely over the key limit */
static bool
datum_too_long(Datum d, int16 typlen)
{
	return typlen == -1 &&
		toast_raw_datum_size(d) > (Size) MC_MAX_KEY_BYTES * 4 + VARHDRSZ;
}

static const char *
value_text(McRelRules *rr, TupleTableSlot *slot, AttrNumber att)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, att, &isnull);
	Form_pg_attribute attr = TupleDescAttr(slot->tts_tupleDescriptor, att - 1);

	if (isnull)
		return NULL;
	if (datum_too_long(d, attr->attlen))
		return too_long;
	if (rr->is_text[att - 1])
		return TextDatumGetCString(d);
	if (!rr->outfn_set[att - 1])
	{
		Oid			outfn;
		bool		isvarlena;

		getTypeOutputInfo(attr->atttypid, &outfn, &isvarlena);
		fmgr_info_cxt(outfn, &rr->outfn[att - 1], rules_cxt);
		rr->outfn_set[att - 1] = true;
	}
	return OutputFunctionCall(&rr->outfn[att - 1], d);
}

/*
 * The text of each column of the row being scanned, converted at most once
 * per row however many rules use it (a column of the current row is valid
 * where gen[att - 1] == row).
 */
typedef struct RowText
{
	const char **text;
	uint64	   *gen;
	uint64		row;
} RowText;

static const char *
row_text(RowText *rt, McRelRules *rr, TupleTableSlot *slot, AttrNumber att)
{
	if (rt->gen[att - 1] != rt->row)
	{
		rt->text[att - 1] = value_text(rr, slot, att);
		rt->gen[att - 1] = rt->row;
	}
	return rt->text[att - 1];
}

static bool
cond_holds(RowText *rt, McRelRules *rr, RawRule *r, AttrNumber att, TupleTableSlot *slot)
{
	const char *v;

	if (r == NULL || r->when_column == NULL)
		return true;
	v = row_text(rt, rr, slot, att);
	if (v == NULL)
		return false;
	if (v == too_long)
		return true;			/* deleting too much is safe */
	for (int i = 0; i < r->nwhen; i++)
		if (r->when_values[i] && strcmp(r->when_values[i], v) == 0)
			return true;
	return false;
}

/*
 * Render one key.  A key longer than MC_MAX_KEY_BYTES (without the
 * prefix) is never built: the sink gets NULL, meaning the whole family, as
 * on overflow, so a huge column value neither fails the write nor reaches
 * the queue.
 */
static void
emit(StringInfo buf, CRule *c, const char **values, const McSink *out)
{
	McTemplate *t = c->raw->family->tmpl;
	Size		len = t->literal_chars;

	for (int a = 0; a < t->nargs; a++)
	{
		if (values[a] == NULL)
			return;				/* no key can hold a NULL part */
		len += values[a] == too_long ? MC_MAX_KEY_BYTES + 1 : strlen(values[a]);
	}
	if (len > MC_MAX_KEY_BYTES)
	{
		out->key(out->arg, NULL, 0, c->raw->family, c->raw->id);
		return;
	}
	resetStringInfo(buf);
	mc_render(buf, t, out->prefix, values);
	out->key(out->arg, buf->data, buf->len, c->raw->family, c->raw->id);
}

/* is the family of rule c already deleted whole, at the sink's say? */
static inline bool
rule_covered(const McSink *out, CRule *c)
{
	return out->covered != NULL && out->covered(out->arg, c->raw->family);
}

/* are all the rules of group g that the event fires covered? */
static bool
group_covered(McRelRules *rr, int g, int event, const McSink *out)
{
	for (int i = 0; i < rr->nrules; i++)
	{
		CRule	   *c = &rr->rules[i];

		if (c->group == g && (c->raw->events & event) && !rule_covered(out, c))
			return false;
	}
	return true;
}

/*
 * Render the direct rules' keys of every row and gather the values each
 * lookup group matches.  A rule whose family is covered (replaced by its
 * pattern after max_keys) is skipped, and so is a group whose rules all
 * are; once a row finds nothing left to do, the rest of the table is not
 * read.  Returns false when it stopped so.
 */
static bool
scan_table(McRelRules *rr, int event, Tuplestorestate *tab, TupleTableSlot *slot,
		   const McSink *out, List **groupvals, StringInfo buf, RowText *rt)
{
	const char *values[MC_MAX_PLACEHOLDERS];

	if (tab == NULL)
		return true;
	tuplestore_rescan(tab);
	while (tuplestore_gettupleslot(tab, true, false, slot))
	{
		bool		live = false;

		rt->row++;

		for (int i = 0; i < rr->nrules; i++)
		{
			CRule	   *c = &rr->rules[i];

			if (c->group >= 0 || !(c->raw->events & event) || rule_covered(out, c))
				continue;
			live = true;
			if (c->broken)
			{
				out->key(out->arg, NULL, 0, c->raw->family, c->raw->id);
				continue;
			}
			if (!cond_holds(rt, rr, c->raw, c->cond_attno, slot))
				continue;
			for (int a = 0; a < c->raw->family->tmpl->nargs; a++)
				values[a] = row_text(rt, rr, slot, c->cols[a]);
			emit(buf, c, values, out);
		}
		for (int g = 0; g < rr->ngroups; g++)
		{
			LGroup	   *grp = &rr->groups[g];
			const char *v;

			if (!(grp->events & event) || group_covered(rr, g, event, out))
				continue;
			live = true;
			if (!cond_holds(rt, rr, grp->cond, grp->cond_attno, slot))
				continue;
			v = row_text(rt, rr, slot, grp->match_attno);
			if (v != NULL)
				groupvals[g] = lappend(groupvals[g], (void *) v);
		}
		if (!live)
			return false;
		/* past max_keys: every family this statement's rules produce goes
		 * whole, so the rest of the rows need not be read */
		if (out->full && out->full(out->arg))
		{
			for (int i = 0; i < rr->nrules; i++)
				if ((rr->rules[i].raw->events & event) && !rule_covered(out, &rr->rules[i]))
					out->key(out->arg, NULL, 0, rr->rules[i].raw->family, rr->rules[i].raw->id);
			return false;
		}
	}
	return true;
}

/*
 * Find a valid, non-partial btree index whose first column is the group's
 * lookup column, so a lookup is an index probe instead of an SPI query
 * (which costs more than the user's UPDATE).  Also sets up the output of
 * the selected columns.
 */
static void
choose_index(McRelRules *rr, LGroup *g)
{
	Relation	heap = table_open(g->via_relid, AccessShareLock);
	TupleDesc	td = RelationGetDescr(heap);
	AttrNumber	att = get_attnum(g->via_relid, g->via_colname);
	Oid			atttype = TupleDescAttr(td, att - 1)->atttypid;
	Oid			match_type = get_atttype(rr->relid, g->match_attno);

	/*
	 * A partitioned table's indexes cannot be scanned: the planner probes
	 * its partitions.  And the probe reads the matched value with the input
	 * function of the related column, which cannot fail only when both
	 * columns have the same type and it is no domain (whose checks may have
	 * changed); the SPI query, in its subtransaction, serves the others.
	 */
	List	   *indexes = heap->rd_rel->relkind == RELKIND_RELATION && match_type == atttype &&
		get_typtype(atttype) != TYPTYPE_DOMAIN ?
		RelationGetIndexList(heap) : NIL;
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
			   const McSink *out, StringInfo buf)
{
	const char *values[MC_MAX_PLACEHOLDERS];

	for (int i = 0; i < rr->nrules; i++)
	{
		CRule	   *c = &rr->rules[i];

		if (c->group != g || !(c->raw->events & event) || rule_covered(out, c))
			continue;
		for (int a = 0; a < c->raw->family->tmpl->nargs; a++)
			values[a] = colvals[c->cols[a] - 1];
		emit(buf, c, values, out);
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
index_lookup(McRelRules *rr, int g, List *vals, int event,
			 const McSink *out, StringInfo buf)
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
			emit_group_row(rr, g, event, colvals, out, buf);
		}
		CHECK_FOR_INTERRUPTS();
		if (group_covered(rr, g, event, out))
			break;				/* the rest would find covered families only */
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snap);
	index_close(idx, AccessShareLock);
	table_close(heap, AccessShareLock);
}

static void record_again(McRelRules *rr, int g, List *vals, int event,
						 const McSink *out);

/* fallback: one SPI query per group, = ANY over all values */
static void spi_lookup(McRelRules *rr, int g, List *vals, int event,
					   const McSink *out,
					   StringInfo buf);
static void lookup_as_owner(McRelRules *rr, int g, List *vals, int event,
							const McSink *out,
							StringInfo buf, bool always_subxact);

/*
 * Run one group's lookup as the owner of the table it reads, the way
 * PostgreSQL's foreign-key checks do: no ACL surprise and no row security
 * (an invalidation must not depend on who made the change), and restricted
 * so that nothing it calls can change the session.
 */
static void
lookup_as_owner(McRelRules *rr, int g, List *vals, int event,
				const McSink *out, StringInfo buf, bool always_subxact)
{
	LGroup	   *grp = &rr->groups[g];
	Oid			save_userid;
	int			save_sec;

	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(grp->via_owner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION | SECURITY_NOFORCE_RLS);

	/*
	 * The SPI query runs in a subtransaction of its own: a lookup that fails
	 * (the table's owner revoked its own SELECT, a value that is no valid
	 * input for the related column, a domain check) never fails the write.  Its keys are dropped
	 * with the subtransaction and the families of the group's rules are
	 * deleted instead.  A cancel still cancels.
	 */
	if (OidIsValid(grp->indexoid) && !always_subxact)
	{
		/* one type, no domain, no query: nothing here fails but the server */
		index_lookup(rr, g, vals, event, out, buf);
		SetUserIdAndSecContext(save_userid, save_sec);
		return;
	}
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		if (OidIsValid(grp->indexoid))
			index_lookup(rr, g, vals, event, out, buf);
		else
			spi_lookup(rr, g, vals, event, out, buf);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		SetUserIdAndSecContext(save_userid, save_sec);
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("meetcache: lookup in table \"%s\" failed; deleting whole families instead",
						get_rel_name(grp->via_relid)),
				 errdetail("%s", edata->message)));
		for (int i = 0; i < rr->nrules; i++)
			if (rr->rules[i].group == g && (rr->rules[i].raw->events & event))
				out->key(out->arg, NULL, 0, rr->rules[i].raw->family, rr->rules[i].raw->id);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	SetUserIdAndSecContext(save_userid, save_sec);
}

static void
spi_lookup(McRelRules *rr, int g, List *vals, int event,
		   const McSink *out, StringInfo buf)
{
	LGroup	   *grp = &rr->groups[g];
	Datum	   *elems;
	int			n = 0;
	Datum		param;
	int			ret;
	ListCell   *lc;
	const char **colvals = palloc(sizeof(char *) * Max(1, grp->ncols));
	int			lvl = mc_settings_pin(false);
	MemoryContext caller = CurrentMemoryContext;

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
		MemoryContext spicxt;

		for (int k = 0; k < grp->ncols; k++)
			colvals[k] = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, k + 1);
		/* the sink allocates in the caller's memory, not SPI's */
		spicxt = MemoryContextSwitchTo(caller);
		emit_group_row(rr, g, event, colvals, out, buf);
		MemoryContextSwitchTo(spicxt);
		if (group_covered(rr, g, event, out))
			break;
	}
	SPI_freetuptable(SPI_tuptable);
	SPI_finish();
	mc_settings_restore(lvl);
}

/*
 * Collect the keys that changed rows (old and/or new images, from
 * transition tables) affect, then run each lookup group once.
 */
void
mc_collect(McRelRules *rr, Relation rel, int event,
		   Tuplestorestate *oldtab, Tuplestorestate *newtab,
		   TupleTableSlot *oldslot, TupleTableSlot *newslot,
		   const McSink *out, bool again)
{
	List	  **groupvals = palloc0(sizeof(List *) * Max(1, rr->ngroups));
	StringInfoData buf;
	int			lvl = -1;
	RowText		rt;

	rt.text = palloc(sizeof(char *) * Max(1, rr->natts));
	rt.gen = palloc0(sizeof(uint64) * Max(1, rr->natts));
	rt.row = 0;

	if (rr->canonical)
		lvl = mc_settings_pin(true);
	initStringInfo(&buf);
	if (scan_table(rr, event, oldtab, oldslot, out, groupvals, &buf, &rt))
		scan_table(rr, event, newtab, newslot, out, groupvals, &buf, &rt);

	for (int g = 0; g < rr->ngroups; g++)
	{
		LGroup	   *grp = &rr->groups[g];

		/* covered since its values were gathered: nothing left to find */
		if (groupvals[g] == NIL || group_covered(rr, g, event, out))
			continue;
		/* in queue mode the drain's resolution after commit is the only one */
		if (!again || mc_effective_delivery() != MC_DELIVERY_QUEUE)
		{
			if (!grp->index_checked)
				choose_index(rr, grp);
			/* before the lookup's snapshot: may its second resolution go? */
			if (again)
				mc_recheck_watch(grp->via_relid);
			lookup_as_owner(rr, g, groupvals[g], event, out, &buf, false);
		}
		else
			mc_recheck_unwatched();
		/* after the lookup: none for the rules it left covered */
		if (again)
			record_again(rr, g, groupvals[g], event, out);
	}
	if (lvl >= 0)
		mc_settings_restore(lvl);
}

/*
 * Keep a group's lookups to be resolved again after commit: one entry per
 * rule and matched value (pending.c dedups them).
 */
static void
record_again(McRelRules *rr, int g, List *vals, int event, const McSink *out)
{
	ListCell   *lc;

	for (int i = 0; i < rr->nrules; i++)
	{
		CRule	   *c = &rr->rules[i];

		if (c->group != g || c->broken || !(c->raw->events & event) ||
			rule_covered(out, c))
			continue;
		foreach(lc, vals)
		{
			mc_pending_add_lookup(rr->relid, c->raw->id, c->raw->family, lfirst(lc));
			if (rule_covered(out, c))
				break;			/* its family is deleted whole now */
		}
	}
}

/* ---- resolving lookups again, after commit (the drains) ---- */

typedef struct Again
{
	McRelRules *rr;
	int			g;
	char	   *prefix;
	List	   *vals;
} Again;

typedef struct AgainSink
{
	void		(*out) (void *arg, const char *s, int len, bool pattern);
	void	   *arg;
	const char *prefix;
} AgainSink;

/* a family, deleted whole: its key, or its pattern under the prefix */
static void
again_family(AgainSink *o, McFamily *f)
{
	StringInfoData s;

	initStringInfo(&s);
	if (f->tmpl->nargs == 0)
		mc_render(&s, f->tmpl, o->prefix, NULL);
	else
	{
		mc_append_glob_escaped(&s, o->prefix, strlen(o->prefix));
		appendStringInfoString(&s, f->tmpl->glob);
	}
	o->out(o->arg, s.data, s.len, f->tmpl->nargs > 0);
	pfree(s.data);
}

static void
again_sink(void *arg, const char *key, int len, McFamily *family, int rule_id)
{
	AgainSink  *o = arg;

	if (key != NULL)
		o->out(o->arg, key, len, false);
	else
		again_family(o, family);
}

static RawRule *
find_raw_rule(int id)
{
	for (int i = 0; i < nraw; i++)
		if (raw_rules[i].id == id)
			return &raw_rules[i];
	return NULL;
}

static int
cmp_cstr(const ListCell *a, const ListCell *b)
{
	return strcmp(lfirst(a), lfirst(b));
}

/* a parsed lookup entry */
typedef struct AgainEntry
{
	Oid			relid;
	int			rule_id;
	char	   *family;
	char	   *prefix;
	char	   *value;
} AgainEntry;

/* "relid:rule_id:family:prefix-length:prefix value", or false */
static bool
parse_again(const McStr *m, AgainEntry *e)
{
	char	   *s = pnstrdup(m->s, m->len);
	char	   *p1 = strchr(s, ':');
	char	   *p2 = p1 ? strchr(p1 + 1, ':') : NULL;
	char	   *p3 = p2 ? strchr(p2 + 1, ':') : NULL;
	char	   *p4 = p3 ? strchr(p3 + 1, ':') : NULL;
	int			plen;

	if (p4 == NULL)
		return false;
	*p1 = *p2 = *p3 = *p4 = '\0';
	e->relid = (Oid) strtoul(s, NULL, 10);
	e->rule_id = atoi(p1 + 1);
	e->family = p2 + 1;
	plen = atoi(p3 + 1);
	if (plen < 0 || plen > (int) strlen(p4 + 1))
		return false;
	e->prefix = pnstrdup(p4 + 1, plen);
	e->value = p4 + 1 + plen;
	return true;
}

/*
 * Resolve lookup entries (mc_pending_add_lookup) again, in a drain's
 * transaction: the lookups read with a fresh snapshot, taken after the
 * entries' transactions committed.  Keys found go to out; so do whole
 * families where a rule, its table or its lookup is gone or no longer
 * compiles, where a table is locked right now (a drain never waits), and
 * where a lookup fails (nothing here may stall the queue).  Each lookup
 * group runs once per key prefix for its distinct values, for every rule
 * of the group.
 */
void
mc_resolve_lookups(McStr *entries, int n,
				   void (*out) (void *arg, const char *s, int len, bool pattern),
				   void *arg)
{
	AgainEntry *es = palloc0(sizeof(AgainEntry) * Max(1, n));
	bool	   *ok = palloc0(sizeof(bool) * Max(1, n));
	List	   *agains = NIL;
	List	   *locked = NIL;
	ListCell   *lc;
	StringInfoData buf;

	/* locks first, then the catalog once: no reload while groups are built */
	for (int i = 0; i < n; i++)
	{
		ok[i] = parse_again(&entries[i], &es[i]);
		if (!ok[i] || list_member_oid(locked, es[i].relid))
			continue;
		if (ConditionalLockRelationOid(es[i].relid, AccessShareLock))
			locked = lappend_oid(locked, es[i].relid);
	}
	ensure_catalog();
	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
	{
		AgainEntry *e = &es[i];
		RawRule    *r;
		McRelRules *rr = NULL;
		CRule	   *c = NULL;
		Again	   *a = NULL;

		if (!ok[i])
			continue;			/* not ours */
		r = find_raw_rule(e->rule_id);
		if (r != NULL && r->via_table != NULL && strcmp(r->family->name, e->family) == 0 &&
			list_member_oid(locked, e->relid) &&
			SearchSysCacheExists1(RELOID, ObjectIdGetDatum(e->relid)))
		{
			Relation	rel = relation_open(e->relid, NoLock);

			rr = mc_rel_rules(rel, r->table_name, false);
			relation_close(rel, NoLock);
			for (int k = 0; k < rr->nrules; k++)
				if (rr->rules[k].raw->id == e->rule_id)
					c = &rr->rules[k];
		}
		if (c == NULL || c->broken || c->group < 0)
		{
			/* the rule, its table or its lookup changed since, or is locked */
			McFamily   *f = mc_find_family(e->family);
			AgainSink	o = {out, arg, e->prefix};

			if (f != NULL)
				again_family(&o, f);
			continue;
		}
		foreach(lc, agains)
		{
			Again	   *x = lfirst(lc);

			if (x->rr == rr && x->g == c->group && strcmp(x->prefix, e->prefix) == 0)
				a = x;
		}
		if (a == NULL)
		{
			a = palloc0(sizeof(Again));
			a->rr = rr;
			a->g = c->group;
			a->prefix = e->prefix;
			agains = lappend(agains, a);
		}
		a->vals = lappend(a->vals, e->value);
	}
	foreach(lc, agains)
	{
		Again	   *a = lfirst(lc);
		LGroup	   *grp = &a->rr->groups[a->g];
		AgainSink	o = {out, arg, a->prefix};
		McSink		sink = {again_sink, NULL, &o, a->prefix};
		List	   *vals = NIL;
		ListCell   *lc2;
		int			lvl;

		/* one lookup per distinct value, however many rules and rows named it */
		list_sort(a->vals, cmp_cstr);
		foreach(lc2, a->vals)
			if (vals == NIL || strcmp(llast(vals), lfirst(lc2)) != 0)
				vals = lappend(vals, lfirst(lc2));
		if (!ConditionalLockRelationOid(grp->via_relid, AccessShareLock))
		{
			for (int i = 0; i < a->rr->nrules; i++)
				if (a->rr->rules[i].group == a->g)
					again_family(&o, a->rr->rules[i].raw->family);
			continue;
		}
		lvl = mc_settings_pin(a->rr->canonical);
		if (!grp->index_checked)
			choose_index(a->rr, grp);
		if (OidIsValid(grp->indexoid) &&
			!ConditionalLockRelationOid(grp->indexoid, AccessShareLock))
		{
			for (int i = 0; i < a->rr->nrules; i++)
				if (a->rr->rules[i].group == a->g)
					again_family(&o, a->rr->rules[i].raw->family);
			mc_settings_restore(lvl);
			continue;
		}
		lookup_as_owner(a->rr, a->g, vals, MC_EV_INSERT | MC_EV_UPDATE | MC_EV_DELETE,
						&sink, &buf, true);
		mc_settings_restore(lvl);
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

/* the same from the catalog alone, for a table that is gone */
List *
mc_rule_name_families(const char *table_name)
{
	List	   *out = NIL;

	ensure_catalog();
	for (int i = 0; i < nraw; i++)
		if (strcmp(raw_rules[i].table_name, table_name) == 0)
			out = list_append_unique_ptr(out, raw_rules[i].family);
	return out;
}
