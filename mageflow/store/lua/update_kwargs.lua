-- Set bound kwargs on an existing signature. KEY[1] signature. ARGV[4..] field/json pairs
-- (fields already 'k:<name>'). Answers V.OK, V.MOVED key or V.MISSING.
local key = KEY[1]
local refused = guard()
if refused then return refused end
local f = redis.call('HMGET', key, F.STATUS, F.MOVED)
if f[2] then return answer(V.MOVED, f[2]) end
if not f[1] then return answer(V.MISSING) end
for i = 4, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
return answer(V.OK)
