-- Move a pending leaf signature under another workflow's hash tag (it became a callback, step or
-- member of a new parent). KEYS[1] old key, KEYS[2] new key. ARGV[3] parent key or '', ARGV[4] owner.
-- Returns {'ok'}, or a reason the caller handles: 'missing', 'moved' <key>, 'owned', 'tree', 'busy'.
local old, new = KEYS[1], KEYS[2]
local f = redis.call('HMGET', old, 'st', 'moved', 'own', 'kind', 'ok', 'err')
if f[2] then return {'moved', f[2]} end
if not f[1] then return {'missing'} end
if f[3] and f[3] ~= '' then return {'owned'} end
if f[1] ~= 'pending' then return {'busy', f[1]} end
if f[4] ~= 'task' or #decode_list(f[5]) > 0 or #decode_list(f[6]) > 0 then return {'tree'} end
local fields = redis.call('HGETALL', old)
redis.call('DEL', old)
redis.call('HSET', new, unpack(fields))
redis.call('HSET', new, 'parent', ARGV[3], 'own', ARGV[4])
expire(new, 'active')
-- Leave a forwarding note so a key handed out earlier still resolves.
redis.call('HSET', old, 'moved', new)
redis.call('PEXPIRE', old, TTL.done.task)
return {'ok'}
