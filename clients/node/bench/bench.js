// bench/client.sh: getOrSet against plain ioredis in the same run, on the same connection.
//   hit:  cache.getOrSet(key) on a cached key   vs  redis.get(key)
//   miss: cache.getOrSet(new key) (GET, lease_get, loader, lease_set)   vs  GET + SET EX
// Each pair is measured with one call in flight (latency) and with 32 in flight
// (throughput), in alternating blocks of BENCH_BLOCK ops (the order swapped every block),
// so that the two sides of a ratio see the same machine: the figures are the total time of
// each side over all blocks, as µs per op, and their ratio.
"use strict";
const Redis = require("ioredis");
const { createCache } = require("../dist/cjs/index.js");

const url = process.env.MEETCACHE_REDIS_URL || "redis://127.0.0.1:6379";
const OPS = Number(process.env.BENCH_OPS || 40000);
const BLOCK = Number(process.env.BENCH_BLOCK || 500);
const redis = new Redis(url);
const cache = createCache(redis, { ttl: 300 });
const value = { id: "m1", title: "Weekly sync", status: "LIVE", host: { id: "u1", name: "Alice", image: null }, _count: { participants: 3 } };
const text = JSON.stringify(value);
let seq = 0;

async function run(op, n, inflight) {
  const t0 = process.hrtime.bigint();
  let next = 0;
  const worker = async () => { while (next < n) { next++; await op(); } };
  await Promise.all(Array.from({ length: inflight }, worker));
  return Number(process.hrtime.bigint() - t0) / 1e3; // µs
}

async function pair(name, a, b, inflight) {
  const t = [0, 0];
  await run(a, BLOCK, inflight); // warm-up
  await run(b, BLOCK, inflight);
  for (let blk = 0; blk < OPS / BLOCK; blk++) {
    const order = blk % 2 ? [1, 0] : [0, 1];
    for (const i of order) t[i] += await run(i === 0 ? a : b, BLOCK, inflight);
  }
  const [ua, ub] = t.map((x) => x / OPS);
  console.log(`  ${name.padEnd(34)} ${ua.toFixed(1).padStart(7)} ${ub.toFixed(1).padStart(7)}   ratio ${(ua / ub).toFixed(3)}`);
}

async function main() {
  await redis.flushdb();
  await cache.set("bench:hit", value);
  const hit = () => cache.getOrSet("bench:hit", () => value);
  const get = () => redis.get("bench:hit").then(JSON.parse);
  const miss = () => cache.getOrSet(`bench:m:${++seq}`, () => value);
  const getSet = async () => {
    const k = `bench:p:${++seq}`;
    const v = await redis.get(k);
    if (v === null) await redis.set(k, text, "EX", 300);
  };
  console.log(`${OPS} ops a side, blocks of ${BLOCK}; µs/op: client, plain ioredis`);
  for (const inflight of [1, 32]) {
    console.log(`${inflight} in flight:`);
    await pair("hit: getOrSet vs GET", hit, get, inflight);
    await pair("miss: getOrSet vs GET + SET EX", miss, getSet, inflight);
    await redis.flushdb();
    await cache.set("bench:hit", value);
  }
  redis.disconnect();
}
main().catch((err) => { console.error(err); process.exit(1); });
