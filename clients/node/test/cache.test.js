// createCache against a real redis-server and a real PostgreSQL with meetcache: the lease
// protocol, invalidations cancelling leases, delPattern, TTLs, and interoperability with
// the SQL functions in both directions.
"use strict";
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const fs = require("node:fs");
const os = require("node:os");
const { execFileSync, spawnSync } = require("node:child_process");
const { createCache, leaseKey } = require("../dist/cjs/index.js");
const { servers, setupSchema, families, gate, until } = require("./helpers.js");

const { pool, redis } = servers();
let fams;
let cache;
const q = async (sql, params) => (await pool.query(sql, params)).rows;
const one = async (sql, params) => Object.values((await q(sql, params))[0])[0];

before(async () => {
  await setupSchema(pool);
  fams = await families(pool);
  cache = createCache(redis, { families: fams, leaseWaitMs: 3000 });
  await q(`INSERT INTO users (id, name, email) VALUES ('u1', 'Alice', 'a@x'), ('u2', 'Bob', 'b@x')`);
  await q(`INSERT INTO meetings (id, title, "hostId", "inviteCode", status) VALUES
           ('m1', 'Sync', 'u1', 'inv-1', 'LIVE'), ('m2', 'Review', 'u2', 'inv-2', 'SCHEDULED')`);
  await q(`INSERT INTO recordings (id, "meetingId", status) VALUES ('r1', 'm1', 'PROCESSING')`);
});
after(async () => {
  await pool.end();
  redis.disconnect();
});

test("SQL cache_set -> TS get, TS set -> SQL cache_get, the same bytes both ways", async () => {
  await q(`SELECT meetcache.cache_set('interop:1', '{"a": 1, "b": [1, 2], "s": "é\\"x"}', 60)`);
  assert.deepEqual(await cache.get("interop:1"), { a: 1, b: [1, 2], s: 'é"x' });
  const sqlBytes = await redis.get("interop:1");
  await cache.set("interop:2", { a: 1, b: [1, 2], s: 'é"x' }, 60);
  assert.equal(await redis.get("interop:2"), sqlBytes);
  assert.deepEqual(await one(`SELECT meetcache.cache_get('interop:2')`), { a: 1, b: [1, 2], s: 'é"x' });
  // Date and BigInt, as Prisma returns them
  await cache.set("interop:3", { at: new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678)), size: 9007199254740993n }, 60);
  const row = (await q(`SELECT v->>'at' AS at, (v->'size')::numeric::text AS size, jsonb_typeof(v->'size') AS t,
                               (v->>'at')::timestamptz = '2024-01-02 03:04:05.678+00' AS same
                        FROM meetcache.cache_get('interop:3') v`))[0];
  assert.deepEqual(row, { at: "2024-01-02T03:04:05.678Z", size: "9007199254740993", t: "number", same: true });
  // what cache_get_or_set stores from SQL, TS reads (PostgreSQL's own timestamp text)
  await q(`SELECT meetcache.cache_get_or_set('interop:4',
             $$SELECT id, "scheduledAt", TIMESTAMP '2024-01-02 03:04:05.5' AS at, 7::bigint AS n FROM meetings WHERE id = 'm1'$$, 60)`);
  const v = await cache.get("interop:4");
  assert.deepEqual(v, { id: "m1", scheduledAt: null, at: "2024-01-02T03:04:05.5", n: 7 });
  assert.equal(new Date(v.at + "Z").toISOString(), "2024-01-02T03:04:05.500Z");
  assert.equal(await cache.get("interop:none"), null);
  assert.equal(await cache.exists("interop:1"), true);
  assert.equal(await cache.exists("interop:none"), false);
});

test("TTLs: explicit, the family's, ttl_by_value, and none refused before any I/O", async () => {
  await cache.set("meeting:m9:recording", { status: "PROCESSING" });
  assert.ok((await redis.ttl("meeting:m9:recording")) <= 30);
  await cache.set("meeting:m9:recording", { status: "READY" });
  assert.ok((await redis.ttl("meeting:m9:recording")) > 30);
  await cache.set("meeting:m9", { id: "m9" });
  assert.ok((await redis.ttl("meeting:m9")) > 300);
  await cache.set("meeting:m9", { id: "m9" }, 5);
  assert.ok((await redis.ttl("meeting:m9")) <= 5);
  await assert.rejects(cache.set("nofamily:1", 1), /no ttlSeconds given and no key family/);
  await assert.rejects(cache.getOrSet("nofamily:1", () => assert.fail("loader ran")), /no key family/);
  await assert.rejects(cache.set("meeting:m9", 1, 0), /positive whole number/);
  // the SQL side picks the same TTL for a TS-filled recording
  const r = await cache.getOrSet("meeting:m1:recording", () => ({ status: "PROCESSING" }));
  assert.deepEqual(r, { status: "PROCESSING" });
  assert.ok((await redis.ttl("meeting:m1:recording")) <= 30);
});

test("reserved lease namespace refused, as given and after the prefix", async () => {
  await assert.rejects(cache.get("mc-lease:u:{x}"), /reserved namespace/);
  await assert.rejects(cache.del("mc-lease:x"), /reserved namespace/);
  await assert.rejects(cache.delPattern("mc-lease:*"), /reserved namespace/);
  const pre = createCache(redis, { prefix: "mc-", ttl: 60 });
  await assert.rejects(pre.set("lease:x", 1), /reserved namespace/);
  assert.throws(() => createCache(new (require("ioredis"))({ lazyConnect: true, keyPrefix: "x:" })), /keyPrefix/);
});

test("getOrSet: a miss stores under the lease, a hit does not run the loader", async () => {
  let runs = 0;
  const v1 = await cache.getOrSet("meeting:g1", () => { runs++; return { id: "g1", at: new Date(0) }; });
  assert.deepEqual(v1, { id: "g1", at: "1970-01-01T00:00:00.000Z" }); // as the cache holds it
  const v2 = await cache.getOrSet("meeting:g1", () => { runs++; return "other"; });
  assert.deepEqual(v2, v1);
  assert.equal(runs, 1);
  assert.equal(await redis.exists(leaseKey("meeting:g1")), 0);
  // negative caching: null is stored
  assert.equal(await cache.getOrSet("meeting:g2", () => null), null);
  assert.equal(await redis.get("meeting:g2"), "null");
});

test("a loader error gives the lease back", async () => {
  await assert.rejects(cache.getOrSet("meeting:e1", async () => { throw new Error("boom"); }), /boom/);
  assert.equal(await redis.exists(leaseKey("meeting:e1")), 0);
  assert.equal(await redis.exists("meeting:e1"), 0);
  const waits = cache.stats.leaseWaits;
  assert.equal(await cache.getOrSet("meeting:e1", () => 1), 1);
  assert.equal(cache.stats.leaseWaits, waits, "the next reader took the lease at once");
});

// a fill whose loader waits until `during` ran: the store must be refused
async function refusedAfter(key, during) {
  const g = gate();
  const refusedBefore = cache.stats.leaseRefused;
  const fill = cache.getOrSet(key, async () => { await g.wait(); return { old: true }; }, 60);
  await until(async () => (await redis.exists(leaseKey(key))) === 1, `the lease of ${key}`);
  await during();
  g.open();
  assert.deepEqual(await fill, { old: true }); // returned to its caller ...
  assert.equal(cache.stats.leaseRefused, refusedBefore + 1);
}

test("a result is never stored after an invalidation cancelled the lease", async (t) => {
  await t.test("SQL cache_del", async () => {
    await refusedAfter("meeting:c1", () => q(`SELECT meetcache.cache_del('meeting:c1')`));
    assert.equal(await redis.exists("meeting:c1"), 0); // ... but not stored
  });
  await t.test("a committed UPDATE (the extension's trigger)", async () => {
    await refusedAfter("meeting:m2", () => q(`UPDATE meetings SET title = 'Review 2' WHERE id = 'm2'`));
    assert.equal(await redis.exists("meeting:m2"), 0);
  });
  await t.test("TS del", async () => {
    await refusedAfter("meeting:c2", () => cache.del("meeting:c2"));
    assert.equal(await redis.exists("meeting:c2"), 0);
  });
  await t.test("TS set of a newer value (and SQL cache_set)", async () => {
    await refusedAfter("meeting:c3", () => cache.set("meeting:c3", { new: 1 }));
    assert.deepEqual(await cache.get("meeting:c3"), { new: 1 });
    await refusedAfter("meeting:c4", () => q(`SELECT meetcache.cache_set('meeting:c4', '{"new": 2}')`));
    assert.deepEqual(await cache.get("meeting:c4"), { new: 2 });
  });
  await t.test("a hash-tagged key (the other lease form), cancelled from SQL", async () => {
    await refusedAfter("meeting:{c5}", () => q(`SELECT meetcache.cache_del('meeting:{c5}')`));
    assert.equal(await redis.exists("meeting:{c5}"), 0);
  });
});

test("delPattern: SCAN + UNLINK, leases cancelled first, nothing else touched", async () => {
  for (const k of ["dp:1", "dp:2", "dp:{3}", "dpx:1"]) await cache.set(k, k, 60);
  await refusedAfter("dp:held", async () => {
    assert.equal(await cache.delPattern("dp:*"), 3);
    assert.equal(await redis.exists(leaseKey("dp:held")), 0);
  });
  assert.deepEqual((await redis.keys("dp*")).sort(), ["dpx:1"]);
  // the same pattern from SQL cancels a TS lease too
  await refusedAfter("dp:held2", () => q(`SELECT meetcache.cache_del_pattern('dp:*')`));
  assert.equal(await redis.exists("dp:held2"), 0);
});

test("leases are shared with SQL: a TS fill makes cache_get_or_set wait, and the other way round", async () => {
  // TS holds the lease: SQL waits lease_wait in vain, returns its result, stores nothing
  const g = gate();
  const fill = cache.getOrSet("meeting:s1", async () => { await g.wait(); return "from-ts"; });
  await until(async () => (await redis.exists(leaseKey("meeting:s1"))) === 1, "the TS lease");
  const c = await pool.connect();
  try {
    await c.query("SET meetcache.lease_wait = 100");
    const before = (await c.query("SELECT lease_timeouts FROM meetcache.stats()")).rows[0].lease_timeouts;
    assert.equal((await c.query(`SELECT meetcache.cache_get_or_set('meeting:s1', $$SELECT 'from-sql'$$)`)).rows[0].cache_get_or_set, "from-sql");
    const after = (await c.query("SELECT lease_timeouts FROM meetcache.stats()")).rows[0].lease_timeouts;
    assert.equal(Number(after), Number(before) + 1);
  } finally {
    c.release();
  }
  g.open();
  assert.equal(await fill, "from-ts");
  assert.equal(await cache.get("meeting:s1"), "from-ts");
  // SQL holds the lease (its query sleeps): TS waits and takes SQL's value, its loader unused
  const sqlFill = q(`SELECT meetcache.cache_get_or_set('meeting:s2', $$SELECT 'from-sql' || pg_sleep(0.3)::text$$)`);
  await until(async () => (await redis.exists(leaseKey("meeting:s2"))) === 1, "the SQL lease");
  const waits = cache.stats.leaseWaits;
  assert.equal(await cache.getOrSet("meeting:s2", () => assert.fail("loader ran")), "from-sql");
  assert.equal(cache.stats.leaseWaits, waits + 1);
  await sqlFill;
});

test("stampede: 50 concurrent readers of one cold key run the loader once", async () => {
  let runs = 0;
  const values = await Promise.all(Array.from({ length: 50 }, () =>
    cache.getOrSet("meeting:stampede", async () => {
      runs++;
      await new Promise((r) => setTimeout(r, 100));
      return { n: runs };
    })));
  assert.equal(runs, 1);
  assert.ok(values.every((v) => v.n === 1));
});

test("a waiter whose holder never stores loads itself after leaseWaitMs, without caching", async () => {
  const short = createCache(redis, { ttl: 60, leaseWaitMs: 100, leaseTtlMs: 60000 });
  await redis.set(leaseKey("lw:1"), "someone-else", "PX", 60000);
  assert.equal(await short.getOrSet("lw:1", () => "mine"), "mine");
  assert.equal(short.stats.leaseTimeouts, 1);
  assert.equal(await redis.exists("lw:1"), 0);
});

test("the prefix is meetcache.key_prefix: keys and leases line up with SQL's", async () => {
  const pre = createCache(redis, { prefix: "app1:", families: fams });
  const c = await pool.connect();
  try {
    await c.query("SET meetcache.key_prefix = 'app1:'");
    await c.query(`SELECT meetcache.cache_set('meeting:p1', '{"v": 1}')`);
    assert.deepEqual(await pre.get("meeting:p1"), { v: 1 });
    assert.equal(await redis.exists("app1:meeting:p1"), 1);
    await refusedAfterWith(pre, "meeting:p2", leaseKey("app1:meeting:p2"),
      () => c.query(`SELECT meetcache.cache_del('meeting:p2')`));
    assert.equal(await redis.exists("app1:meeting:p2"), 0);
    await pre.set("user:p3", { v: 3 });
    assert.deepEqual((await c.query(`SELECT meetcache.cache_get('user:p3') AS v`)).rows[0].v, { v: 3 });
    assert.equal(await pre.delPattern("*"), 2);
  } finally {
    c.release();
  }
});

async function refusedAfterWith(c, key, lease, during) {
  const g = gate();
  const fill = c.getOrSet(key, async () => { await g.wait(); return 0; });
  await until(async () => (await redis.exists(lease)) === 1, `the lease of ${key}`);
  await during();
  g.open();
  await fill;
  assert.equal(c.stats.leaseRefused, 1);
}

test("scripts are loaded again after SCRIPT FLUSH (NOSCRIPT)", async () => {
  await redis.script("FLUSH");
  assert.equal(await cache.getOrSet("meeting:ns", () => 5), 5);
  assert.equal(await cache.get("meeting:ns"), 5);
});

test("Redis down: getOrSet returns the loader's value and reports it", async () => {
  const Redis = require("ioredis");
  const dead = new Redis({ port: 1, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  dead.on("error", () => {});
  const errors = [];
  const c = createCache(dead, { ttl: 60, onRedisError: (e, k) => errors.push(k) });
  assert.equal(await c.getOrSet("k", () => "db"), "db");
  assert.deepEqual(errors, ["k"]);
  dead.disconnect();
});

test("meetcache-keys writes the module, --check passes, and fails once the catalog changes", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mc-keys-"));
  const out = path.join(dir, "cache-keys.ts");
  const cli = path.resolve(__dirname, "../dist/cjs/keys-cli.js");
  const url = process.env.DATABASE_URL;
  execFileSync(process.execPath, [cli, "--database-url", url, "--out", out]);
  const text = fs.readFileSync(out, "utf8");
  assert.match(text, /meeting: \(id: KeyPart\): string => "meeting:" \+ String\(id\),/);
  assert.match(text, /userMeetings: \(hostId: KeyPart\): string => "meetings:user:" \+ String\(hostId\),/);
  assert.equal(spawnSync(process.execPath, [cli, "--database-url", url, "--out", out, "--check"]).status, 0);
  // the generated functions render what meetcache.key() renders
  const mod = { exports: {} };
  const js = require("typescript").transpileModule(text, { compilerOptions: { module: 1 } }).outputText;
  new Function("module", "exports", "require", js)(mod, mod.exports, require);
  for (const f of fams) {
    const n = (f.template.match(/\{/g) || []).length;
    const args = Array.from({ length: n }, (_, i) => `v${i}`);
    const fn = Object.values(mod.exports.cacheKeys)[fams.indexOf(f)];
    assert.equal(fn(...args), await one(`SELECT meetcache.key($1, VARIADIC $2::text[])`, [f.name, args]));
  }
  await q(`UPDATE meetcache.families SET ttl_seconds = ttl_seconds + 1 WHERE name = 'meeting'`);
  try {
    const r = spawnSync(process.execPath, [cli, "--database-url", url, "--out", out, "--check"]);
    assert.equal(r.status, 1);
    assert.match(r.stderr.toString(), /no longer matches meetcache\.families/);
  } finally {
    await q(`UPDATE meetcache.families SET ttl_seconds = ttl_seconds - 1 WHERE name = 'meeting'`);
  }
});
