/*
 * keys.c
 *	  The key grammar, in one place: key templates ("meeting:{meeting_id}:
 *	  participants": literal text and placeholders), rendering a key from a
 *	  template, the SCAN glob of a family and matching keys against it, and
 *	  a family's ttl_by_value.  The loader (rules.c) and the catalog's checks
 *	  (meetcache._placeholders, meetcache._check_family) call the same
 *	  parsers, so the catalog accepts exactly what is compiled.
 *
 * Invariants: a template has at most MC_MAX_PLACEHOLDERS placeholders and
 * is never empty; a glob escapes every literal character that SCAN would
 * read as a pattern (*, ?, [, ], \), so a family's glob matches exactly
 * the keys its template can render.
 */
#include "postgres.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/rel.h"

#include "meetcache.h"


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

/*
 * Parse a key template.  Returns NULL and sets *why when it is not one:
 * literal text with at most MC_MAX_PLACEHOLDERS placeholders {name}, names
 * of letters, digits and underscores, and braces only around them.
 */
McTemplate *
mc_template_parse(const char *tmpl, const char **why)
{
	McTemplate *t = palloc0(sizeof(McTemplate));
	List	   *lits = NIL,
			   *args = NIL;
	StringInfoData lit,
				glob;
	const char *p = tmpl;
	int			i;

	*why = "A template is literal text with placeholders such as {id}; placeholder names are letters, digits and underscores, and braces appear only around them.";
	initStringInfo(&lit);
	initStringInfo(&glob);
	while (*p)
	{
		if (*p == '{')
		{
			const char *close = strchr(p, '}');
			const char *q;

			if (close == NULL || close == p + 1)
				return NULL;
			for (q = p + 1; q < close; q++)
				if (!(isalnum((unsigned char) *q) || *q == '_'))
					return NULL;
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
			return NULL;
		appendStringInfoChar(&lit, *p++);
	}
	lits = lappend(lits, pnstrdup(lit.data, lit.len));
	mc_append_glob_escaped(&glob, lit.data, lit.len);
	t->literal_chars += lit.len;
	if (t->literal_chars == 0 && list_length(args) == 0)
	{
		*why = "A template must not be empty.";
		return NULL;
	}
	if (list_length(args) > MC_MAX_PLACEHOLDERS)
	{
		*why = psprintf("A template has at most %d placeholders.", MC_MAX_PLACEHOLDERS);
		return NULL;
	}

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
	*why = NULL;
	return t;
}

McTemplate *
mc_parse_template(const char *tmpl)
{
	const char *why;
	McTemplate *t = mc_template_parse(tmpl, &why);

	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid key template \"%s\"", tmpl),
				 errdetail("%s", why),
				 errhint("Example: \"meeting:{meeting_id}:participants\".")));
	return t;
}

/*
 * Parse a family's ttl_by_value (a JSON object of value -> whole seconds,
 * 1 to INT_MAX; 30 and 30.0 are the same number) into f.  Returns false and
 * sets *why when it is not one.
 */
bool
mc_parse_ttl_by_value(Datum jsonb, McFamily *f, const char **why)
{
	Jsonb	   *jb = DatumGetJsonbP(jsonb);
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			n = 0;

	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
	{
		*why = "ttl_by_value must be a JSON object.";
		return false;
	}
	f->nttl_values = JB_ROOT_COUNT(jb);
	f->ttl_values = palloc0(sizeof(char *) * Max(1, f->nttl_values));
	f->ttl_by_value = palloc0(sizeof(int) * Max(1, f->nttl_values));
	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			f->ttl_values[n] = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE)
		{
			Numeric		num;
			bool		whole;

			if (v.type != jbvNumeric)
			{
				*why = "ttl_by_value must map values to positive whole seconds.";
				return false;
			}
			num = v.val.numeric;
			whole = !numeric_is_nan(num) && !numeric_is_inf(num) &&
				DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(num),
												 DirectFunctionCall2(numeric_trunc, NumericGetDatum(num),
																	 Int32GetDatum(0))));
			if (!whole ||
				DatumGetBool(DirectFunctionCall2(numeric_le, NumericGetDatum(num),
												 DirectFunctionCall1(int4_numeric, Int32GetDatum(0)))) ||
				DatumGetBool(DirectFunctionCall2(numeric_gt, NumericGetDatum(num),
												 DirectFunctionCall1(int4_numeric, Int32GetDatum(PG_INT32_MAX)))))
			{
				*why = "ttl_by_value must map values to positive whole seconds, at most 2147483647.";
				return false;
			}
			f->ttl_by_value[n++] = DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(num)));
		}
	}
	f->nttl_values = n;
	return true;
}

/*
 * meetcache._placeholders(template text) -> text[]
 *	  The placeholder names of a template, in order; an error if it is not
 *	  one (the same parser the rules are compiled with).
 */
PG_FUNCTION_INFO_V1(meetcache_template_placeholders);
Datum
meetcache_template_placeholders(PG_FUNCTION_ARGS)
{
	McTemplate *t = mc_parse_template(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	Datum	   *elems = palloc(sizeof(Datum) * Max(1, t->nargs));

	for (int i = 0; i < t->nargs; i++)
		elems[i] = CStringGetTextDatum(t->argnames[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, t->nargs, TEXTOID, -1, false, TYPALIGN_INT));
}

/* BEFORE INSERT OR UPDATE trigger on meetcache.families: what the loader accepts */
PG_FUNCTION_INFO_V1(meetcache_check_family);
Datum
meetcache_check_family(PG_FUNCTION_ARGS)
{
	TriggerData *trig = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	TupleDesc	td;
	bool		isnull;
	Datum		d;
	char	   *name;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trig->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(trig->tg_event))
		elog(ERROR, "meetcache._check_family() must be a row trigger for INSERT or UPDATE");
	tup = TRIGGER_FIRED_BY_UPDATE(trig->tg_event) ? trig->tg_newtuple : trig->tg_trigtuple;
	td = RelationGetDescr(trig->tg_relation);
	d = heap_getattr(tup, SPI_fnumber(td, "name"), td, &isnull);
	name = isnull ? "" : TextDatumGetCString(d);
	d = heap_getattr(tup, SPI_fnumber(td, "template"), td, &isnull);
	if (!isnull)
		(void) mc_parse_template(TextDatumGetCString(d));
	d = heap_getattr(tup, SPI_fnumber(td, "ttl_by_value"), td, &isnull);
	if (!isnull)
	{
		McFamily	f;
		const char *why;

		memset(&f, 0, sizeof(f));
		if (!mc_parse_ttl_by_value(d, &f, &why))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid ttl_by_value for family \"%s\"", name),
					 errdetail("%s", why),
					 errhint("Example: {\"PROCESSING\": 30}.")));
	}
	return PointerGetDatum(tup);
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

