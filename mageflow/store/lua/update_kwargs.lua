-- Set bound kwargs on an existing signature. ARGV[3..] field/json pairs (fields already 'k:<name>').
local key = KEYS[1]
local f = redis.call('HMGET', key, 'st', 'moved')
if f[2] then return {'moved', f[2]} end
if not f[1] then return {'missing'} end
for i = 3, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
return {'ok'}
