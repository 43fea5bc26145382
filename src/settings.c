/*
 * settings.c
 *	  The session settings meetcache's own work runs under.
 *
 * Owns two promises:
 *	  - every query meetcache sends through SPI (catalog loads, lookups,
 *	    the guard, the queue, the drains) runs with search_path pinned to
 *	    "pg_catalog, pg_temp", in backends and workers alike, so no object a
 *	    user created can stand in for a built-in one (the query texts are
 *	    schema-qualified as well; the pin is the second line of defence);
 *	  - keys rendered from non-text column values never depend on the
 *	    writer's session: they are rendered under one fixed set of output
 *	    settings (MC_CANONICAL below, documented with the rules).
 *
 * Invariant: every mc_settings_pin() is matched by mc_settings_restore()
 * with the level it returned, on the success path.  On an error the
 * (sub)transaction abort unwinds the GUC nest level by itself, as it does
 * for a function with SET clauses.
 */
#include "postgres.h"

#include "utils/guc.h"

#include "meetcache.h"

/* name = value pairs applied by mc_settings_pin(true) */
static const char *const canonical[][2] = {
	{"DateStyle", "ISO, MDY"},
	{"TimeZone", "UTC"},
	{"IntervalStyle", "postgres"},
	{"extra_float_digits", "1"},
	{"bytea_output", "hex"},
	{"lc_monetary", "C"},
};

int
mc_settings_pin(bool canonical_output)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	if (canonical_output)
		for (int i = 0; i < lengthof(canonical); i++)
			(void) set_config_option(canonical[i][0], canonical[i][1],
									 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
									 true, 0, false);
	return level;
}

void
mc_settings_restore(int level)
{
	AtEOXact_GUC(true, level);
}
