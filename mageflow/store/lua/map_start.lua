-- Start a map: its members were written just now, one copy of its template per item (by the
-- process that took the start message, see mageflow/mapping.py). KEY[1] map. ARGV[4] the
-- message its members get (the map's input without the items), ARGV[5] an error JSON when the
-- input had no list of items ('' otherwise), ARGV[6..] the member keys in item order.
-- Claims the map like start_container does: only a pending map starts, so of two processes that
-- expanded the same start message one wins; V.STATUS tells the other to delete its copies.
local key = KEY[1]
local refused = claim_container(key)
if refused then return refused end
if ARGV[5] ~= '' then
  redis.call('HSET', key, F.STATUS, ST.ACTIVE, F.STARTED, now_ms())
  complete(key, ST.FAILED, ARGV[5], ARGV[4])
  return answer(V.OK)
end
local n = #ARGV - 5
for i = 6, #ARGV do
  redis.call('RPUSH', key .. SUB.MEMBERS, ARGV[i])
  redis.call('RPUSH', key .. SUB.QUEUE, ARGV[i])
end
redis.call('HSET', key, F.TOTAL, n, F.CLOSED, '1')
container_start(key, ARGV[4], '')
return answer(V.OK)
