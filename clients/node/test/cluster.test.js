// createCache over an ioredis Cluster of three masters (throwaway redis-servers started
// here, on free 127.0.0.1 ports): scripts per slot, delPattern on every master, leases.
"use strict";
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const Redis = require("ioredis");
const { createCache, leaseKey } = require("../dist/cjs/index.js");
const { gate, until } = require("./helpers.js");

// meetcache-*/redis*.pid: test/run-tests.sh stops these servers if this suite is killed
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "meetcache-cluster-"));
const ports = [];
let cluster;
let cache;

const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  }).on("error", reject);
});

before(async () => {
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    execFileSync("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
      "--cluster-config-file", path.join(dir, `nodes-${port}.conf`), "--save", "", "--appendonly", "no",
      "--daemonize", "yes", "--dir", dir, "--pidfile", path.join(dir, `redis-${port}.pid`), "--logfile", path.join(dir, `${port}.log`)]);
    ports.push(port);
  }
  for (const port of ports)
    await until(async () => { try { execFileSync("redis-cli", ["-p", String(port), "ping"]); return true; } catch { return false; } }, "redis-server");
  execFileSync("redis-cli", ["--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-yes"], { stdio: "ignore" });
  for (const port of ports)
    await until(async () => /cluster_state:ok/.test(execFileSync("redis-cli", ["-p", String(port), "cluster", "info"]).toString()), "cluster_state ok", 30000);
  cluster = new Redis.Cluster(ports.map((port) => ({ host: "127.0.0.1", port })));
  cache = createCache(cluster, { ttl: 60 });
});

after(async () => {
  if (cluster) cluster.disconnect();
  for (const port of ports) {
    try { process.kill(Number(fs.readFileSync(path.join(dir, `redis-${port}.pid`), "utf8")), "SIGTERM"); } catch { /* gone */ }
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test("cluster: get/set/del, getOrSet under a lease, refused after del, delPattern on every master", async () => {
  const keys = Array.from({ length: 30 }, (_, i) => `cl:${i}`);
  for (const k of keys) await cache.set(k, { k });
  const masters = cluster.nodes("master");
  assert.equal(masters.length, 3);
  const perNode = await Promise.all(masters.map((n) => n.dbsize()));
  assert.ok(perNode.every((n) => n > 0), `keys on every master: ${perNode}`);
  assert.deepEqual(await cache.get("cl:7"), { k: "cl:7" });
  assert.equal(await cache.del("cl:1", "cl:2", "cl:none"), 2);

  // a fill whose lease a del cancels is not stored
  const g = gate();
  const fill = cache.getOrSet("cl:held", async () => { await g.wait(); return "old"; });
  await until(async () => (await cluster.exists(leaseKey("cl:held"))) === 1, "the lease");
  await cache.del("cl:held");
  g.open();
  assert.equal(await fill, "old");
  assert.equal(await cluster.exists("cl:held"), 0);

  // delPattern reaches every master and cancels leases there
  const g2 = gate();
  const fill2 = cache.getOrSet("cl:held2", async () => { await g2.wait(); return "old"; });
  await until(async () => (await cluster.exists(leaseKey("cl:held2"))) === 1, "the lease");
  await cache.set("other:1", 1);
  assert.equal(await cache.delPattern("cl:*"), 28);
  g2.open();
  await fill2;
  assert.equal(await cluster.exists("cl:held2"), 0);
  assert.deepEqual((await Promise.all(masters.map((n) => n.keys("cl:*")))).flat(), []);
  assert.equal(await cache.get("other:1"), 1);
  // a stampede in a cluster
  let runs = 0;
  await Promise.all(Array.from({ length: 20 }, () => cache.getOrSet("cl:{tag}:s", async () => {
    runs++;
    await new Promise((r) => setTimeout(r, 50));
    return 1;
  })));
  assert.equal(runs, 1);
});
