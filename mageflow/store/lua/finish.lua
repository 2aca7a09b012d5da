-- A task ended (after its last attempt). KEYS[3] signature. ARGV[4] outcome (done | failed),
-- ARGV[5] result or error json, ARGV[6] the task's message json (for error callbacks).
-- Only the first finish of an active signature counts; a duplicate answers V.SKIP, status.
local key = KEYS[3]
local st = redis.call('HGET', key, F.STATUS)
if st ~= ST.ACTIVE then return answer(V.SKIP, st or V.MISSING) end
complete(key, ARGV[4], ARGV[5], ARGV[6])
return answer(V.OK)
