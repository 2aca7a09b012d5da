-- Ask for a notice when KEY[1] ends. Answers V.FINISHED with its status and the whole record
-- when it has ended already; else sets the waited flag and answers V.OK (or V.MOVED, V.MISSING).
-- Setting the flag and reading the status in one step leaves no gap for a finish to slip through.
local key = KEY[1]
local refused = guard()
if refused then return refused end
local f = redis.call('HMGET', key, F.STATUS, F.MOVED)
if f[2] then return answer(V.MOVED, f[2]) end
if not f[1] then return answer(V.MISSING) end
if TERMINAL[f[1]] then return answer_with(V.FINISHED, f[1], '', '', redis.call('HGETALL', key)) end
redis.call('HSET', key, F.WAITED, '1')
return answer(V.OK, f[1])
