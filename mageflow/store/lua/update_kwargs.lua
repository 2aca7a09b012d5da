-- Set bound kwargs (fields k:<name>) on an existing signature. ARGV[3..] name/json pairs.
local key = KEYS[1]
local f = redis.call('HMGET', key, 'st', 'moved')
if f[2] then return {'moved', f[2]} end
if not f[1] then return {'missing'} end
for i = 3, #ARGV, 2 do redis.call('HSET', key, 'k:' .. ARGV[i], ARGV[i + 1]) end
return {'ok'}
