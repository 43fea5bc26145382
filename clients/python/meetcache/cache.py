"""Cache: the extension's cache functions for redis-py, with the same leases.

Every step that touches a key together with its lease runs one of the
extension's own Lua scripts (the files lua/NAME.lua, shipped in this package),
so SQL and Python fill, wait for and cancel each other's leases:

  get_or_set   GET K; on a miss lease_get: GET K, else SET L token NX PX lease_ttl; the holder
               computes and stores with lease_set (only while L is still its
               token), or gives L back with lease_release on an error
  set          set_cancel: SET K value EX ttl; DEL L
  delete       del_pairs: UNLINK K L
  del_pattern  SCAN + UNLINK of the leases first, then of the keys (del_pairs)

Keys are given without the prefix (meetcache.key_prefix); keys in the lease
namespace "mc-lease:", as given or after the prefix, are refused.
"""

import logging
import os
import threading
import time
import uuid

import redis.exceptions

from .codec import dumps, loads
from .families import Families

__all__ = ["Cache", "SCRIPTS", "LEASE_NS", "MAX_KEY_BYTES", "lease_key", "lease_globs"]

LEASE_NS = "mc-lease:"
MAX_KEY_BYTES = 1024
_SCRIPT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_log = logging.getLogger("meetcache")


def _read_scripts():
    out = {}
    for f in sorted(os.listdir(_SCRIPT_DIR)):
        if f.endswith(".lua"):
            with open(os.path.join(_SCRIPT_DIR, f), encoding="utf-8", newline="") as fh:
                out[f[:-4]] = fh.read()
    return out


SCRIPTS = _read_scripts()   # name -> text, byte for byte the extension's lua/NAME.lua


def lease_key(full):
    """The lease key of a full (prefixed) key, as the extension names it.

    mc-lease:u:{K} without a hash tag, mc-lease:t:K when K has one ({T}, T not
    empty): either way in K's Redis Cluster slot, and never the same for two keys.
    """
    open_ = full.find("{")
    if open_ >= 0 and full.find("}", open_ + 1) > open_ + 1:
        return LEASE_NS + "t:" + full
    return LEASE_NS + "u:{" + full + "}"


def lease_globs(glob):
    """The SCAN patterns of the leases of every key a full-key glob matches (both forms)."""
    return LEASE_NS + "u:{" + glob + "}", LEASE_NS + "t:" + glob


def _glob_escape(s):
    out = []
    for c in s:
        if c in "*?[]\\":
            out.append("\\")
        out.append(c)
    return "".join(out)


def _reserved(s, glob):
    """True if s (a key, or a glob's literal start) is in the lease namespace."""
    n = 0
    i = 0
    while i < len(s) and n < len(LEASE_NS):
        c = s[i]
        if glob and c in "*?[":
            return False
        if glob and c == "\\" and i + 1 < len(s):
            i += 1
            c = s[i]
        if c != LEASE_NS[n]:
            return False
        n += 1
        i += 1
    return n == len(LEASE_NS)


def _text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else v


class Cache:
    """The cache of one Redis (a redis.Redis, also from a Sentinel's master_for).

    prefix         meetcache.key_prefix of the databases that invalidate these keys
    lease_ttl_ms   meetcache.lease_ttl: lifetime of a lease; a slower loader stores nothing
    lease_wait_ms  meetcache.lease_wait: how long a miss waits for another caller's
                   value before it runs its loader itself, without storing
    families       the catalog's families (load_families(conn)), for TTLs and key()
    default_ttl    seconds, for a key without ttl and without a family with a TTL
    decimals       read JSON fractions as Decimal instead of float
    """

    def __init__(self, redis_client, *, prefix="", lease_ttl_ms=10000, lease_wait_ms=2000,
                 families=None, default_ttl=None, decimals=False):
        if _reserved(prefix, False):
            raise ValueError("prefix %r is in the reserved namespace %r" % (prefix, LEASE_NS))
        if default_ttl is not None:
            self._check_ttl(default_ttl, "default_ttl")
        self.redis = redis_client
        self.prefix = prefix
        self.lease_ttl_ms = int(lease_ttl_ms)
        self.lease_wait_ms = int(lease_wait_ms)
        self.families = families if families is None or isinstance(families, Families) \
            else Families(families)
        self.default_ttl = default_ttl
        self.decimals = decimals
        self._scripts = {name: redis_client.register_script(text) for name, text in SCRIPTS.items()}
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(("cache_hits", "cache_misses", "cache_bypasses",
                                     "lease_waits", "lease_timeouts", "lease_refused"), 0)

    # ---- helpers ----

    def _count(self, name):
        with self._stats_lock:
            self._stats[name] += 1

    def stats(self):
        """This Cache's counters, named like the extension's (meetcache.stats)."""
        with self._stats_lock:
            return dict(self._stats)

    def _full(self, key):
        """key with the prefix; refuses what the extension refuses."""
        if not isinstance(key, str):
            raise TypeError("cache key must be str, not %s" % type(key).__name__)
        if key == "":
            raise ValueError("cache key must not be empty")
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise ValueError("cache key is too long: the limit is %d bytes" % MAX_KEY_BYTES)
        full = self.prefix + key
        if _reserved(key, False) or _reserved(full, False):
            raise ValueError("cache key %r is in the reserved namespace %r (as given or after "
                             "the prefix): those are meetcache's leases" % (key, LEASE_NS))
        return full

    @staticmethod
    def _check_ttl(ttl, what="ttl"):
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise ValueError("%s must be a positive whole number of seconds, not %r" % (what, ttl))
        return ttl

    def _ttl_family(self, key, ttl):
        """(ttl, None) for a given TTL, (0, family) when the family decides, before any I/O."""
        if ttl is not None:
            return self._check_ttl(ttl), None
        f = self.families.for_key(key) if self.families is not None else None
        if f is not None and f.ttl_seconds:
            return 0, f
        if self.default_ttl is not None:
            return self.default_ttl, None
        raise ValueError("no ttl given and no key family with a TTL matches %r: pass ttl, or "
                         "families=load_families(conn), or default_ttl" % key)

    @staticmethod
    def _ttl_final(ttl, family, value):
        return ttl if family is None else family.ttl_for(value)

    def key(self, family, *args):
        """The key of a family for args (unprefixed), like SQL meetcache.key()."""
        if self.families is None:
            raise ValueError("Cache(families=load_families(conn)) is needed for key()")
        return self.families.key(family, *args)

    # ---- the cache ----

    def get(self, key, default=None):
        """The value, or default on a miss (a stored JSON null is None)."""
        v = self.redis.get(self._full(key))
        if v is None:
            self._count("cache_misses")
            return default
        self._count("cache_hits")
        return loads(v, self.decimals)

    def set(self, key, value, ttl=None):
        """Stores value (TTL: ttl, else its family's, else default_ttl); cancels any lease."""
        full = self._full(key)
        ttl, family = self._ttl_family(key, ttl)
        text = dumps(value)
        self._scripts["set_cancel"](keys=[full, lease_key(full)],
                                    args=[text, self._ttl_final(ttl, family, value)])

    def delete(self, *keys):
        """Deletes keys with their leases; returns how many of the keys existed."""
        full = [self._full(k) for k in keys]
        return self._unlink_pairs(full)

    def _unlink_pairs(self, full):
        n = 0
        for i in range(0, len(full), 100):
            pairs = []
            for k in full[i:i + 100]:
                pairs += [k, lease_key(k)]
            n += self._scripts["del_pairs"](keys=pairs, args=[])
        return n

    def exists(self, key):
        return self.redis.exists(self._full(key)) > 0

    def del_pattern(self, pattern):
        """Deletes the keys a Redis glob (under the prefix) matches, leases first; returns
        how many keys it deleted.  SCAN + UNLINK, never KEYS: not for the write path."""
        if not isinstance(pattern, str) or pattern == "":
            raise ValueError("pattern must be a non-empty str; '*' matches every key under the prefix")
        glob = _glob_escape(self.prefix) + pattern
        if _reserved(pattern, True) or _reserved(glob, True):
            raise ValueError("pattern %r is in the reserved namespace %r" % (pattern, LEASE_NS))
        # A holder that stores during the lease pass creates its key before the key pass.
        for lease_glob in lease_globs(glob):
            self._scan_delete(lease_glob, lambda page: self.redis.unlink(*page))
        total = []
        self._scan_delete(glob, lambda page: total.append(self._unlink_pairs(
            [k for k in page if not k.startswith(LEASE_NS)])))
        return sum(total)

    def _scan_delete(self, match, delete):
        cursor = 0
        while True:
            cursor, page = self.redis.scan(cursor, match=match, count=1000)
            page = [_text(k) for k in page]
            if page:
                delete(page)
            if int(cursor) == 0:
                return

    def get_or_set(self, key, loader, ttl=None):
        """The cached value, or loader()'s, stored under a lease (see the README).

        On a miss this call takes the key's lease, runs loader() and stores its
        result only if no invalidation cancelled the lease meanwhile.  A miss
        while another caller (SQL or Python) holds the lease waits for that
        value, with backoff (2 ms doubling to 50 ms), at most lease_wait_ms; then
        it runs loader() itself and does not store.  An exception from loader()
        gives the lease back and propagates.  Redis unavailable: loader()'s
        result, not stored, with a warning on the "meetcache" logger.  Returns
        the value as a hit would (the decoded JSON), on a hit and on a miss.

        loader() must read with a snapshot taken after it was called: a fresh
        READ COMMITTED statement or transaction, never inside a transaction that
        has written, or under REPEATABLE READ or SERIALIZABLE.
        """
        full = self._full(key)
        lease = lease_key(full)
        ttl, family = self._ttl_family(key, ttl)
        token = "py-" + uuid.uuid4().hex
        try:
            # a hit is a plain GET (as fast as one); a miss runs lease_get, which GETs again
            hit, hold = self.redis.get(full), False
            if hit is None:
                hit, hold = self._acquire(full, lease, token)
        except _UNAVAILABLE as e:
            _log.warning("meetcache: cache unavailable, returning the loader's result uncached: %s", e)
            hit, hold = None, False
        if hit is not None:
            self._count("cache_hits")
            return loads(hit, self.decimals)
        self._count("cache_misses")
        try:
            value = loader()
            text = dumps(value)
            ttl = self._ttl_final(ttl, family, value)
        except BaseException:
            if hold:
                self._release(lease, token)
            raise
        if hold:
            try:
                if not self._scripts["lease_set"](keys=[full, lease], args=[token, text, ttl]):
                    self._count("lease_refused")
            except _UNAVAILABLE as e:
                _log.warning("meetcache: could not store cache key %r: %s", key, e)
        else:
            self._count("cache_bypasses")
        return loads(text, self.decimals)

    def _acquire(self, full, lease, token):
        """(value, False) on a hit; (None, True) when this call holds the lease;
        (None, False) after lease_wait_ms in vain."""
        deadline = time.monotonic() + self.lease_wait_ms / 1000.0
        nap = 0.002
        waited = False
        while True:
            r = self._scripts["lease_get"](keys=[full, lease], args=[token, self.lease_ttl_ms])
            if r[0] == 1:
                return r[1], False
            if r[0] == 2:
                return None, True
            if not waited:
                waited = True
                self._count("lease_waits")
            left = deadline - time.monotonic()
            if left <= 0:
                self._count("lease_timeouts")
                return None, False
            time.sleep(min(nap, left))
            nap = min(nap * 2, 0.05)

    def _release(self, lease, token):
        """Gives a lease back if still ours; never raises for Redis trouble."""
        try:
            self._scripts["lease_release"](keys=[lease], args=[token])
        except redis.exceptions.RedisError as e:
            _log.warning("meetcache: could not give back lease %r: %s", lease, e)

