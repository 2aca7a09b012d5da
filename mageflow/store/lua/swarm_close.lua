-- Close a swarm: no more members. A running swarm whose members all finished completes now.
local key = KEYS[1]
local st = redis.call('HGET', key, 'st')
if not st then return {'missing'} end
redis.call('HSET', key, 'closed', '1')
if st == 'active' and swarm_is_complete(swarm_counts(key)) then
  complete(key, 'done', swarm_results(key), '')
end
table.insert(actions, 1, 'ok')
return actions
