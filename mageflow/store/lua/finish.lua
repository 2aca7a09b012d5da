-- A task ended (after its last attempt). KEY[1] signature. ARGV[4] outcome (done | failed),
-- ARGV[5] result or error json, ARGV[6] the task's message json (for error callbacks).
-- Only the first finish of an active signature counts; a duplicate answers V.SKIP, status.
local key = KEY[1]
local refused = guard()
if refused then return refused end
local f = redis.call('HMGET', key, unpack(FINAL_FIELDS))
if f[7] ~= ST.ACTIVE then return answer(V.SKIP, f[7] or V.MISSING) end
complete(key, ARGV[4], ARGV[5], ARGV[6], f)
return answer(V.OK)
