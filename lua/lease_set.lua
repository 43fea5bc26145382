-- meetcache lease_set: KEYS key, lease key; ARGV token, value, ttl s.
-- Stores the value only while the caller still holds its lease (an invalidation deletes the
-- lease, so a value read before it is never stored after it). Returns 1 if stored, else 0.
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
