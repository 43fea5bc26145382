"""The Lua scripts are the extension's, byte for byte; the version is the control file's."""

import glob
import hashlib
import os
import re

import meetcache
from support import REPO, ServerTest, connect, sql


def repo_scripts():
    out = {}
    for path in glob.glob(os.path.join(REPO, "lua", "*.lua")):
        with open(path, "rb") as fh:
            out[os.path.basename(path)[:-4]] = fh.read()
    return out


class ScriptsTest(ServerTest):
    def test_same_bytes_as_lua_dir(self):
        want = repo_scripts()
        self.assertTrue(want, "no lua/*.lua in " + REPO)
        got = {name: text.encode("utf-8") for name, text in meetcache.SCRIPTS.items()}
        self.assertEqual(sorted(got), sorted(want))
        for name in want:
            self.assertEqual(got[name], want[name], name)

    def test_the_extension_runs_the_same_scripts(self):
        # Only the extension loads scripts here: each SHA of ours exists only if it
        # loaded the very same bytes (compiled in from lua/ by scripts/lua2c.sh).
        self.r.script_flush()
        sql(self.db, "SELECT meetcache.cache_set('s:a', '1', 60)")                 # set_cancel
        sql(self.db, "SELECT meetcache.cache_get_or_set('s:b', 'SELECT 1', 60)")   # lease_get, lease_set
        sql(self.db, "SELECT meetcache.cache_del('s:a')")                          # del_pairs
        with self.assertRaises(Exception):                                          # lease_release
            sql(self.db, "SELECT meetcache.cache_get_or_set('s:c', 'SELECT 1/0', 60)")
        shas = {n: hashlib.sha1(t.encode("utf-8")).hexdigest() for n, t in meetcache.SCRIPTS.items()}
        self.assertEqual(dict(zip(shas, self.r.script_exists(*shas.values()))),
                         dict.fromkeys(shas, True))

    def test_version_is_the_control_files(self):
        with open(os.path.join(REPO, "meetcache.control")) as fh:
            control = re.search(r"default_version = '([^']+)'", fh.read()).group(1)
        self.assertEqual(meetcache.__version__, control)
        conn = connect()
        self.addCleanup(conn.close)
        self.assertEqual(sql(conn, "SELECT extversion FROM pg_extension WHERE extname = 'meetcache'"),
                         control)
