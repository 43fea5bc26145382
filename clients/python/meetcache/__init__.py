"""meetcache for Python: the extension's cache, leases and key families for redis-py.

    import redis, psycopg2, meetcache
    families = meetcache.load_families(psycopg2.connect(DSN))
    cache = meetcache.Cache(redis.Redis(), families=families)
    meeting = cache.get_or_set(cache.key("meeting", "m1"), lambda: load_meeting("m1"))

See the section "### Python" of the repository's README.md.
"""

from .cache import LEASE_NS, MAX_KEY_BYTES, SCRIPTS, Cache, lease_globs, lease_key
from .codec import dumps, key_part, loads
from .families import FAMILIES_QUERY, Families, Family, load_families

__version__ = "0.2.0"
__all__ = ["Cache", "Families", "Family", "load_families", "FAMILIES_QUERY", "dumps", "loads",
           "key_part", "lease_key", "lease_globs", "LEASE_NS", "MAX_KEY_BYTES", "SCRIPTS"]
