-- meetcache lease_get: KEYS key, lease key; ARGV token, lease ms.
-- Returns {1, value} on a hit, {2} when this caller holds the lease (taken now, or already
-- its own), {3} when another caller holds it.
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
if redis.call('GET', KEYS[2]) == ARGV[1] then return {2} end
return {3}
