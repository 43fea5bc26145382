"""get_or_set: the extension's lease protocol, alone and together with SQL."""

import logging
import socket
import threading

import redis

import meetcache
from support import Background, ServerTest, connect, poll_until, sql

STATS = "SELECT lease_waits FROM meetcache.stats()"


class LeaseTest(ServerTest):
    def cache(self, **kw):
        return meetcache.Cache(self.r, **kw)

    def test_lease_key_forms(self):
        self.assertEqual(meetcache.lease_key("meeting:m1"), "mc-lease:u:{meeting:m1}")
        self.assertEqual(meetcache.lease_key("a{t}b"), "mc-lease:t:a{t}b")
        self.assertEqual(meetcache.lease_key("x{}y"), "mc-lease:u:{x{}y}")   # an empty tag is none
        self.assertEqual(meetcache.lease_key("x{y"), "mc-lease:u:{x{y}")

    def test_miss_then_hit(self):
        cache = self.cache(default_ttl=77)
        calls = []
        self.assertEqual(cache.get_or_set("l:k", lambda: calls.append(1) or {"v": 1}), {"v": 1})
        self.assertEqual(cache.get_or_set("l:k", lambda: calls.append(1) or {"v": 2}), {"v": 1})
        self.assertEqual(len(calls), 1)
        self.assertEqual(self.r.get("l:k"), b'{"v":1}')
        self.assertTrue(70 <= self.r.ttl("l:k") <= 77)
        self.assertEqual(self.r.exists("mc-lease:u:{l:k}"), 0)
        self.assertEqual(cache.get_or_set("l:none", lambda: None, ttl=5), None)   # negative caching
        self.assertEqual(self.r.get("l:none"), b"null")

    def test_stampede_runs_the_loader_once(self):
        cache = self.cache(default_ttl=60, lease_wait_ms=60000)
        calls = []
        start = threading.Barrier(20)

        def loader():
            calls.append(1)
            poll_until(lambda: cache.stats()["lease_waits"] == 19, "19 callers waiting")
            return {"n": len(calls)}

        def reader():
            start.wait()
            return cache.get_or_set("l:hot", loader)

        threads = [Background(reader) for _ in range(20)]
        self.assertEqual([t.join_result() for t in threads], [{"n": 1}] * 20)
        self.assertEqual(len(calls), 1)
        self.assertEqual(cache.stats()["lease_timeouts"], 0)

    def test_loader_error_gives_the_lease_back(self):
        cache = self.cache(default_ttl=60)

        def failing():
            self.assertEqual(self.r.exists("mc-lease:u:{l:e}"), 1)
            raise RuntimeError("boom")

        with self.assertRaises(RuntimeError):
            cache.get_or_set("l:e", failing)
        self.assertEqual(self.r.exists("mc-lease:u:{l:e}"), 0)
        # so the next caller does not wait: it takes the lease at once and stores
        other = self.cache(default_ttl=60)
        self.assertEqual(other.get_or_set("l:e", lambda: 2), 2)
        self.assertEqual(other.stats()["lease_waits"], 0)
        self.assertEqual(self.r.get("l:e"), b"2")
        # a value that is not JSON is a loader error too
        with self.assertRaises(TypeError):
            cache.get_or_set("l:e2", lambda: {1, 2})
        self.assertEqual(self.r.exists("mc-lease:u:{l:e2}"), 0)

    def test_committed_update_cancels_the_lease(self):
        sql(self.db, """INSERT INTO users (id, name, email) VALUES ('lu1', 'Ann', 'lu1@x');
                        INSERT INTO meetings (id, title, host_id, invite_code)
                        VALUES ('lm1', 'old', 'lu1', 'inv-lm1')""")
        cache = self.cache(families=meetcache.load_families(self.db))
        key = cache.key("meeting", "lm1")
        lease = meetcache.lease_key(key)
        reader = connect()
        self.addCleanup(reader.close)

        def loader():
            title = sql(reader, "SELECT title FROM meetings WHERE id = 'lm1'")
            # a writer commits after our read: its invalidation cancels our lease
            sql(self.db, "UPDATE meetings SET title = 'new' WHERE id = 'lm1'")
            poll_until(lambda: not self.r.exists(lease), "the invalidation of " + key)
            return {"title": title}

        self.assertEqual(cache.get_or_set(key, loader), {"title": "old"})
        self.assertFalse(self.r.exists(key), "a value read before the UPDATE was stored")
        self.assertEqual(cache.stats()["lease_refused"], 1)
        self.assertEqual(cache.get_or_set(key, lambda: {"title": sql(reader, "SELECT title FROM meetings WHERE id = 'lm1'")}),
                         {"title": "new"})
        self.assertTrue(self.r.exists(key))

    def test_committed_update_removes_what_python_cached(self):
        sql(self.db, """INSERT INTO users (id, name, email) VALUES ('lu2', 'Bo', 'lu2@x');
                        INSERT INTO meetings (id, title, host_id, invite_code)
                        VALUES ('lm2', 'one', 'lu2', 'inv-lm2')""")
        cache = self.cache(families=meetcache.load_families(self.db))
        keys = [cache.key("meeting", "lm2"), cache.key("meeting_by_invite", "inv-lm2"),
                cache.key("user_meetings", "lu2")]
        for k in keys:
            cache.get_or_set(k, lambda: sql(self.db, "SELECT title FROM meetings WHERE id = 'lm2'"))
        self.assertTrue(all(cache.exists(k) for k in keys))
        sql(self.db, "UPDATE meetings SET title = 'two' WHERE id = 'lm2'")
        poll_until(lambda: not any(cache.exists(k) for k in keys), "the invalidation")
        self.assertEqual(cache.get_or_set(keys[0], lambda: sql(self.db, "SELECT title FROM meetings WHERE id = 'lm2'")),
                         "two")

    def test_python_set_and_delete_cancel_a_lease(self):
        cache = self.cache(default_ttl=60)

        def set_meanwhile():
            cache.set("l:s", "newer")
            return "older"

        def delete_meanwhile():
            self.assertEqual(cache.delete("l:d"), 0)   # the key is not there, its lease is
            return "read before the delete"

        self.assertEqual(cache.get_or_set("l:s", set_meanwhile), "older")
        self.assertEqual(cache.get("l:s"), "newer")
        self.assertEqual(cache.get_or_set("l:d", delete_meanwhile), "read before the delete")
        self.assertFalse(cache.exists("l:d"))
        self.assertEqual(cache.stats()["lease_refused"], 2)

    def test_wait_is_bounded_by_lease_wait(self):
        self.r.set("mc-lease:u:{l:w}", "someone-else", px=60000)
        cache = self.cache(default_ttl=60, lease_wait_ms=50)
        self.assertEqual(cache.get_or_set("l:w", lambda: "mine"), "mine")
        self.assertFalse(self.r.exists("l:w"), "stored without the lease")
        self.assertEqual(self.r.get("mc-lease:u:{l:w}"), b"someone-else")
        st = cache.stats()
        self.assertEqual((st["lease_waits"], st["lease_timeouts"], st["cache_bypasses"]), (1, 1, 1))

    def test_a_dead_holders_lease_is_taken_over(self):
        self.r.set("mc-lease:u:{l:t}", "dead", px=100)
        cache = self.cache(default_ttl=60, lease_wait_ms=30000)
        self.assertEqual(cache.get_or_set("l:t", lambda: "taken over"), "taken over")
        self.assertEqual(self.r.get("l:t"), b'"taken over"')
        self.assertEqual(cache.stats()["lease_waits"], 1)

    def test_sql_waits_for_a_python_lease(self):
        cache = self.cache(default_ttl=60)
        sess = connect()
        self.addCleanup(sess.close)
        before = sql(self.db, STATS)
        box = {}

        def loader():
            box["sql"] = Background(lambda: sql(
                sess, "SELECT meetcache.cache_get_or_set('l:shared', $$SELECT 'from sql'$$, 60)"))
            poll_until(lambda: sql(self.db, STATS) > before, "the SQL session to wait")
            return "from python"

        self.assertEqual(cache.get_or_set("l:shared", loader), "from python")
        self.assertEqual(box["sql"].join_result(), "from python")   # the SQL query never ran

    def test_python_waits_for_a_sql_lease(self):
        cache = self.cache(default_ttl=60, lease_wait_ms=60000)
        lock, sess = connect(), connect()
        self.addCleanup(sess.close)
        self.addCleanup(lock.close)     # first: it frees the SQL query, on failure too
        sql(lock, "SELECT pg_advisory_lock(4242)")
        held = Background(lambda: sql(sess, """SELECT meetcache.cache_get_or_set('l:shared2',
            $$SELECT 'from sql' FROM (SELECT pg_advisory_xact_lock_shared(4242)) s$$, 60)"""))
        poll_until(lambda: self.r.exists(meetcache.lease_key("l:shared2")), "the SQL lease")
        py = Background(lambda: cache.get_or_set("l:shared2", lambda: "from python"))
        poll_until(lambda: cache.stats()["lease_waits"] == 1, "Python to wait")
        sql(lock, "SELECT pg_advisory_unlock(4242)")
        self.assertEqual(held.join_result(), "from sql")
        self.assertEqual(py.join_result(), "from sql")             # the loader never ran
        self.assertEqual(cache.stats()["cache_hits"], 1)

    def test_sql_writes_cancel_a_python_lease(self):
        cache = self.cache(default_ttl=60)
        for stmt in ["SELECT meetcache.cache_set('l:x', '\"sql\"', 60)",
                     "SELECT meetcache.cache_del('l:x')",
                     "SELECT meetcache.cache_del_pattern('l:*')"]:
            self.r.delete("l:x")

            def loader():
                sql(self.db, stmt)
                return "python"

            self.assertEqual(cache.get_or_set("l:x", loader), "python")
            self.assertNotEqual(self.r.get("l:x"), b'"python"', stmt)
        self.assertEqual(cache.stats()["lease_refused"], 3)

    def test_redis_down_returns_the_loader_result(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]          # nothing listens there once closed
        down = meetcache.Cache(redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1),
                               default_ttl=60)
        with self.assertLogs("meetcache", logging.WARNING):
            self.assertEqual(down.get_or_set("l:down", lambda: [1]), [1])
        with self.assertRaises(redis.exceptions.ConnectionError):
            down.get("l:down")
