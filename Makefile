# meetcache: PGXS build. The version lives only in meetcache.control.
EXTENSION  = meetcache
EXTVERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)
MODULE_big = meetcache
OBJS       = src/meetcache.o src/redis.o src/pending.o src/rules.o src/trigger.o \
             src/shared.o src/queue.o src/worker.o \
             src/cache.o src/stats.o src/settings.o src/guard.o src/legacy.o src/keys.o src/delivery.o
# every released full script and upgrade script
DATA       = $(wildcard sql/$(EXTENSION)--*.sql)
PGFILEDESC = "meetcache - Redis cache invalidation"

REGRESS      = core rules txn get_or_set matrix_snake matrix_camel worker upgrade
REGRESS_OPTS = --inputdir=test

PG_CPPFLAGS = -DMEETCACHE_VERSION=\"$(EXTVERSION)\" -Wall -Wextra -Werror \
              -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK  = -lhiredis
EXTRA_CLEAN = tmp_check results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on the shared header (PGXS tracks no header dependencies)
$(OBJS): src/meetcache.h src/shared.h
