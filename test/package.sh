#!/usr/bin/env bash
# test/package.sh: the Debian package, built and tried on a throwaway cluster.
#
#   bash test/package.sh          (as an unprivileged user; test/run-tests.sh runs it)
#
# 1. The version of debian/changelog (without its Debian revision) and the versions of
#    META.json (the distribution's and the extension's) must be meetcache.control's
#    default_version.
# 2. dpkg-buildpackage -us -uc -b in a copy of the source tree (without build products)
#    under a new temporary directory must give postgresql-V-meetcache_VERSION_*.deb.
# 3. The package is unpacked with `dpkg -x`, never `dpkg -i`: this test never touches the
#    system's PostgreSQL. It goes into a relocated copy of the PostgreSQL V the package is
#    for (its pg_config's bindir, pkglibdir and sharedir, from which any meetcache files
#    are removed first), so that the server finds exactly the package's files.
# 4. A throwaway cluster of that copy, preloading meetcache, and a throwaway redis-server:
#    the postmaster has mapped the package's meetcache.so, CREATE EXTENSION meetcache
#    gives default_version, and meetcache.cache_ping() answers PONG.
# Needs debhelper, postgresql-server-dev-all, libhiredis-dev and redis-server.
# Exits 0 if all of it holds; the temporary directory is removed unless MEETCACHE_KEEP_TMP=1.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$repo/scripts/throwaway-servers.sh"

[ "$(id -u)" != 0 ] || die "run test/package.sh as an unprivileged user (initdb refuses root)"
for b in dpkg-buildpackage dpkg-parsechangelog pg_buildext redis-server; do
    command -v "$b" >/dev/null || die "$b not found (packages debhelper, postgresql-server-dev-all, redis-server)"
done

# 1. versions
version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$repo/meetcache.control")
debversion=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
upstream=${debversion#*:}
upstream=${upstream%-*}
[ "$upstream" = "$version" ] ||
    die "debian/changelog says $debversion but meetcache.control's default_version is $version: add a debian/changelog entry (dch -v $version-1)"
meta=$(perl -MJSON::PP -0777 -ne '$m = decode_json($_); print "$m->{version} $m->{provides}{meetcache}{version}"' "$repo/META.json") ||
    die "cannot read META.json"
[ "$meta" = "$version $version" ] ||
    die "META.json says version/provides.meetcache.version $meta but meetcache.control's default_version is $version"
info "versions: meetcache.control $version, debian/changelog $debversion, META.json $version"

cleanup() {
    local rc=$?
    tw_stop_servers "$rc" "tail of the package cluster's log:"
    if [ "$rc" -eq 0 ] && [ -z "${MEETCACHE_KEEP_TMP:-}" ]; then rm -rf "$WORK"; else echo "(kept $WORK)"; fi
}
tw_enter_work "" meetcache-package cleanup

# 2. build
src=$WORK/build/meetcache-$version
mkdir -p "$src"
tar -C "$repo" --exclude=./.git --exclude=./tmp_check --exclude=./results --exclude=./log \
    --exclude='*.o' --exclude='*.so' --exclude='*.bc' --exclude=./regress-redis.conf \
    --exclude=./regression.diffs --exclude=./regression.out -cf - . | tar -C "$src" -xf - ||
    die "cannot copy the source tree"
say "dpkg-buildpackage -us -uc -b (log: $WORK/build.log)"
(cd "$src" && dpkg-buildpackage -us -uc -b) </dev/null >"$WORK/build.log" 2>&1 ||
    { tail -n 40 "$WORK/build.log" >&2; die "dpkg-buildpackage failed"; }
shopt -s nullglob
debs=("$WORK"/build/postgresql-*-meetcache_"${debversion#*:}"_*.deb)
shopt -u nullglob
[ ${#debs[@]} -eq 1 ] || die "expected one postgresql-V-meetcache_${debversion#*:}_ARCH.deb, got: ${debs[*]:-none}"
deb=${debs[0]}
pgmajor=$(dpkg-deb -f "$deb" Package | sed -n 's/^postgresql-\([0-9]*\)-meetcache$/\1/p')
info "built $(basename "$deb") (Depends: $(dpkg-deb -f "$deb" Depends))"

# 3. relocated PostgreSQL with the package unpacked into it (pg_buildext's pg_config of
# that version)
pgc=/usr/lib/postgresql/$pgmajor/bin/pg_config
[ -x "$pgc" ] || die "$pgc not found"
root=$WORK/root
bindir=$("$pgc" --bindir) pkglibdir=$("$pgc" --pkglibdir) sharedir=$("$pgc" --sharedir)
for d in "$bindir" "$pkglibdir" "$sharedir"; do
    mkdir -p "$root${d%/*}"
    [ -d "$root$d" ] || cp -a "$d" "$root$d" || die "cannot copy $d"
done
rm -rf "$root$pkglibdir"/meetcache.so "$root$pkglibdir"/bitcode/meetcache* "$root$sharedir"/extension/meetcache[.-]*
dpkg -x "$deb" "$root" || die "dpkg -x failed"
so=$root$pkglibdir/meetcache.so
[ -f "$so" ] || die "the package has no $pkglibdir/meetcache.so"
[ -f "$root$sharedir/extension/meetcache.control" ] || die "the package has no $sharedir/extension/meetcache.control"

# 4. throwaway servers
PGBIN=$root$bindir
tw_start_preloaded
info "PostgreSQL $("$PGBIN/postgres" -V | awk '{print $3}') from $PGBIN on port $PGPORT, redis-server on 127.0.0.1:$REDIS_PORT"
pid=$(head -n 1 "$WORK/pgdata/postmaster.pid")
grep -qF "$so" "/proc/$pid/maps" || die "the postmaster has not loaded $so"
PSQL() { "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }
PSQL -c 'CREATE EXTENSION meetcache' || die "CREATE EXTENSION meetcache failed"
got=$(PSQL -c "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'meetcache'")
[ "$got" = "$version" ] || die "CREATE EXTENSION installed version '$got', expected $version"
got=$(PSQL -c 'SELECT meetcache.cache_ping()') || die "cache_ping() failed"
[ "$got" = PONG ] || die "cache_ping() returned '$got', expected PONG"
say "package ok: $(basename "$deb") loads, CREATE EXTENSION gives $version, cache_ping() = PONG"
