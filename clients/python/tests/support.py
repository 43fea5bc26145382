"""What the tests share: the servers test.sh started, and polling.

Environment (set by clients/python/test.sh):
  MEETCACHE_TEST_REDIS_URL  redis://127.0.0.1:PORT/0 of the redis-server the database uses
  MEETCACHE_TEST_DSN        libpq conninfo of a database with meetcache, the meet_snake
                            schema and attach_defaults()
  MEETCACHE_REPO            the repository (default: two levels above clients/python)
"""

import os
import threading
import time
import unittest

import psycopg2
import redis

REPO = os.environ.get("MEETCACHE_REPO") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", ".."))
REDIS_URL = os.environ.get("MEETCACHE_TEST_REDIS_URL")
DSN = os.environ.get("MEETCACHE_TEST_DSN")


def connect(autocommit=True):
    conn = psycopg2.connect(DSN)
    conn.autocommit = autocommit
    return conn


def sql(conn, query, *params):
    """The first column of the first row of query, or None without a row."""
    with conn.cursor() as cur:
        cur.execute(query, params or None)
        row = cur.fetchone() if cur.description else None
    return row[0] if row else None


def poll_until(cond, what, timeout=30.0):
    """Waits until cond() is true (never a fixed sleep); fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.005)


class Background(threading.Thread):
    """fn() in a thread; join_result() gives its result or raises its exception."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.result = self.error = None
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # handed to the test thread
            self.error = e

    def join_result(self, timeout=60.0):
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("background call did not finish")
        if self.error is not None:
            raise self.error
        return self.result


class ServerTest(unittest.TestCase):
    """A test against the servers: a raw redis client (flushed first) and a SQL session."""

    def setUp(self):
        if not REDIS_URL or not DSN:
            self.fail("MEETCACHE_TEST_REDIS_URL and MEETCACHE_TEST_DSN are not set: run test.sh")
        self.r = redis.Redis.from_url(REDIS_URL)
        self.r.flushdb()
        self.db = connect()
        self.addCleanup(self.db.close)
        self.addCleanup(self.r.close)
