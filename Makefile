# meetcache: PGXS build. The version lives only in meetcache.control.
#
#   make && sudo make install                  build and install (PG_CONFIG=... for another PostgreSQL)
#   make WERROR=1                              the same, warnings are errors (what CI builds)
#   scripts/with-redis.sh make installcheck    every test, on a throwaway redis-server
#   make installcheck MEETCACHE_REDIS_URL=redis://127.0.0.1:6379/0   ... or on your own Redis
#   make installcheck TAP_TESTS=               the pg_regress suites only
#   make prove_installcheck [PROVE_TESTS=test/t/003_auth.pl] [PROVE_FLAGS=-v]   the TAP suites only
#
# installcheck runs the pg_regress suites on a temporary instance (--temp-instance) configured
# by test/regress.conf plus the generated regress-redis.conf (meetcache.redis_url), then the TAP
# suites. Each TAP suite starts its own clusters and redis-servers (test/perl/MeetcacheTest.pm).
EXTENSION  = meetcache
EXTVERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)
MODULE_big = meetcache
OBJS       = src/meetcache.o src/redis.o src/cluster.o src/transport.o src/lease.o src/pending.o src/recheck.o src/rules.o src/trigger.o \
             src/shared.o src/queue.o src/worker.o \
             src/cache.o src/stats.o src/settings.o src/guard.o src/legacy.o src/keys.o src/delivery.o
# every released full script and upgrade script
DATA       = $(wildcard sql/$(EXTENSION)--*.sql)
PGFILEDESC = "meetcache - Redis cache invalidation"

REGRESS      = core rules txn get_or_set matrix_snake matrix_camel worker upgrade
REGRESS_OPTS = --inputdir=test --temp-instance=./tmp_check \
               --temp-config=./test/regress.conf --temp-config=./regress-redis.conf
TAP_TESTS    = 1
PROVE_TESTS ?= $(wildcard test/t/*.pl)
# override: a PROVE_FLAGS given on the command line (-v) keeps the test library
override PROVE_FLAGS += -I ./test/perl
MEETCACHE_REDIS_URL ?= redis://127.0.0.1:6379/0

PG_CPPFLAGS = -DMEETCACHE_VERSION=\"$(EXTVERSION)\" -Wall -Wextra \
              -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
ifeq ($(WERROR),1)
PG_CPPFLAGS += -Werror
endif
SHLIB_LINK  = -lhiredis -lssl -lcrypto -lcares
EXTRA_CLEAN = regress-redis.conf src/lua_scripts.h

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on the shared header (PGXS tracks no header dependencies)
$(OBJS): src/meetcache.h src/shared.h src/transport.h

# the Lua scripts live once, in lua/ (the clients read the same files), and are compiled in
src/lease.o src/lease.bc: src/lua_scripts.h
src/lua_scripts.h: scripts/lua2c.sh $(wildcard lua/*.lua)
	sh scripts/lua2c.sh $@ $(sort $(wildcard lua/*.lua))

.PHONY: regress-redis.conf prove_installcheck
installcheck: regress-redis.conf
regress-redis.conf:
	echo "meetcache.redis_url = '$(MEETCACHE_REDIS_URL)'" >$@

prove_installcheck:
	$(prove_installcheck)
