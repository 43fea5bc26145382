-- meetcache lease_release: KEYS lease key; ARGV token.
-- Gives a lease back (a failed fill) if the caller still holds it. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
