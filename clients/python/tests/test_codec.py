"""Values and key parts in the extension's text forms, checked against PostgreSQL itself."""

import datetime
import decimal
import json
import uuid

import meetcache
from support import ServerTest, poll_until, sql

UTC = datetime.timezone.utc
IST = datetime.timezone(datetime.timedelta(hours=5, minutes=30))


class CodecTest(ServerTest):
    def stored_by_sql(self, json_text):
        """The bytes meetcache.cache_set stores for a JSON text."""
        sql(self.db, "SELECT meetcache.cache_set('codec:sql', %s::jsonb, 60)", json_text)
        return self.r.get("codec:sql")

    def test_same_bytes_as_cache_set(self):
        value = {
            "zz": [1, 2.5, 0.1, 1e20, 1.5e-07, -0.0, 2 ** 70, True, False, None],
            "a": "caf\u00e9 \u2028 \U0001f600 \"q\" \\ / \b\f\n\r\t \x01\x1f\x7f",
            "bb": {"é": 1, "e": 2, "": 3, "ab": {}, "b": []},
            "ccc": -12.75, "long key": "x", "k": 1.0,
        }
        # the SQL side gets Python's own json text (insertion order, exponents, \u escapes)
        self.assertEqual(meetcache.dumps(value).encode("utf-8"),
                         self.stored_by_sql(json.dumps(value, ensure_ascii=True)))
        for scalar in [0, -1, "s", None, True, [], {}, 3.25]:
            self.assertEqual(meetcache.dumps(scalar).encode(), self.stored_by_sql(json.dumps(scalar)))

    def test_decimal_as_numeric(self):
        for text in ["1.10", "1E+2", "1.50E+1", "-0.000", "12345678901234567890.123456789", "1.5E-7"]:
            self.assertEqual(meetcache.dumps(decimal.Decimal(text)),
                             sql(self.db, "SELECT to_json(%s::numeric)::text", text), text)
        for bad in [decimal.Decimal("NaN"), float("inf")]:
            with self.assertRaises(ValueError):
                meetcache.dumps(bad)

    def test_dates_bytes_uuid_as_to_json_writes_them(self):
        sql(self.db, "SET TimeZone = 'UTC'")
        u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        cases = [
            (datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
             "'2024-01-02 03:04:05.678+00'::timestamptz"),
            (datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "'2024-01-02 03:04:05+00'::timestamptz"),
            (datetime.datetime(2024, 1, 2, 3, 4, 5, 120), "'2024-01-02 03:04:05.00012'::timestamp"),
            (datetime.date(2024, 1, 2), "'2024-01-02'::date"),
            (datetime.time(3, 4, 5, 500000), "'03:04:05.5'::time"),
            (b"\x00\x01\xfe", "'\\x0001fe'::bytea"),
            (u, "'%s'::uuid" % u),
        ]
        for value, expr in cases:
            self.assertEqual(meetcache.dumps(value), sql(self.db, "SELECT to_json(%s)::text" % expr), expr)
        sql(self.db, "SET TimeZone = 'Asia/Kolkata'")
        self.assertEqual(meetcache.dumps(datetime.datetime(2024, 1, 2, 8, 34, 5, tzinfo=IST)),
                         sql(self.db, "SELECT to_json('2024-01-02 03:04:05+00'::timestamptz)::text"))

    def test_reads_what_sql_cache_get_or_set_stores(self):
        sql(self.db, "SET TimeZone = 'UTC'")
        sql(self.db, """SELECT meetcache.cache_get_or_set('codec:row',
            $$SELECT '2024-01-02 03:04:05.5+00'::timestamptz AS at, 1.10::numeric AS n,
                     'x'::text AS s, 9007199254740993::bigint AS big$$, 60)""")
        cache = meetcache.Cache(self.r)
        self.assertEqual(cache.get("codec:row"), {"at": "2024-01-02T03:04:05.5+00:00", "n": 1.1,
                                                  "s": "x", "big": 9007199254740993})
        self.assertEqual(meetcache.Cache(self.r, decimals=True).get("codec:row")["n"],
                         decimal.Decimal("1.10"))

    def test_unsupported_types_are_refused(self):
        for bad in [{1.5: 1}, {"k": {1, 2}}, datetime.timedelta(1), object()]:
            with self.assertRaises(TypeError):
                meetcache.dumps(bad)

    def test_key_parts_as_the_triggers_render_them(self):
        # a family over column types whose text depends on settings; the trigger
        # must delete the key Python rendered for the row's values
        sql(self.db, "SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY'")
        sql(self.db, """
            CREATE TABLE codec_ev (id uuid PRIMARY KEY, day date, at timestamptz, ts timestamp,
                                   ok boolean, amount numeric, n bigint, raw bytea);
            INSERT INTO meetcache.families (name, template, ttl_seconds) VALUES
              ('codec_ev', 'ev:{id}:{day}:{at}:{ts}:{ok}:{amount}:{n}:{raw}', 60);
            INSERT INTO meetcache.rules (table_name, family) VALUES ('codec_ev', 'codec_ev');
            SELECT meetcache.attach('codec_ev')""")
        self.addCleanup(sql, self.db, """
            SELECT meetcache.detach('codec_ev'); DROP TABLE codec_ev;
            DELETE FROM meetcache.rules WHERE family = 'codec_ev';
            DELETE FROM meetcache.families WHERE name = 'codec_ev'""")
        cache = meetcache.Cache(self.r, families=meetcache.load_families(self.db))
        u = uuid.uuid4()
        key = cache.key("codec_ev", u, datetime.date(2024, 1, 2),
                        datetime.datetime(2024, 1, 2, 8, 34, 5, 250000, tzinfo=IST),
                        datetime.datetime(2024, 1, 2, 3, 4, 5), True, decimal.Decimal("1.50"),
                        -7, b"\x01\xab")
        self.assertEqual(key, "ev:%s:2024-01-02:2024-01-02 03:04:05.25+00:2024-01-02 03:04:05:t:1.50:-7:\\x01ab" % u)
        cache.set(key, {"x": 1})
        sql(self.db, """INSERT INTO codec_ev VALUES (%s, '2024-01-02', '2024-01-02 03:04:05.25+00',
                        '2024-01-02 03:04:05', true, 1.50, -7, '\\x01ab')""", str(u))
        poll_until(lambda: not cache.exists(key), "the trigger to delete " + key)
