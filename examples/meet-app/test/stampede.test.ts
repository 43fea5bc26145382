// A stampede: 50 concurrent HTTP readers of one cold key run its Prisma query once; the
// others wait on the lease and get the holder's value.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { Cache } from "meetcache";
import { seed, start, type App } from "./harness.js";

const runs = new Map<string, number>();
function counting(c: Cache): Cache {
  return {
    ...c,
    getOrSet: (key, loader, ttl) => c.getOrSet(key, async () => {
      runs.set(key, (runs.get(key) ?? 0) + 1);
      await new Promise((r) => setTimeout(r, 100)); // a slow query: everyone piles up
      return loader();
    }, ttl),
  };
}

let app: App;
before(async () => {
  app = await start(counting);
  await seed(app);
});
after(() => app.close());

test("50 concurrent readers of one cold key: the loader runs once", async () => {
  assert.equal(await app.redis.exists("meeting:m1"), 0);
  const all = await Promise.all(Array.from({ length: 50 }, () => app.get("/api/meetings/m1")));
  assert.equal(runs.get("meeting:m1"), 1);
  assert.ok(all.every((v) => JSON.stringify(v) === JSON.stringify(all[0])));
  assert.equal((all[0] as { title: string }).title, "Weekly sync");
  assert.ok(app.cache.stats.leaseWaits >= 49 - app.cache.stats.hits, JSON.stringify(app.cache.stats));
});
