-- Close a swarm: no more members. A running swarm whose members all finished completes now.
-- KEY[1] swarm.
local key = KEY[1]
local refused = guard()
if refused then return refused end
local c = load_container(key)
if not c.st then return answer(V.MISSING) end
redis.call('HSET', key, F.CLOSED, '1')
c.closed = true
if c.st == ST.ACTIVE and swarm_is_complete(c) then
  complete(key, ST.DONE, swarm_results(key), '')
end
return answer(V.OK)
