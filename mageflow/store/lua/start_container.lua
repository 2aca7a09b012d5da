-- Start a chain or swarm. KEYS[1] container. ARGV[3] input json ('' for none), ARGV[4] return value
-- json ('' for none), ARGV[5] '1' to keep the launches in the outbox until they are sent. A paused
-- container keeps the launch for resume.
local key = KEYS[1]
local st = redis.call('HGET', key, 'st')
if not st then return {'missing'} end
if st == 'suspended' or st == 'interrupted' then
  redis.call('HSET', key, 'pin', ARGV[3], 'pret', ARGV[4], 'parked', '1')
  return {st}
end
if st ~= 'pending' then
  -- Started already; if its first launches may not have gone out, hand them out again.
  local acts = redis.call('HGET', key, 'acts')
  if acts and st == 'active' then return {'replay', acts} end
  return {st}
end
container_start(key, ARGV[3], ARGV[4])
if ARGV[5] == '1' then keep_actions(key) end
table.insert(actions, 1, 'ok')
return actions
