-- Keep running tasks claimed: extend the lease (and TTL) of each KEYS[i] that is still active.
-- ARGV[3] lease (ms). Returns how many leases were extended.
local until_ms = now_ms() + tonumber(ARGV[3])
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'st') == 'active' then
    redis.call('HSET', key, 'lease', until_ms)
    keep_alive(key)
    n = n + 1
  end
end
return n
