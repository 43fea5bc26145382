-- meetcache del_pairs: KEYS key1, lease1, key2, lease2, ...
-- Deletes each key and cancels its lease. Returns the number of keys (not leases) deleted.
local n = 0
for i = 1, #KEYS, 2 do
  n = n + redis.call('UNLINK', KEYS[i])
  redis.call('UNLINK', KEYS[i + 1])
end
return n
