// demo/run-demo.sh's last step: one Prisma write, then a TypeScript read through
// meetcache's getOrSet, against the demo's servers (DATABASE_URL, REDIS_URL,
// MEETCACHE_KEY_PREFIX). The write has no cache code; the read after it is fresh.
import { cache, redis } from "../src/lib/redis.js";
import { createPrisma } from "../src/lib/prisma.js";
import { reads } from "../src/reads.js";

const prisma = createPrisma();
const meeting = reads(prisma).meeting("m1");
const read = async () => ((await cache.getOrSet(meeting.key, meeting.load)) as { title: string }).title;
const say = (s: string) => console.log(`    ${s}`);

await prisma.user.create({ data: { id: "u1", name: "Alice", email: "alice@example.com" } });
await prisma.meeting.create({ data: { id: "m1", title: "Weekly sync", hostId: "u1", inviteCode: "inv-m1", status: "LIVE" } });
say(`ts> cache.getOrSet(cacheKeys.meeting("m1"), ...)   -> "${await read()}"   (miss: Prisma query, stored under a lease)`);
say(`ts> cache.getOrSet(cacheKeys.meeting("m1"), ...)   -> "${await read()}"   (hit, ${cache.stats.hits} so far)`);
await prisma.meeting.update({ where: { id: "m1" }, data: { title: "Weekly sync (moved to Thursday)" } });
say(`ts> prisma.meeting.update({ where: { id: "m1" }, data: { title: ... } })   (no cache.del)`);
say(`ts> cache.exists(cacheKeys.meeting("m1"))   -> ${await cache.exists(meeting.key)}   (deleted by meetcache at COMMIT)`);
const fresh = await read();
say(`ts> cache.getOrSet(cacheKeys.meeting("m1"), ...)   -> "${fresh}"`);
await prisma.$disconnect();
redis.disconnect();
if (fresh !== "Weekly sync (moved to Thursday)") throw new Error(`stale read: ${fresh}`);
