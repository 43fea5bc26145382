// The seed's lib/redis.ts, on meetcache: the same `redis`, `cache` and `cacheKeys`
// exports. cacheKeys and the TTLs come from the catalog (src/cache-keys.ts, written by
// `npm run keys`), and getOrSet fills under the extension's leases.
import { Redis } from "ioredis";
import { createCache } from "meetcache";
import { cacheKeys, families } from "../cache-keys.js";

export const redis = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
export const cache = createCache(redis, { families, prefix: process.env.MEETCACHE_KEY_PREFIX ?? "" });
export { cacheKeys };
