/*
 * guard.c
 *	  Who may put meetcache triggers on a table, and what keeps them there.
 *
 *	  - attach() and detach() are the only ways meetcache triggers are
 *	    created or dropped by anyone but a superuser: the trigger function
 *	    is not executable by PUBLIC, so they create the triggers as the
 *	    bootstrap superuser after checking that the caller owns the table.
 *	    Attaching a partitioned table or an inheritance parent attaches
 *	    every partition and child too, under the same rule name.
 *	  - The guard's event triggers (all ENABLE ALWAYS):
 *	      ddl_command_start  pushes a snapshot of the meetcache triggers and
 *	                         of the inheritance links of attached tables;
 *	      ddl_command_end    pops it and refuses any change to a meetcache
 *	                         trigger (drop, rename, replace, anything but
 *	                         ENABLE ALWAYS, DEPENDS ON EXTENSION); attaches a
 *	                         new partition or child of an attached table;
 *	                         refuses making an attached table a partition
 *	                         or child of an unattached one; compiles the
 *	                         rules of every attached table again, so DDL
 *	                         that breaks a rule fails now, not at a write;
 *	      table_rewrite      a rewritten attached table (ALTER COLUMN TYPE
 *	                         ... USING) invalidates its families, as
 *	                         TRUNCATE does.
 *	  - invalidate_all().
 *
 * Invariants: snapshots form a stack, one frame per DDL command being run,
 * so DDL nested inside another command (a function called by ALTER TABLE)
 * compares against its own frame and never replaces its caller's; frames
 * and the attach/detach allowances of an aborted subtransaction are popped
 * with it, and everything is forgotten at the end of the transaction.  An
 * allowance exists only while attach()/detach() run their own DDL.
 * Nothing here is callable from SQL except attach(), detach() and the
 * event trigger functions (which PostgreSQL lets run only as event
 * triggers).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "commands/event_trigger.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/cmdtag.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "meetcache.h"

#if PG_VERSION_NUM >= 170000
#define MY_LXID (MyProc->vxid.lxid)
#else
#define MY_LXID (MyProc->lxid)
#endif

#if PG_VERSION_NUM >= 160000
#define rel_owned_by(relid, role) object_ownercheck(RelationRelationId, (relid), (role))
#else
#define rel_owned_by(relid, role) pg_class_ownercheck((relid), (role))
#endif

static const char *const trigger_names[] = {
	"meetcache_ins", "meetcache_upd", "meetcache_del", "meetcache_trunc"
};

/* one meetcache trigger as seen in pg_trigger */
typedef struct GuardTrig
{
	Oid			tgoid;
	Oid			relid;
	NameData	name;
	char		state;
	Oid			fn;
	char	   *rule_name;		/* its first argument */
} GuardTrig;

typedef struct GuardLink
{
	Oid			parent;
	Oid			child;
} GuardLink;

typedef struct GuardFrame
{
	int			level;			/* transaction nest level at push */
	MemoryContext cxt;			/* holds the frame; deleted when it is popped */
	CommandId	cid;			/* the command's first command id */
	List	   *trigs;			/* GuardTrig *: the meetcache triggers */
	List	   *links;			/* GuardLink *: links of attached tables */
	List	   *broken;			/* attached relids whose rules did not compile */
} GuardFrame;

typedef struct Allowance
{
	Oid			relid;
	int			level;
} Allowance;

static List *frames = NIL;		/* GuardFrame *, innermost last */
static List *allowed = NIL;		/* Allowance * */
static LocalTransactionId state_lxid = InvalidLocalTransactionId;

/* forget the previous transaction's state (its memory is gone) */
static void
state_check_xact(void)
{
	if (state_lxid != MY_LXID)
	{
		frames = NIL;
		allowed = NIL;
		state_lxid = MY_LXID;
	}
}

/* drop the innermost frame and its memory */
static void
frame_pop(void)
{
	GuardFrame *f = llast(frames);

	frames = list_delete_last(frames);
	MemoryContextDelete(f->cxt);
}

static void
guard_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			level;

	if (event != SUBXACT_EVENT_ABORT_SUB || state_lxid != MY_LXID)
		return;
	level = GetCurrentTransactionNestLevel();
	while (frames != NIL && ((GuardFrame *) llast(frames))->level >= level)
		frame_pop();
	while (allowed != NIL && ((Allowance *) llast(allowed))->level >= level)
		allowed = list_delete_last(allowed);
}

void
mc_guard_init(void)
{
	RegisterSubXactCallback(guard_subxact_callback, NULL);
}

static bool
is_allowed(Oid relid)
{
	ListCell   *lc;

	state_check_xact();
	foreach(lc, allowed)
		if (((Allowance *) lfirst(lc))->relid == relid)
			return true;
	return false;
}

static void
allow_push(Oid relid)
{
	MemoryContext old;
	Allowance  *a;

	state_check_xact();
	old = MemoryContextSwitchTo(TopTransactionContext);
	a = palloc(sizeof(Allowance));
	a->relid = relid;
	a->level = GetCurrentTransactionNestLevel();
	allowed = lappend(allowed, a);
	MemoryContextSwitchTo(old);
}

static void
allow_pop(void)
{
	if (allowed != NIL)
		allowed = list_delete_last(allowed);
}

/* ---- reading the catalogs ---- */

/* meetcache.invalidate_trigger()'s oid, InvalidOid while it does not exist */
static Oid
trigger_fn(void)
{
	return LookupFuncName(list_make2(makeString("meetcache"),
									 makeString("invalidate_trigger")),
						  0, NULL, true);
}

static char *
first_arg(HeapTuple tup, TupleDesc td)
{
	Form_pg_trigger t = (Form_pg_trigger) GETSTRUCT(tup);
	bool		isnull;
	Datum		d;
	bytea	   *b;

	if (t->tgnargs < 1)
		return NULL;
	d = heap_getattr(tup, Anum_pg_trigger_tgargs, td, &isnull);
	if (isnull)
		return NULL;
	b = DatumGetByteaPP(d);
	return pnstrdup(VARDATA_ANY(b), strnlen(VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b)));
}

/*
 * The triggers calling fn (every one, when relid is InvalidOid; else those
 * of relid), in the current memory context.
 */
static List *
read_triggers(Oid fn, Oid relid)
{
	Relation	rel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *out = NIL;

	if (OidIsValid(relid))
	{
		ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber,
					F_OIDEQ, ObjectIdGetDatum(relid));
		scan = systable_beginscan(rel, TriggerRelidNameIndexId, true, NULL, 1, &key);
	}
	else
	{
		ScanKeyInit(&key, Anum_pg_trigger_tgfoid, BTEqualStrategyNumber,
					F_OIDEQ, ObjectIdGetDatum(fn));
		scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	}
	while ((tup = systable_getnext(scan)) != NULL)
	{
		Form_pg_trigger t = (Form_pg_trigger) GETSTRUCT(tup);
		GuardTrig  *g;

		if (t->tgfoid != fn)
			continue;
		g = palloc0(sizeof(GuardTrig));
		g->tgoid = t->oid;
		g->relid = t->tgrelid;
		g->name = t->tgname;
		g->state = t->tgenabled;
		g->fn = t->tgfoid;
		g->rule_name = first_arg(tup, RelationGetDescr(rel));
		out = lappend(out, g);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return out;
}

/* the rule name relid is attached under, or NULL */
static const char *
attached_as(List *trigs, Oid relid)
{
	ListCell   *lc;

	foreach(lc, trigs)
	{
		GuardTrig  *g = lfirst(lc);

		if (g->relid == relid && g->rule_name != NULL)
			return g->rule_name;
	}
	return NULL;
}

static List *
attached_relids(List *trigs)
{
	List	   *out = NIL;
	ListCell   *lc;

	foreach(lc, trigs)
		out = list_append_unique_oid(out, ((GuardTrig *) lfirst(lc))->relid);
	return out;
}

/* direct inheritance parents of relid (partitioning or INHERITS) */
static List *
parents_of(Oid relid)
{
	Relation	rel = table_open(InheritsRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *out = NIL;

	ScanKeyInit(&key, Anum_pg_inherits_inhrelid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InheritsRelidSeqnoIndexId, true, NULL, 1, &key);
	while ((tup = systable_getnext(scan)) != NULL)
		out = lappend_oid(out, ((Form_pg_inherits) GETSTRUCT(tup))->inhparent);
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return out;
}

/* was the pg_inherits row parent <- child made by a command from cid on? */
static bool
link_created_since(Oid parent, Oid child, CommandId cid)
{
	Relation	rel = table_open(InheritsRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		created = false;

	ScanKeyInit(&key, Anum_pg_inherits_inhrelid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(child));
	scan = systable_beginscan(rel, InheritsRelidSeqnoIndexId, true, NULL, 1, &key);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		HeapTupleHeader h = tup->t_data;

		if (((Form_pg_inherits) GETSTRUCT(tup))->inhparent == parent &&
			TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(h)) &&
			HeapTupleHeaderGetCmin(h) >= cid)
			created = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return created;
}

static void
add_link(List **links, Oid parent, Oid child)
{
	ListCell   *lc;
	GuardLink  *l;

	foreach(lc, *links)
	{
		l = lfirst(lc);
		if (l->parent == parent && l->child == child)
			return;
	}
	l = palloc(sizeof(GuardLink));
	l->parent = parent;
	l->child = child;
	*links = lappend(*links, l);
}

/* every inheritance link with an attached table at either end */
static List *
read_links(List *trigs)
{
	List	   *links = NIL;
	ListCell   *lc;

	foreach(lc, attached_relids(trigs))
	{
		Oid			relid = lfirst_oid(lc);
		ListCell   *lc2;

		if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
			continue;
		foreach(lc2, parents_of(relid))
			add_link(&links, lfirst_oid(lc2), relid);
		foreach(lc2, find_inheritance_children(relid, NoLock))
			add_link(&links, relid, lfirst_oid(lc2));
	}
	return links;
}

static bool
has_link(List *links, GuardLink *l)
{
	ListCell   *lc;

	foreach(lc, links)
	{
		GuardLink  *m = lfirst(lc);

		if (m->parent == l->parent && m->child == l->child)
			return true;
	}
	return false;
}

/* ---- creating and dropping the triggers ---- */

/*
 * Run one utility command as the bootstrap superuser, with search_path
 * pinned.  Only commands built here from quoted identifiers come here.
 */
static void
run_ddl(const char *sql)
{
	Oid			save_userid;
	int			save_sec;
	int			lvl;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	lvl = mc_settings_pin(false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "meetcache: SPI_connect failed");
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "meetcache: could not run \"%s\"", sql);
	SPI_finish();
	mc_settings_restore(lvl);
	SetUserIdAndSecContext(save_userid, save_sec);
}

static char *
qualified_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

static void
drop_triggers(Oid relid, Oid fn)
{
	ListCell   *lc;

	foreach(lc, read_triggers(fn, relid))
	{
		GuardTrig  *g = lfirst(lc);

		run_ddl(psprintf("DROP TRIGGER %s ON %s",
						 quote_identifier(NameStr(g->name)), qualified_name(relid)));
	}
}

/* (re)create the four triggers of one relation, ENABLE ALWAYS */
static void
attach_one(Oid relid, const char *rule_name, Oid fn)
{
	char	   *rel = qualified_name(relid);
	char	   *arg = quote_literal_cstr(rule_name);

	allow_push(relid);
	drop_triggers(relid, fn);
	run_ddl(psprintf("CREATE TRIGGER meetcache_ins AFTER INSERT ON %s "
					 "REFERENCING NEW TABLE AS meetcache_new FOR EACH STATEMENT "
					 "EXECUTE FUNCTION meetcache.invalidate_trigger(%s)", rel, arg));
	run_ddl(psprintf("CREATE TRIGGER meetcache_upd AFTER UPDATE ON %s "
					 "REFERENCING OLD TABLE AS meetcache_old NEW TABLE AS meetcache_new "
					 "FOR EACH STATEMENT EXECUTE FUNCTION meetcache.invalidate_trigger(%s)",
					 rel, arg));
	run_ddl(psprintf("CREATE TRIGGER meetcache_del AFTER DELETE ON %s "
					 "REFERENCING OLD TABLE AS meetcache_old FOR EACH STATEMENT "
					 "EXECUTE FUNCTION meetcache.invalidate_trigger(%s)", rel, arg));
	run_ddl(psprintf("CREATE TRIGGER meetcache_trunc AFTER TRUNCATE ON %s "
					 "FOR EACH STATEMENT EXECUTE FUNCTION meetcache.invalidate_trigger(%s)",
					 rel, arg));
	run_ddl(psprintf("ALTER TABLE %s ENABLE ALWAYS TRIGGER %s, ENABLE ALWAYS TRIGGER %s, "
					 "ENABLE ALWAYS TRIGGER %s, ENABLE ALWAYS TRIGGER %s", rel,
					 trigger_names[0], trigger_names[1], trigger_names[2], trigger_names[3]));
	allow_pop();
}

/* a relation and every partition or child below it */
static List *
tree_of(Oid relid, LOCKMODE lock)
{
	return find_all_inheritors(relid, lock, NULL);
}

static void
attach_tree(Oid relid, const char *rule_name, Oid fn)
{
	ListCell   *lc;

	foreach(lc, tree_of(relid, ShareRowExclusiveLock))
		attach_one(lfirst_oid(lc), rule_name, fn);
}

/* the checks attach() makes on one relation; returns its number of rules */
static int
check_attachable(Oid relid, const char *rule_name)
{
	Relation	rel = table_open(relid, ShareRowExclusiveLock);
	char		kind = rel->rd_rel->relkind;
	int			n;

	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errdetail("meetcache attaches to ordinary and partitioned tables only.")));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot attach temporary table \"%s\"", RelationGetRelationName(rel)),
				 errdetail("A temporary table is private to one session; its rows are not what other sessions cache.")));
	if (!rel_owned_by(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(kind),
					   RelationGetRelationName(rel));
	n = mc_check_rel(rel, rule_name);
	table_close(rel, NoLock);
	return n;
}

static Oid
require_fn(void)
{
	Oid			fn = trigger_fn();

	if (!OidIsValid(fn))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"meetcache\" is not installed in this database")));
	return fn;
}

/* the regclass argument of attach() and detach() */
static Oid
table_arg(FunctionCallInfo fcinfo)
{
	Oid			relid;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table must not be null")));
	relid = PG_GETARG_OID(0);
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	return relid;
}

/*
 * meetcache.attach(tbl regclass, table_name text DEFAULT NULL)
 *	  Create the triggers on tbl and every partition or child of it.  The
 *	  caller must own tbl (and EXECUTE on attach() is not granted to PUBLIC).
 */
PG_FUNCTION_INFO_V1(meetcache_attach);
Datum
meetcache_attach(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *rule_name;
	Oid			fn = require_fn();
	ListCell   *lc;

	relid = table_arg(fcinfo);
	rule_name = PG_ARGISNULL(1) ? get_rel_name(relid) : text_to_cstring(PG_GETARG_TEXT_PP(1));

	mc_rules_reload();
	if (check_attachable(relid, rule_name) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no meetcache rules for table \"%s\"", rule_name),
				 errhint("Add rules to meetcache.rules, or attach the table under the name its rules use: meetcache.attach('my_table', 'meetings').")));
	foreach(lc, tree_of(relid, ShareRowExclusiveLock))
		if (lfirst_oid(lc) != relid)
			(void) check_attachable(lfirst_oid(lc), rule_name);
	attach_tree(relid, rule_name, fn);
	PG_RETURN_VOID();
}

/* meetcache.detach(tbl regclass): drop the triggers of tbl and of everything below it */
PG_FUNCTION_INFO_V1(meetcache_detach);
Datum
meetcache_detach(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Oid			fn = require_fn();
	ListCell   *lc;

	relid = table_arg(fcinfo);
	foreach(lc, tree_of(relid, ShareRowExclusiveLock))
	{
		Oid			r = lfirst_oid(lc);

		if (!rel_owned_by(r, GetUserId()))
			aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(get_rel_relkind(r)),
						   get_rel_name(r));
		allow_push(r);
		drop_triggers(r, fn);
		allow_pop();
	}
	PG_RETURN_VOID();
}

/* ---- the event triggers ---- */

static void
require_event_trigger(FunctionCallInfo fcinfo)
{
	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "meetcache: not called by the event trigger manager");
}

/*
 * An attached table, if it exists and its lock is free: the guard never
 * waits for a lock (another session's DDL on it runs its own check).
 */
static Relation
open_if_free(Oid relid)
{
	if (!ConditionalLockRelationOid(relid, AccessShareLock))
		return NULL;
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
	{
		UnlockRelationOid(relid, AccessShareLock);
		return NULL;
	}
	return table_open(relid, NoLock);
}

/* delete the families of a rule name when the transaction commits */
static void
invalidate_rule_name(const char *rule_name)
{
	mc_invalidate_families(mc_rule_name_families(rule_name));
}

PG_FUNCTION_INFO_V1(meetcache_guard_start);
Datum
meetcache_guard_start(PG_FUNCTION_ARGS)
{
	Oid			fn;
	MemoryContext cxt,
				old;
	GuardFrame *f;
	ListCell   *lc;

	require_event_trigger(fcinfo);
	fn = trigger_fn();
	if (!OidIsValid(fn) || IsBinaryUpgrade)
		PG_RETURN_VOID();
	state_check_xact();
	cxt = AllocSetContextCreate(TopTransactionContext, "meetcache guard frame",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	f = palloc0(sizeof(GuardFrame));
	f->cxt = cxt;
	f->level = GetCurrentTransactionNestLevel();
	f->cid = GetCurrentCommandId(false);
	f->trigs = read_triggers(fn, InvalidOid);
	f->links = read_links(f->trigs);
	foreach(lc, attached_relids(f->trigs))
	{
		Oid			relid = lfirst_oid(lc);
		Relation	rel;

		/* DDL may change what fires on it: a write, for recheck.c */
		mc_recheck_wrote_relid(relid);
		rel = open_if_free(relid);

		if (rel == NULL)
			continue;
		if (mc_rel_broken(rel, attached_as(f->trigs, relid)))
			f->broken = lappend_oid(f->broken, relid);
		table_close(rel, AccessShareLock);
	}
	MemoryContextSwitchTo(TopTransactionContext);
	frames = lappend(frames, f);
	MemoryContextSwitchTo(old);
	PG_RETURN_VOID();
}

static GuardTrig *
find_trig(List *trigs, Oid tgoid)
{
	ListCell   *lc;

	foreach(lc, trigs)
		if (((GuardTrig *) lfirst(lc))->tgoid == tgoid)
			return lfirst(lc);
	return NULL;
}

/*
 * Has catalog a row whose oid column attnum (the first column of index)
 * is value?  (Also recheck.c's.)
 */
bool
mc_catalog_has_row(Oid catalog, Oid index, AttrNumber attnum, Oid value)
{
	Relation	r = table_open(catalog, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	bool		found;

	ScanKeyInit(&key, attnum, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(value));
	scan = systable_beginscan(r, index, true, NULL, 1, &key);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(r, AccessShareLock);
	return found;
}

static bool
trigger_exists(Oid tgoid)
{
	return mc_catalog_has_row(TriggerRelationId, TriggerOidIndexId, Anum_pg_trigger_oid, tgoid);
}

static int
cmp_names(const ListCell *a, const ListCell *b)
{
	return strcmp(lfirst(a), lfirst(b));
}

static void
refuse_change(List *before, List *now)
{
	ListCell   *lc;
	Oid			bad_rel = InvalidOid;
	List	   *bad = NIL;
	StringInfoData names;

	/* drops, renames and replacements first */
	foreach(lc, before)
	{
		GuardTrig  *b = lfirst(lc);
		GuardTrig  *n;
		char	   *tbl;

		if (is_allowed(b->relid) || !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(b->relid)))
			continue;
		n = find_trig(now, b->tgoid);
		tbl = qualified_name(b->relid);
		if (n == NULL && !trigger_exists(b->tgoid))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot drop meetcache trigger %s of table %s", NameStr(b->name), tbl),
					 errdetail("Writes to a table without its meetcache triggers leave stale keys in Redis."),
					 errhint("Use SELECT meetcache.detach(%s) to stop invalidating this table.",
							 quote_literal_cstr(tbl))));
		/* still there but calling another function, or under another name */
		if (n == NULL || strcmp(NameStr(n->name), NameStr(b->name)) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot replace or rename meetcache trigger %s of table %s", NameStr(b->name), tbl),
					 errdetail("meetcache finds its triggers by name and function."),
					 errhint("Use SELECT meetcache.detach(%s) and meetcache.attach(%s) to recreate them.",
							 quote_literal_cstr(tbl), quote_literal_cstr(tbl))));
	}

	/* then state changes away from ENABLE ALWAYS, named per table */
	foreach(lc, before)
	{
		GuardTrig  *b = lfirst(lc);
		GuardTrig  *n = find_trig(now, b->tgoid);

		if (n == NULL || n->state == TRIGGER_FIRES_ALWAYS || n->state == b->state ||
			is_allowed(b->relid))
			continue;
		if (OidIsValid(bad_rel) && bad_rel != b->relid)
			continue;
		bad_rel = b->relid;
		bad = lappend(bad, pstrdup(quote_identifier(NameStr(n->name))));
	}
	if (OidIsValid(bad_rel))
	{
		ListCell   *lc2;
		char	   *tbl = qualified_name(bad_rel);

		list_sort(bad, cmp_names);
		initStringInfo(&names);
		foreach(lc2, bad)
			appendStringInfo(&names, "%s%s", names.len ? ", " : "", (char *) lfirst(lc2));

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot change meetcache trigger %s of table %s from ENABLE ALWAYS", names.data, tbl),
				 errdetail("Writes that skip a meetcache trigger leave stale keys in Redis."),
				 errhint("To stop invalidating this table, run SELECT meetcache.detach(%s); to attach it again, meetcache.attach(%s).",
						 quote_literal_cstr(tbl), quote_literal_cstr(tbl))));
	}
}

/* ALTER TRIGGER ... DEPENDS ON EXTENSION would let DROP EXTENSION drop it */
static void
refuse_extension_deps(List *now)
{
	Relation	dep = table_open(DependRelationId, AccessShareLock);
	ListCell   *lc;

	foreach(lc, now)
	{
		GuardTrig  *g = lfirst(lc);
		ScanKeyData keys[2];
		SysScanDesc scan;
		HeapTuple	tup;

		if (is_allowed(g->relid))
			continue;
		ScanKeyInit(&keys[0], Anum_pg_depend_classid, BTEqualStrategyNumber,
					F_OIDEQ, ObjectIdGetDatum(TriggerRelationId));
		ScanKeyInit(&keys[1], Anum_pg_depend_objid, BTEqualStrategyNumber,
					F_OIDEQ, ObjectIdGetDatum(g->tgoid));
		scan = systable_beginscan(dep, DependDependerIndexId, true, NULL, 2, keys);
		while ((tup = systable_getnext(scan)) != NULL)
			if (((Form_pg_depend) GETSTRUCT(tup))->deptype == DEPENDENCY_AUTO_EXTENSION)
			{
				char	   *tbl = qualified_name(g->relid);

				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("meetcache trigger %s of table %s cannot depend on an extension",
								NameStr(g->name), tbl),
						 errdetail("Dropping that extension would drop the trigger."),
						 errhint("Use SELECT meetcache.detach(%s) to stop invalidating this table.",
								 quote_literal_cstr(tbl))));
			}
		systable_endscan(scan);
	}
	table_close(dep, AccessShareLock);
}

/*
 * Inheritance links made or removed by this command.  Rows appear in or
 * leave the parent without a write, so the parent's families are deleted.
 * A new partition or child of an attached table is attached under the
 * parent's rule name; an attached table may not become the partition or
 * child of a table that is not attached, nor of one attached under another
 * rule name, and a temporary table may not become a child of an attached
 * one.  Links made by earlier commands (a restore that creates triggers
 * after ATTACH PARTITION) are not this command's business.
 */
static void
follow_links(GuardFrame *f, List *now, Oid fn)
{
	List	   *links_now = read_links(now);
	ListCell   *lc;

	foreach(lc, f->links)
	{
		GuardLink  *l = lfirst(lc);
		const char *pname = attached_as(f->trigs, l->parent);

		if (!has_link(links_now, l) && pname != NULL)
			invalidate_rule_name(pname);
	}
	foreach(lc, links_now)
	{
		GuardLink  *l = lfirst(lc);
		const char *pname = attached_as(now, l->parent);
		const char *cname = attached_as(now, l->child);
		char	   *child;
		char	   *parent;

		if (has_link(f->links, l) || !link_created_since(l->parent, l->child, f->cid))
			continue;
		child = qualified_name(l->child);
		parent = qualified_name(l->parent);
		if (pname != NULL && get_rel_persistence(l->child) == RELPERSISTENCE_TEMP)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot make temporary table %s a partition or child of attached table %s",
							child, parent),
					 errdetail("meetcache does not attach temporary tables.")));
		if (pname != NULL && cname == NULL)
			attach_tree(l->child, pname, fn);
		else if (cname != NULL && pname == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot make attached table %s a partition or child of %s, which is not attached",
							child, parent),
					 errdetail("Writes through %s would not fire the meetcache triggers of %s.", parent, child),
					 errhint("Attach the parent first: SELECT meetcache.attach(%s, %s).",
							 quote_literal_cstr(parent), quote_literal_cstr(cname))));
		else if (cname != NULL && strcmp(cname, pname) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot make table %s, attached as \"%s\", a partition or child of %s, attached as \"%s\"",
							child, cname, parent, pname),
					 errdetail("Writes through %s produce only the keys of the rules of \"%s\".", parent, pname),
					 errhint("Detach %s first, or attach it under \"%s\".", child, pname)));
		if (pname != NULL)
			invalidate_rule_name(pname);
	}
}

typedef struct RecheckContext
{
	const char *rel;
	const char *tag;
} RecheckContext;

static void
recheck_context(void *arg)
{
	RecheckContext *c = arg;

	errcontext("meetcache: checking the rules of attached table %s after %s", c->rel, c->tag);
}

/*
 * Every attached table must still compile against the rules.  A table
 * whose rules already did not compile before this command is not this
 * command's fault: its writes delete whole families (with a WARNING), and
 * the command passes.
 */
static void
recheck_rules(GuardFrame *f, List *now, const char *tag)
{
	ListCell   *lc;

	mc_rules_reload();
	foreach(lc, attached_relids(now))
	{
		Oid			relid = lfirst_oid(lc);
		Relation	rel;
		ErrorContextCallback cb;
		RecheckContext ctx;

		if (f != NULL && list_member_oid(f->broken, relid))
			continue;
		rel = open_if_free(relid);
		if (rel == NULL)
			continue;
		if (mc_rel_broken(rel, attached_as(now, relid)))
		{
			ctx.rel = qualified_name(relid);
			ctx.tag = tag;
			cb.callback = recheck_context;
			cb.arg = &ctx;
			cb.previous = error_context_stack;
			error_context_stack = &cb;
			(void) mc_check_rel(rel, attached_as(now, relid));	/* raises the error */
			error_context_stack = cb.previous;
		}
		table_close(rel, AccessShareLock);
	}
}

PG_FUNCTION_INFO_V1(meetcache_guard_end);
Datum
meetcache_guard_end(PG_FUNCTION_ARGS)
{
	EventTriggerData *trig = (EventTriggerData *) fcinfo->context;
	Oid			fn;
	GuardFrame *f = NULL;
	List	   *now;

	require_event_trigger(fcinfo);
	fn = trigger_fn();
	if (!OidIsValid(fn) || IsBinaryUpgrade)
		PG_RETURN_VOID();
	state_check_xact();
	if (frames != NIL)
	{
		f = llast(frames);
		frames = list_delete_last(frames);
	}
	now = read_triggers(fn, InvalidOid);
	if (f != NULL)
	{
		ListCell   *lc;

		refuse_change(f->trigs, now);
		follow_links(f, now, fn);
		/* a dropped attached table took its rows with it */
		foreach(lc, attached_relids(f->trigs))
			if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(lfirst_oid(lc))))
				invalidate_rule_name(attached_as(f->trigs, lfirst_oid(lc)));
		now = read_triggers(fn, InvalidOid);
	}
	refuse_extension_deps(now);
	recheck_rules(f, now, GetCommandTagName(trig->tag));
	if (f != NULL)
		MemoryContextDelete(f->cxt);
	PG_RETURN_VOID();
}

/* ALTER TABLE ... ALTER COLUMN TYPE ... USING and the like rewrite every row */
PG_FUNCTION_INFO_V1(meetcache_guard_rewrite);
Datum
meetcache_guard_rewrite(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Oid			fn;
	const char *name;

	require_event_trigger(fcinfo);
	fn = trigger_fn();
	if (!OidIsValid(fn) || IsBinaryUpgrade)
		PG_RETURN_VOID();
	relid = DatumGetObjectId(OidFunctionCall0(F_PG_EVENT_TRIGGER_TABLE_REWRITE_OID));
	name = attached_as(read_triggers(fn, relid), relid);
	if (name != NULL)
	{
		Relation	rel = table_open(relid, AccessShareLock);

		mc_invalidate_families(mc_rel_families(mc_rel_rules(rel, name, false)));
		table_close(rel, AccessShareLock);
	}
	PG_RETURN_VOID();
}

/* every key under the prefix, deleted when this transaction commits */
PG_FUNCTION_INFO_V1(meetcache_invalidate_all);
Datum
meetcache_invalidate_all(PG_FUNCTION_ARGS)
{
	StringInfoData pat;

	initStringInfo(&pat);
	mc_append_glob_escaped(&pat, mc_key_prefix, strlen(mc_key_prefix));
	appendStringInfoChar(&pat, '*');
	mc_pending_add_pattern(pat.data, pat.len);
	pfree(pat.data);
	PG_RETURN_VOID();
}
