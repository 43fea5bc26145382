-- meetcache set_cancel: KEYS key, lease key; ARGV value, ttl s.
-- An unconditional set (cache_set) that also cancels any lease on the key. Returns 1.
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
