-- Add members (already written, with parent = this swarm) to a swarm. KEY[1] swarm.
-- ARGV[4] '1' to close the swarm in the same step, or ''; ARGV[5..] member keys in order.
-- Refusals (nothing added; the caller removes what it created): V.CLOSED, V.FULL limit,
-- V.MISSING, V.FINISHED status.
local key = KEY[1]
local refused = guard()
if refused then return refused end
local c = load_container(key)
local n = #ARGV - 4
if not c.st then return answer(V.MISSING) end
if c.closed then return answer(V.CLOSED) end
if TERMINAL[c.st] then return answer(V.FINISHED, c.st) end
local limit = tonumber(redis.call('HGET', key, F.MAX_TASKS) or '')
if limit and c.total + n > limit then return answer(V.FULL, tostring(limit)) end
for i = 5, #ARGV do
  redis.call('RPUSH', key .. SUB.MEMBERS, ARGV[i])
  redis.call('RPUSH', key .. SUB.QUEUE, ARGV[i])
end
c.total = c.total + n
redis.call('HSET', key, F.TOTAL, c.total)
if ARGV[4] == '1' then
  redis.call('HSET', key, F.CLOSED, '1')
  c.closed = true
end
expire(key, LIVE)
if c.st == ST.ACTIVE then
  local k2, outcome, value = swarm_settle(c, '')
  if k2 then complete(k2, outcome, value, '') end
end
return answer(V.OK)
