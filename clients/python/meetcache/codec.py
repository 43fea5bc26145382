"""Values and key parts in the extension's text forms.

Values are JSON text written the way the extension stores a jsonb value (its
text output, compact): object keys in jsonb's order (shorter keys first, then
bytewise), numbers as PostgreSQL ``numeric`` writes them (no exponent),
strings escaped as PostgreSQL's JSON output escapes them.  So ``Cache.set(k,
v)`` and ``meetcache.cache_set(k, v)`` store the same bytes for the same
value, and each side reads what the other stores.  Dates, times, ``Decimal``,
``bytes`` and ``UUID`` are written as PostgreSQL's ``to_json`` writes the
matching SQL types; reading gives plain JSON types back (strings for dates).

Key parts (the values put into a template's placeholders) are rendered as the
invalidation triggers render column values: with ``DateStyle = 'ISO, MDY'``,
``TimeZone = 'UTC'`` and ``bytea_output = 'hex'``.
"""

import datetime
import decimal
import json
import uuid

__all__ = ["dumps", "loads", "key_part"]

_str = json.JSONEncoder(ensure_ascii=False).encode  # PostgreSQL's escapes, see tests


def _numeric(d):
    """A Decimal as PostgreSQL's numeric output writes it: positional, no -0."""
    if not d.is_finite():
        raise ValueError("JSON has no %s" % d)
    if d.is_zero():
        d = d.copy_abs()
    return format(d, "f")


def _fraction(t):
    """'.678' for 678000 microseconds, '' for none (PostgreSQL drops trailing zeros)."""
    return (".%06d" % t.microsecond).rstrip("0") if t.microsecond else ""


def _offset(td):
    """A UTC offset as PostgreSQL's JSON output writes it: +HH:MM[:SS]."""
    sign = "-" if td < datetime.timedelta(0) else "+"
    s = int(abs(td).total_seconds())
    out = "%s%02d:%02d" % (sign, s // 3600, s // 60 % 60)
    return out + (":%02d" % (s % 60) if s % 60 else "")


def _clock(t):
    return "%02d:%02d:%02d%s" % (t.hour, t.minute, t.second, _fraction(t))


def _datetime_json(v):
    """to_json(timestamp) / to_json(timestamptz): 2024-01-02T03:04:05.678[+00:00]."""
    s = "%s-%02d-%02dT%s" % (str(v.year).zfill(4), v.month, v.day, _clock(v))
    off = v.utcoffset()
    return s if off is None else s + _offset(off)


def _write(v, out):
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, str):
        out.append(_str(v))
    elif isinstance(v, int):
        out.append(int.__repr__(v))
    elif isinstance(v, float):
        out.append(_numeric(decimal.Decimal(repr(float(v)))))
    elif isinstance(v, decimal.Decimal):
        out.append(_numeric(v))
    elif isinstance(v, dict):
        items = []
        for k, x in v.items():
            if isinstance(k, int) and not isinstance(k, bool):
                k = str(k)
            elif not isinstance(k, str):
                raise TypeError("JSON object keys must be str, not %s" % type(k).__name__)
            items.append((len(k.encode("utf-8")), k.encode("utf-8"), k, x))
        items.sort(key=lambda i: (i[0], i[1]))
        out.append("{")
        for n, (_, _, k, x) in enumerate(items):
            if n:
                out.append(",")
            out.append(_str(k))
            out.append(":")
            _write(x, out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for n, x in enumerate(v):
            if n:
                out.append(",")
            _write(x, out)
        out.append("]")
    elif isinstance(v, datetime.datetime):
        out.append(_str(_datetime_json(v)))
    elif isinstance(v, datetime.date):
        out.append(_str(v.isoformat()))
    elif isinstance(v, datetime.time):
        off = v.utcoffset()
        out.append(_str(_clock(v) + ("" if off is None else _offset(off))))
    elif isinstance(v, (bytes, bytearray, memoryview)):
        out.append(_str("\\x" + bytes(v).hex()))
    elif isinstance(v, uuid.UUID):
        out.append(_str(str(v)))
    else:
        raise TypeError("meetcache cannot store a %s as JSON; convert it to JSON types, "
                        "str, int, float, Decimal, bytes, UUID or a date first" % type(v).__name__)


def dumps(value):
    """The JSON text the extension would store for value (see the module's doc)."""
    out = []
    _write(value, out)
    return "".join(out)


def loads(text, decimals=False):
    """A stored value back as Python: dict, list, str, int, float (Decimal if decimals), bool, None."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    return json.loads(text, parse_float=decimal.Decimal if decimals else None)


def key_part(v):
    """A value's text in a key, as the invalidation triggers render that column's type."""
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, decimal.Decimal):
        return _numeric(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, datetime.datetime):
        if v.utcoffset() is not None:
            v = v.astimezone(datetime.timezone.utc)
            return _datetime_json(v.replace(tzinfo=None)).replace("T", " ") + "+00"
        return _datetime_json(v).replace("T", " ")
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    raise TypeError("meetcache cannot render a %s in a key; pass its text" % type(v).__name__)
