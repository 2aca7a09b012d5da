-- Take over what nobody is seeing through. ARGV[4] grace (ms): outbox entries queued longer ago
-- and still unsent are sent again; ARGV[5] at most this many of each kind per call.
-- 1. A queued message no receiver claimed, past its grace: its sender died, the send failed, or
--    a durable engine accepted it longer ago than the accepted grace and no receiver claimed it
--    since (the broker lost it, or Redis lost the claim). Send it again, and look again no
--    sooner than the grace period from now.
-- 2. A running task whose lease ran out (its holder died): queue its message again; a delivery
--    with an expired lease takes the claim over.
local now, most = now_ms(), tonumber(ARGV[5])
local cutoff = now - tonumber(ARGV[4])
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', OUTBOX, '-inf', cutoff, 'LIMIT', 0, most)) do
  local key = string.match(entry, '^(.+)@%d+$')
  local f = key and redis.call('HMGET', key, F.STATUS, F.OUTBOX_ENTRY, F.ENVELOPE, F.KIND, F.TASK)
  local unclaimed = f and (f[1] == ST.PENDING or
    (f[1] == ST.ACTIVE and not redis.call('ZSCORE', LEASES, key)))
  if unclaimed and f[2] and outbox_entry(key, f[2]) == entry and f[3] then
    redis.call('ZADD', OUTBOX, now, entry)
    push(ACT.DELIVER, key, f[4], f[5], f[3], entry)
  else
    redis.call('ZREM', OUTBOX, entry)
  end
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now - 1, 'LIMIT', 0, most)) do
  redis.call('ZREM', LEASES, key)
  local f = redis.call('HMGET', key, F.STATUS, F.ENVELOPE, F.KIND, F.TASK)
  if f[1] == ST.ACTIVE and f[2] then
    local entry = outbox_entry(key, tostring(now))
    redis.call('HSET', key, F.OUTBOX_ENTRY, tostring(now))
    redis.call('ZADD', OUTBOX, now, entry)
    push(ACT.DELIVER, key, f[3], f[4], f[2], entry)
  end
end
keep_index(OUTBOX)
return answer(V.OK)
