-- Add members (already written, with parent = this swarm) to a swarm. KEYS[1] swarm.
-- ARGV[3] 'close' to close the swarm in the same step, or ''; ARGV[4..] member keys in order.
-- Returns {'closed'}, {'full', limit}, {'missing'} or {'finished', status} (nothing added; the
-- caller removes what it created for the add), else {'ok', actions...}.
local key = KEYS[1]
local f = redis.call('HMGET', key, 'st', 'closed', 'total', 'maxtasks')
local n = #ARGV - 3
if not f[1] then return {'missing'} end
if f[2] == '1' then return {'closed'} end
if TERMINAL[f[1]] then return {'finished', f[1]} end
local limit = tonumber(f[4] or '')
if limit and tonumber(f[3] or '0') + n > limit then return {'full', tostring(limit)} end
for i = 4, #ARGV do
  redis.call('RPUSH', key .. ':members', ARGV[i])
  redis.call('RPUSH', key .. ':queue', ARGV[i])
end
redis.call('HINCRBY', key, 'total', n)
if ARGV[3] == 'close' then redis.call('HSET', key, 'closed', '1') end
expire(key, 'active')
if f[1] == 'active' then
  local k2, outcome, value = swarm_settle(key, '')
  if k2 then complete(k2, outcome, value, '') end
end
table.insert(actions, 1, 'ok')
return actions
