// Concurrent Prisma writers and HTTP readers (through getOrSet) for a bounded time
// (STRESS_MS, default 4000 ms): afterwards every cached key equals a fresh run of its
// query. The loaders hold their result 0-2 ms before storing, as an application does, which
// is the window in which plain cache-aside (GET, query, SET) stores stale values; with
// MEETCACHE_STRESS_NAIVE=1 the readers fill that way, and this test fails.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { Cache } from "meetcache";
import { allReads, seed, staleKeys, start, type App } from "./harness.js";

const STRESS_MS = Number(process.env.STRESS_MS ?? 4000);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pick = <T>(a: readonly T[]): T => a[Math.floor(Math.random() * a.length)];

// the application's own processing between its query and the store
function slowFills(c: Cache): Cache {
  const naive = process.env.MEETCACHE_STRESS_NAIVE === "1";
  return {
    ...c,
    async getOrSet<T>(key: string, loader: () => T | Promise<T>, ttl?: number): Promise<T> {
      const load = async () => {
        const v = await loader();
        await sleep(Math.random() * 2);
        return v;
      };
      if (!naive) return c.getOrSet(key, load, ttl);
      const hit = await c.get<T>(key);
      if (hit !== null) return hit;
      const v = await load();
      await c.set(key, v, ttl ?? 60);
      return (await c.get<T>(key)) as T;
    },
  };
}

let app: App;
before(async () => {
  app = await start(slowFills);
  await seed(app);
});
after(() => app.close());

const USERS = ["u1", "u2", "u3", "u4"];
const MEETINGS = ["m1", "m2", "m3", "m4", "m5", "m6"];

test(`stress: Prisma writers and HTTP readers for ${STRESS_MS} ms leave 0 stale keys`, async (t) => {
  const { prisma } = app;
  const deadline = Date.now() + STRESS_MS;
  let n = 0, writes = 0, reads = 0;
  const write = async () => {
    const m = pick(MEETINGS), u = pick(USERS), id = `x${++n}`;
    const exists = (await prisma.meeting.count({ where: { id: m } })) > 0;
    if (!exists)
      return prisma.meeting.create({ data: { id: m, title: `T${n}`, hostId: u, inviteCode: `inv-${m}`, status: pick(["LIVE", "SCHEDULED", "ENDED"] as const) } });
    switch (Math.floor(Math.random() * 9)) {
      case 0: return prisma.meeting.update({ where: { id: m }, data: { title: `T${n}` } });
      case 1: return prisma.meeting.update({ where: { id: m }, data: { status: pick(["LIVE", "SCHEDULED", "ENDED"] as const), startedAt: new Date() } });
      case 2: return prisma.meeting.update({ where: { id: m }, data: { hostId: u } });
      case 3: return prisma.participant.create({ data: { id, meetingId: m, userId: u } });
      case 4: return prisma.participant.updateMany({ where: { meetingId: m, userId: u, leftAt: null }, data: { leftAt: new Date() } });
      case 5: return prisma.chatMessage.create({ data: { id, meetingId: m, userId: u, message: `msg ${n}` } });
      case 6: {
        const status = pick(["PROCESSING", "READY"] as const);
        return prisma.recording.upsert({ where: { meetingId: m }, create: { id, meetingId: m, status }, update: { status, fileSizeBytes: BigInt(n) } });
      }
      case 7: return prisma.user.update({ where: { id: u }, data: { name: `N${n}` } });
      default: return m === "m1" ? null : prisma.meeting.delete({ where: { id: m } });
    }
  };
  const paths = [
    "/api/meetings/live", "/api/meetings/scheduled",
    ...USERS.flatMap((u) => [`/api/users/${u}`, `/api/meetings?userId=${u}`, `/api/users/${u}/stats`, `/api/users/${u}/participations`]),
    ...MEETINGS.flatMap((m) => [`/api/meetings/${m}`, `/api/meetings/${m}/participants`, `/api/meetings/${m}/participants/count`,
      `/api/meetings/${m}/chats`, `/api/recordings/${m}`, `/api/meetings/invite/inv-${m}`]),
  ];
  const writer = async () => {
    while (Date.now() < deadline) {
      try {
        await write();
        writes++;
      } catch (err) {
        // a race between writers (a meeting deleted meanwhile, a duplicate create): fine
        if (!/P20(02|03|25)|not found|Unique|Foreign key/i.test(String((err as Error).message))) throw err;
      }
    }
  };
  // the readers go on a little after the writers stop: a hit never overwrites a
  // stale value, so this only refills what the last writes deleted (the check
  // below then has keys to compare even if a meeting delete emptied most)
  const reader = async () => {
    while (Date.now() < deadline + 300) {
      await app.get(pick(paths));
      reads++;
    }
  };
  await Promise.all([writer(), writer(), ...Array.from({ length: 6 }, reader)]);

  const all = await allReads(app, MEETINGS);
  const known = new Set(all.map((r) => r.key));
  const cachedKeys = (await app.redis.keys("*")).filter((k) => !k.startsWith("mc-lease:"));
  assert.deepEqual(cachedKeys.filter((k) => !known.has(k)), [], "a cached key the check does not cover");
  const { checked, stale } = await staleKeys(app, all);
  t.diagnostic(`stress: ${writes} writes, ${reads} reads, ${checked} cached keys checked, ${stale.length} stale; cache ${JSON.stringify(app.cache.stats)}`);
  assert.ok(writes > 20 && reads > 100, `too little work: ${writes} writes, ${reads} reads`);
  assert.ok(checked > 10, `only ${checked} keys cached at the end`);
  assert.deepEqual(stale, []);
});
