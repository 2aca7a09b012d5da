-- Deliver a chain's or swarm's message: start it. KEYS[3] container. ARGV[4] its message json
-- (input merged with its kwargs), ARGV[5] return value json ('' for none).
-- A paused container keeps its queued message for resume; V.STATUS with the status otherwise.
local key = KEYS[3]
local refused = guard()
if refused then return refused end
local f = redis.call('HMGET', key, F.STATUS, F.OUTBOX_ENTRY)
if not f[1] then return answer(V.MISSING) end
if f[1] ~= ST.PENDING then return answer(V.STATUS, f[1]) end
if f[2] then redis.call('ZREM', OUTBOX, outbox_entry(key, f[2])) end
container_start(key, ARGV[4], ARGV[5])
return answer(V.OK)
