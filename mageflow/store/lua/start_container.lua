-- Start a chain or swarm. KEYS[1] container. ARGV[3] input json ('' for none), ARGV[4] return value
-- json ('' for none). A chain launches its first step; a swarm fills its slots from the queue.
local key = KEYS[1]
local f = redis.call('HMGET', key, 'st', 'kind')
if not f[1] then return {'missing'} end
if f[1] ~= 'pending' then return {f[1]} end
redis.call('HSET', key, 'st', 'active', 'ts_s', now_ms())
expire(key, 'active')
if f[2] == 'chain' then
  local steps = decode_list(redis.call('HGET', key, 'steps'))
  if #steps == 0 then
    complete(key, 'done', 'null', ARGV[3])
  else
    local k2, outcome, value = chain_launch(key, steps[1], ARGV[3], ARGV[4])
    if k2 then complete(k2, outcome, value, '') end
  end
else
  redis.call('HSET', key, 'msg', ARGV[3], 'ret', ARGV[4])
  local k2, outcome, value = swarm_settle(key, '')
  if k2 then complete(k2, outcome, value, ARGV[3]) end
end
table.insert(actions, 1, 'ok')
return actions
