"""get/set/delete/exists/del_pattern, prefix, TTLs and keys, against the SQL functions."""

import meetcache
from support import DSN, ServerTest, sql


class InteropTest(ServerTest):
    def test_sql_set_python_get(self):
        sql(self.db, """SELECT meetcache.cache_set(meetcache.key('meeting', 'i1'),
                        '{"id": "i1", "host": {"name": "Ann"}, "n": [1, 2]}')""")
        cache = meetcache.Cache(self.r)
        self.assertEqual(cache.get("meeting:i1"), {"id": "i1", "host": {"name": "Ann"}, "n": [1, 2]})
        self.assertEqual(cache.get("meeting:nope", default="miss"), "miss")
        self.assertTrue(cache.exists("meeting:i1"))
        self.assertFalse(cache.exists("meeting:nope"))

    def test_python_set_sql_get(self):
        cache = meetcache.Cache(self.r, families=meetcache.load_families(self.db))
        value = {"title": "T", "count": 3, "tags": ["a", None], "ok": True}
        cache.set("meeting:i2", value)
        self.assertEqual(sql(self.db, "SELECT meetcache.cache_get('meeting:i2')"), value)
        self.assertEqual(sql(self.db, "SELECT meetcache.cache_ttl('meeting:i2') BETWEEN 590 AND 600"), True)
        # and the same bytes as SQL's cache_set of the value
        sql(self.db, "SELECT meetcache.cache_set('meeting:i3', meetcache.cache_get('meeting:i2'))")
        self.assertEqual(self.r.get("meeting:i2"), self.r.get("meeting:i3"))

    def test_delete(self):
        cache = meetcache.Cache(self.r, default_ttl=60)
        cache.set("d:1", 1)
        cache.set("d:{t}2", 2)
        self.r.set(meetcache.lease_key("d:{t}2"), "tok")
        self.r.set(meetcache.lease_key("d:3"), "tok")
        self.assertEqual(cache.delete("d:1", "d:{t}2", "d:3", "d:4"), 2)
        self.assertEqual(self.r.keys("*"), [])
        self.assertEqual(cache.delete(*["d:%d" % i for i in range(250)]), 0)   # chunks of 100

    def test_del_pattern(self):
        cache = meetcache.Cache(self.r, prefix="a*[p]:", default_ttl=60)
        for k in ["meeting:1", "meeting:12", "meeting:{t}3", "user:1"]:
            cache.set(k, k)
            self.r.set(meetcache.lease_key("a*[p]:" + k), "tok")
        # leases of keys being filled (no key yet) are cancelled too, in both forms
        for k in ["meeting:15", "meeting:1{t}6"]:
            self.r.set(meetcache.lease_key("a*[p]:" + k), "tok")
        self.r.set("ab[p]:meeting:1", "other prefix")          # the prefix is literal
        self.assertEqual(cache.del_pattern("meeting:1*"), 2)
        self.assertEqual(sorted(self.r.keys("*")), sorted([
            b"a*[p]:meeting:{t}3", b"mc-lease:t:a*[p]:meeting:{t}3", b"a*[p]:user:1",
            b"mc-lease:u:{a*[p]:user:1}", b"ab[p]:meeting:1"]))
        self.assertEqual(cache.del_pattern("*"), 2)
        self.assertEqual(self.r.keys("*"), [b"ab[p]:meeting:1"])
        # the same keys, leases and count as SQL's cache_del_pattern
        self.r.flushdb()
        for delete in [lambda: meetcache.Cache(self.r).del_pattern("p:*"),
                       lambda: sql(self.db, "SELECT meetcache.cache_del_pattern('p:*')")]:
            for k in range(5):
                self.r.set("p:%d" % k, "1")
                self.r.set(meetcache.lease_key("p:%d" % k), "tok")
            self.r.set("q:1", "1")
            self.assertEqual(delete(), 5)
            self.assertEqual(self.r.keys("*"), [b"q:1"])

    def test_prefix_like_key_prefix(self):
        cache = meetcache.Cache(self.r, prefix="app1:", default_ttl=60)
        cache.set("user:u1", {"name": "Ann"})
        self.assertEqual(self.r.get("app1:user:u1"), b'{"name":"Ann"}')
        sql(self.db, "SET meetcache.key_prefix = 'app1:'")
        self.assertEqual(sql(self.db, "SELECT meetcache.cache_get('user:u1')"), {"name": "Ann"})
        sql(self.db, "SELECT meetcache.cache_set('user:u2', '2', 60)")
        self.assertEqual(cache.get("user:u2"), 2)
        self.assertEqual(cache.get_or_set("user:u2", lambda: 3), 2)

    def test_reserved_namespace_refused(self):
        cache = meetcache.Cache(self.r, default_ttl=60)
        for bad in ["mc-lease:x", "mc-lease:u:{k}"]:
            with self.assertRaises(ValueError):
                cache.set(bad, 1)
            with self.assertRaises(ValueError):
                cache.get_or_set(bad, lambda: 1)
        with self.assertRaises(ValueError):
            meetcache.Cache(self.r, prefix="mc-", default_ttl=60).get("lease:x")
        with self.assertRaises(ValueError):
            meetcache.Cache(self.r, prefix="mc-lease:")
        for prefix, bad in [("", "mc-lease:*"), ("", "mc-\\lease:*"), ("mc-lease", ":*")]:
            with self.assertRaises(ValueError, msg=bad):
                meetcache.Cache(self.r, prefix=prefix).del_pattern(bad)
        self.assertEqual(cache.del_pattern("mc-l*"), 0)        # a literal start outside it is fine
        for bad in ["", "k" * 1025]:
            with self.assertRaises(ValueError):
                cache.get(bad)
        self.assertEqual(self.r.keys("*"), [])

    def test_ttl_like_the_extension(self):
        cache = meetcache.Cache(self.r, families=meetcache.load_families(self.db))
        for status, low, high in [("PROCESSING", 1, 30), ("READY", 31, 600)]:
            cache.set("meeting:t1:recording", {"status": status})
            sql(self.db, "SELECT meetcache.cache_set('meeting:t2:recording', %s::jsonb)",
                '{"status": "%s"}' % status)
            for k in ["meeting:t1:recording", "meeting:t2:recording"]:
                self.assertTrue(low <= self.r.ttl(k) <= high, (status, k, self.r.ttl(k)))
        cache.get_or_set("meeting:t3:recording", lambda: {"status": "PROCESSING"})
        self.assertLessEqual(self.r.ttl("meeting:t3:recording"), 30)
        cache.set("meeting:t4:participants:count", 1)           # the most specific family: 60 s
        self.assertTrue(50 <= self.r.ttl("meeting:t4:participants:count") <= 60)
        cache.set("meeting:t5", 1, ttl=5)
        self.assertLessEqual(self.r.ttl("meeting:t5"), 5)
        for bad in [0, -1, 1.5, True]:
            with self.assertRaises(ValueError):
                cache.set("meeting:t5", 1, ttl=bad)
        with self.assertRaises(ValueError):                      # before any Redis I/O
            cache.get_or_set("nofamily:1", lambda: self.fail("loader ran"))
        self.assertEqual(self.r.keys("nofamily*"), [])
        meetcache.Cache(self.r, families=cache.families, default_ttl=9).set("nofamily:1", 1)
        self.assertLessEqual(self.r.ttl("nofamily:1"), 9)

    def test_keys_like_sql_key(self):
        families = meetcache.load_families(self.db)
        self.assertEqual(sorted(f.name for f in families),
                         sql(self.db, "SELECT array_agg(name ORDER BY name) FROM meetcache.families"))
        for f in families:
            args = ["a%d" % i for i in range(len(f.placeholders))]
            self.assertEqual(families.key(f.name, *args),
                             sql(self.db, "SELECT meetcache.key(%s, VARIADIC %s::text[])", f.name, args))
            self.assertIs(families.for_key(families.key(f.name, *args)), f, f.name)
        with self.assertRaises(TypeError):
            families.key("meeting")
        with self.assertRaises(KeyError):
            families.key("nope", 1)

    def test_load_families_with_psycopg3(self):
        try:
            import psycopg
        except ImportError:
            self.skipTest("python3-psycopg is not installed")
        with psycopg.connect(DSN) as conn:
            f = meetcache.load_families(conn)["meeting_recording"]
        self.assertEqual((f.ttl_seconds, f.ttl_for({"status": "PROCESSING"})), (600, 30))
