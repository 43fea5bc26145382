// createCache: the seed application's cache API (get, set, del, delPattern, exists,
// getOrSet) over an ioredis Redis or Cluster, with the extension's lease protocol and its
// Lua scripts (lua/*.lua, embedded at build time), its lease keys, its key prefix, its
// value encoding (codec.ts) and its TTL selection (keys.ts).
//
// Invariants:
//   - a value is stored by getOrSet only through lease_set, with the token of a lease this
//     call took: an invalidation (the extension's UNLINK K L, del, delPattern, set) that
//     ran since then makes the store a no-op;
//   - a lease this call holds is given back (lease_release) when the loader throws;
//   - every key and pattern is checked against the reserved lease namespace, as given and
//     after the prefix, before any I/O.
import { createHash, randomBytes } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import { decode, encode } from "./codec.js";
import {
  Family, FamilyIndex, LEASE_NS, MAX_KEY_BYTES, familyTtl, globEscape, leaseGlobs, leaseKey, reserved,
} from "./keys.js";
import { LUA } from "./lua.js";

export interface CacheOptions {
  /** Prepended to every key, like meetcache.key_prefix (default ""). Use the same value. */
  prefix?: string;
  /** How long a lease lives if its holder never stores (meetcache.lease_ttl; 10000). */
  leaseTtlMs?: number;
  /** How long a reader waits for another's fill before loading itself (meetcache.lease_wait; 2000). */
  leaseWaitMs?: number;
  /** The families (from the module `meetcache-keys` writes): the default TTL of a key. */
  families?: readonly Family[];
  /** The TTL (seconds) of a key no family matches, when none is given. */
  ttl?: number;
  /**
   * Called when Redis cannot be reached during getOrSet: the loader's result is then
   * returned and not stored. Default: process.emitWarning.
   */
  onRedisError?: (err: Error, key: string) => void;
}

export interface CacheStats {
  hits: number;
  misses: number;
  leaseWaits: number;
  leaseTimeouts: number;
  leaseRefused: number;
  redisErrors: number;
}

export interface Cache {
  /** The cached value, or null on a miss. */
  get<T = unknown>(key: string): Promise<T | null>;
  /** Stores a value (SET EX) and cancels any lease on the key, like cache_set. */
  set(key: string, value: unknown, ttlSeconds?: number): Promise<void>;
  /** Deletes keys with their leases; returns how many keys existed. */
  del(...keys: string[]): Promise<number>;
  /** SCAN + UNLINK (every master of a cluster), leases first; returns how many keys were deleted. */
  delPattern(pattern: string): Promise<number>;
  exists(key: string): Promise<boolean>;
  /**
   * The cached value, or the loader's, stored under a lease. The value returned is the
   * value as the cache holds it (a Date becomes its ISO string) on a hit and on a miss.
   */
  getOrSet<T>(key: string, loader: () => T | Promise<T>, ttlSeconds?: number): Promise<T>;
  readonly stats: CacheStats;
}

type Client = Redis | Cluster;
type ScriptName = keyof typeof LUA;

const SHA = Object.fromEntries(
  Object.entries(LUA).map(([name, text]) => [name, createHash("sha1").update(text).digest("hex")]),
) as Record<ScriptName, string>;

const TOKEN_BASE = `node-${process.pid}-${randomBytes(6).toString("hex")}`;
let tokenCounter = 0;

const DEL_BATCH = 100; // key pairs per del_pairs call (standalone Redis)
const SCAN_COUNT = "1000";

// an error reply of Redis (not a lost connection); by name, as the application's copy of
// ioredis may not be this package's
const isReplyError = (err: unknown) => (err as Error | null)?.name === "ReplyError";

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function isCluster(redis: Client): redis is Cluster {
  return (redis as Cluster).isCluster === true;
}

export function createCache(redis: Client, options: CacheOptions = {}): Cache {
  const prefix = options.prefix ?? "";
  const leaseTtlMs = options.leaseTtlMs ?? 10000;
  const leaseWaitMs = options.leaseWaitMs ?? 2000;
  const index = new FamilyIndex(options.families ?? []);
  const onRedisError = options.onRedisError ??
    ((err: Error, key: string) => process.emitWarning(`meetcache: redis failed for key "${key}": ${err.message}`));
  const ioPrefix = isCluster(redis)
    ? (redis.options.redisOptions?.keyPrefix ?? (redis.options as { keyPrefix?: string }).keyPrefix)
    : redis.options.keyPrefix;
  if (ioPrefix)
    throw new Error("meetcache: do not set ioredis' keyPrefix (it would not apply to lease keys and SCAN); use the option prefix");
  const cluster = isCluster(redis);
  const stats: CacheStats = { hits: 0, misses: 0, leaseWaits: 0, leaseTimeouts: 0, leaseRefused: 0, redisErrors: 0 };

  function full(key: string, what = "cache key"): string {
    if (typeof key !== "string" || key === "") throw new TypeError(`meetcache: ${what} must be a non-empty string`);
    if (Buffer.byteLength(key) > MAX_KEY_BYTES)
      throw new RangeError(`meetcache: ${what} is too long (the limit is ${MAX_KEY_BYTES} bytes)`);
    const f = prefix + key;
    if (reserved(key, false) || reserved(f, false))
      throw new RangeError(`meetcache: ${what} "${key}" is in the reserved namespace "${LEASE_NS}"`);
    return f;
  }

  async function script(name: ScriptName, keys: string[], args: (string | number)[]): Promise<unknown> {
    try {
      return await redis.evalsha(SHA[name], keys.length, ...keys, ...args);
    } catch (err) {
      if (!isReplyError(err) || !(err as Error).message.startsWith("NOSCRIPT")) throw err;
      // EVAL runs it and puts it in that node's script cache for the next EVALSHA
      return redis.eval(LUA[name], keys.length, ...keys, ...args);
    }
  }

  function checkTtl(ttl: number): number {
    if (!Number.isInteger(ttl) || ttl <= 0 || ttl > 2147483647)
      throw new RangeError(`meetcache: ttlSeconds must be a positive whole number, not ${ttl}`);
    return ttl;
  }

  // the TTL of a key (explicit, else its family's, else options.ttl); the family's may
  // depend on the value, so this returns a function of it. Throws before any I/O.
  function ttlOf(key: string, ttl: number | undefined): (value: unknown) => number {
    if (ttl !== undefined) {
      const t = checkTtl(ttl);
      return () => t;
    }
    const f = index.familyFor(key);
    if (f && f.ttlSeconds) {
      const family = f;
      return (value) => familyTtl(family, value) ?? checkTtl(family.ttlSeconds as number);
    }
    if (options.ttl !== undefined) {
      const t = checkTtl(options.ttl);
      return () => t;
    }
    throw new RangeError(`meetcache: no ttlSeconds given and no key family with a TTL matches "${key}"`);
  }

  async function get<T>(key: string): Promise<T | null> {
    const v = await redis.get(full(key));
    if (v === null) {
      stats.misses++;
      return null;
    }
    stats.hits++;
    return decode<T>(v);
  }

  async function set(key: string, value: unknown, ttlSeconds?: number): Promise<void> {
    const k = full(key);
    const ttl = ttlOf(key, ttlSeconds);
    const text = encode(value);
    await script("set_cancel", [k, leaseKey(k)], [text, ttl(decode(text))]);
  }

  // deletes full keys, each with its lease in the same atomic script
  async function delFull(keys: string[]): Promise<number> {
    const calls: Promise<unknown>[] = [];
    const step = cluster ? 1 : DEL_BATCH; // a script's keys must share a slot in a cluster
    for (let i = 0; i < keys.length; i += step)
      calls.push(script("del_pairs", keys.slice(i, i + step).flatMap((k) => [k, leaseKey(k)]), []));
    return (await Promise.all(calls)).reduce<number>((n, r) => n + Number(r), 0);
  }

  async function del(...keys: string[]): Promise<number> {
    return delFull(keys.map((k) => full(k)));
  }

  // every page of SCAN MATCH glob on one node
  async function scan(node: Redis, glob: string, page: (keys: string[]) => Promise<unknown>): Promise<void> {
    let cursor = "0";
    do {
      const [next, keys] = await node.scan(cursor, "MATCH", glob, "COUNT", SCAN_COUNT);
      cursor = next;
      if (keys.length > 0) await page(keys);
    } while (cursor !== "0");
  }

  async function delPattern(pattern: string): Promise<number> {
    if (typeof pattern !== "string" || pattern === "") throw new TypeError("meetcache: pattern must be a non-empty string");
    const glob = globEscape(prefix) + pattern;
    if (reserved(pattern, true) || reserved(glob, true))
      throw new RangeError(`meetcache: pattern "${pattern}" is in the reserved namespace "${LEASE_NS}"`);
    const nodes: Redis[] = cluster ? (redis as Cluster).nodes("master") : [redis as Redis];
    let total = 0;
    // leases first, then keys (as cache_del_pattern): once the lease pass is over no fill
    // can store, and a fill that stored during it is deleted by the key pass
    await Promise.all(nodes.map(async (node) => {
      for (const leases of leaseGlobs(glob))
        await scan(node, leases, (keys) =>
          cluster ? Promise.all(keys.map((k) => node.unlink(k))) : node.unlink(...keys));
      await scan(node, glob, async (keys) => {
        const n = await delFull(keys.filter((k) => !k.startsWith(LEASE_NS)));
        total += n; // after the await: the nodes run concurrently
      });
    }));
    return total;
  }

  async function exists(key: string): Promise<boolean> {
    return (await redis.exists(full(key))) > 0;
  }

  function getOrSet<T>(key: string, loader: () => T | Promise<T>, ttlSeconds?: number): Promise<T> {
    let k: string, ttl: (value: unknown) => number;
    try {
      k = full(key);
      ttl = ttlOf(key, ttlSeconds);
    } catch (err) {
      return Promise.reject(err);
    }
    // a hit costs one GET and nothing more; only a miss runs the lease script
    return redis.get(k).then(
      (v) => {
        if (v === null) return fill(key, k, loader, ttl);
        stats.hits++;
        return decode<T>(v);
      },
      (err) => fill(key, k, loader, ttl, err),
    );
  }

  // a miss: take the lease (or wait for its holder's value), load, store under the lease;
  // getErr: the GET failed
  async function fill<T>(key: string, k: string, loader: () => T | Promise<T>,
    ttl: (value: unknown) => number, getErr?: unknown): Promise<T> {
    const lease = leaseKey(k);
    const token = `${TOKEN_BASE}-${++tokenCounter}`;
    let hold = false;
    let redisOk = true;
    try {
      if (getErr !== undefined) throw getErr;
      const deadline = Date.now() + leaseWaitMs;
      let nap = 2;
      let waited = false;
      for (;;) {
        const r = (await script("lease_get", [k, lease], [token, leaseTtlMs])) as [number, string?];
        if (r[0] === 1) {
          stats.hits++;
          return decode<T>(r[1] as string);
        }
        if (r[0] === 2) {
          hold = true;
          break;
        }
        // another caller is filling this key: wait for its value, with backoff
        if (!waited) {
          waited = true;
          stats.leaseWaits++;
        }
        const left = deadline - Date.now();
        if (left <= 0) {
          stats.leaseTimeouts++;
          break; // load ourselves, without caching
        }
        await sleep(Math.min(nap, left));
        nap = Math.min(nap * 2, 50);
      }
    } catch (err) {
      if (isReplyError(err)) throw err;
      stats.redisErrors++;
      redisOk = false;
      onRedisError(err as Error, key);
    }
    stats.misses++;
    let text: string;
    try {
      text = encode(await loader());
    } catch (err) {
      if (hold) await script("lease_release", [lease], [token]).catch(() => undefined);
      throw err;
    }
    const value = decode<T>(text);
    if (hold && redisOk) {
      try {
        const stored = await script("lease_set", [k, lease], [token, text, ttl(value)]);
        if (Number(stored) !== 1) stats.leaseRefused++;
      } catch (err) {
        if (isReplyError(err)) throw err;
        stats.redisErrors++;
        onRedisError(err as Error, key);
      }
    }
    return value;
  }

  return { get, set, del, delPattern, exists, getOrSet, stats };
}
