// meetcache for Node: createCache (cache.ts) and the key helpers the generated cacheKeys
// module (meetcache-keys) uses.
export { createCache } from "./cache.js";
export type { Cache, CacheOptions, CacheStats } from "./cache.js";
export { leaseKey, LEASE_NS, MAX_KEY_BYTES } from "./keys.js";
export type { Family, KeyPart } from "./keys.js";
export { encode, decode } from "./codec.js";
export { LUA } from "./lua.js";
