"""Key families of the catalog (meetcache.families): keys from templates, and TTLs.

A template is literal text with ``{placeholder}`` parts (letters, digits and
underscores; braces only around them), parsed by the same rules as the
extension's.  The family of a key is the most specific family whose template
matches it (the most literal characters; among equals, the first by name, in the
database's collation),
and its TTL is ``ttl_by_value[value[ttl_field]]`` when the value is an object
whose ``ttl_field`` is a string listed there, else ``ttl_seconds``: the
extension's choice for ``cache_set`` and ``cache_get_or_set`` without a TTL.
"""

import functools
import json
import re

from .codec import key_part

__all__ = ["Family", "Families", "load_families", "FAMILIES_QUERY"]

FAMILIES_QUERY = ("SELECT name, template, ttl_seconds, ttl_field, ttl_by_value "
                  "FROM meetcache.families ORDER BY name")

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")


class Family:
    """One row of meetcache.families."""

    def __init__(self, name, template, ttl_seconds=None, ttl_field=None, ttl_by_value=None):
        self.name = name
        self.template = template
        self.ttl_seconds = ttl_seconds
        self.ttl_field = ttl_field
        if isinstance(ttl_by_value, (str, bytes)):
            ttl_by_value = json.loads(ttl_by_value)
        self.ttl_by_value = {k: int(v) for k, v in (ttl_by_value or {}).items()}
        self.literals = []          # len(placeholders) + 1 literal parts
        self.placeholders = []
        pos = 0
        for m in _PLACEHOLDER.finditer(template):
            self.literals.append(template[pos:m.start()])
            self.placeholders.append(m.group(1))
            pos = m.end()
        self.literals.append(template[pos:])
        if any("{" in lit or "}" in lit for lit in self.literals) or template == "":
            raise ValueError("invalid key template %r: literal text with placeholders such as "
                             "{id}, braces only around them" % template)
        self.literal_chars = sum(len(lit.encode("utf-8")) for lit in self.literals)
        self._match = re.compile(".*".join(re.escape(lit) for lit in self.literals),
                                 re.DOTALL).fullmatch

    def __repr__(self):
        return "Family(%r, %r, %r)" % (self.name, self.template, self.ttl_seconds)

    def key(self, *args):
        """The rendered key, like SQL meetcache.key(name, args...)."""
        if len(args) != len(self.placeholders):
            raise TypeError("key family %r takes %d arguments, not %d (template %r)"
                            % (self.name, len(self.placeholders), len(args), self.template))
        out = [self.literals[0]]
        for arg, lit in zip(args, self.literals[1:]):
            if arg is None:
                raise ValueError("an argument of key family %r is None" % self.name)
            out.append(key_part(arg))
            out.append(lit)
        return "".join(out)

    def matches(self, key):
        return self._match(key) is not None

    def ttl_for(self, value):
        """The TTL for a value of this family: ttl_by_value, else ttl_seconds."""
        if self.ttl_field is not None and isinstance(value, dict):
            v = value.get(self.ttl_field)
            if isinstance(v, str) and v in self.ttl_by_value:
                return self.ttl_by_value[v]
        return self.ttl_seconds


class Families:
    """Families in the order given; load_families gives the extension's (by name)."""

    def __init__(self, families):
        self._list = list(families)
        self._by_name = {f.name: f for f in self._list}
        self.for_key = functools.lru_cache(maxsize=4096)(self._for_key)   # on every get_or_set

    def __iter__(self):
        return iter(self._list)

    def __len__(self):
        return len(self._list)

    def __getitem__(self, name):
        return self._by_name[name]

    def key(self, name, *args):
        try:
            family = self._by_name[name]
        except KeyError:
            raise KeyError("unknown cache key family %r" % name) from None
        return family.key(*args)

    def _for_key(self, key):
        """The most specific family whose template matches key (unprefixed), or None."""
        best = None
        for f in self._list:
            if f.matches(key) and (best is None or f.literal_chars > best.literal_chars):
                best = f
        return best


def load_families(conn):
    """The families of the database conn is connected to (psycopg2 or psycopg 3)."""
    cur = conn.cursor()
    try:
        cur.execute(FAMILIES_QUERY)
        rows = cur.fetchall()
    finally:
        cur.close()
    return Families(Family(*row) for row in rows)
