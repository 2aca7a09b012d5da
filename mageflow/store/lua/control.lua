-- Lifecycle control of a signature and, for chains and swarms, everything inside it.
-- KEYS[1] signature. ARGV[3] action: suspend | interrupt | resume | cancel.
-- Returns {'ok', actions...} or {'error', <reason>, <status>} with reason 'missing', 'invalid'
-- (not allowed from this status) or 'running' (suspend of a task that already runs).
--   suspend   graceful: what has not started will not start; running tasks finish
--   interrupt aggressive: running tasks are stopped too
--   resume    sends again exactly what was stopped or parked; finished work is not redone
--   cancel    stops everything for good and tells the parent container
local root, action = KEYS[1], ARGV[3]

local function pause(key, to, depth)
  if depth > 64 then return end
  local f = redis.call('HMGET', key, 'st', 'kind', 'run')
  local st = f[1]
  if not st or TERMINAL[st] or st == 'interrupted' then return end
  if f[2] == 'task' then
    if st == 'active' then
      if to == 'suspended' then return end
      act('stop', key, f[3] or '', '')
    end
    if st ~= to then redis.call('HSET', key, 'st', to, 'prev', st) end
  else
    if st ~= 'suspended' then redis.call('HSET', key, 'prev', st) end
    redis.call('HSET', key, 'st', to)
    for _, child in ipairs(children(key)) do pause(child, to, depth + 1) end
  end
  expire(key, 'active')
end

-- A resumed chain looks at its current step, which may have ended while the chain was paused.
local function reconcile_chain(chain)
  local steps = decode_list(redis.call('HGET', chain, 'steps'))
  local cur = tonumber(redis.call('HGET', chain, 'cur') or '0')
  local step = steps[cur + 1]
  if not step then return end
  local s = redis.call('HMGET', step, 'st', 'res', 'error', 'msg')
  if s[1] == 'done' then
    if cur + 2 > #steps then
      complete(chain, 'done', s[2], '')
    else
      redis.call('HSET', chain, 'cur', cur + 1)
      local k2, outcome, value = chain_launch(chain, steps[cur + 2], '', s[2])
      if k2 then complete(k2, outcome, value, '') end
    end
  elseif s[1] == 'failed' or s[1] == 'canceled' then
    complete(chain, s[1], s[3] or CANCELED, s[4] or '')
  end
end

local function resume(key, depth)
  if depth > 64 then return end
  local f = redis.call('HMGET', key, 'st', 'kind', 'prev', 'env')
  if f[1] ~= 'suspended' and f[1] ~= 'interrupted' then return end
  expire(key, 'active')
  if f[2] == 'task' then
    redis.call('HSET', key, 'st', 'pending')
    redis.call('HDEL', key, 'prev', 'att', 'lease')
    -- A task whose message already arrived (it ran, or was parked) gets it again; one whose
    -- message is still on its way, or was never sent, runs when that happens.
    if f[4] then act('relaunch', key, f[4], '') end
    return
  end
  local prev = f[3] or 'active'
  redis.call('HSET', key, 'st', prev)
  redis.call('HDEL', key, 'prev')
  for _, child in ipairs(children(key)) do resume(child, depth + 1) end
  local parked = redis.call('HMGET', key, 'parked', 'pin', 'pret')
  if prev == 'pending' and parked[1] then
    -- Its launch arrived while it was paused: start it now.
    redis.call('HDEL', key, 'parked', 'pin', 'pret')
    container_start(key, parked[2] or '', parked[3] or '')
    return
  end
  if prev ~= 'active' or redis.call('HGET', key, 'st') ~= 'active' then return end
  if f[2] == 'chain' then
    reconcile_chain(key)
  else
    local k2, outcome, value = swarm_settle(key, TOO_MANY_FAILURES)
    if k2 then complete(k2, outcome, value, '') end
  end
end

local f = redis.call('HMGET', root, 'st', 'kind', 'parent', 'own')
local st = f[1]
if not st then return {'error', 'missing', ''} end
-- A signature that has not run, under a container (at any depth) or an owner that already
-- finished, will never run: controlling it would only bring its keys back to life.
if st == 'pending' or st == 'suspended' or st == 'interrupted' then
  local owner = f[4] and f[4] ~= '' and redis.call('HGET', f[4], 'st')
  if owner and TERMINAL[owner] and action ~= 'cancel' then return {'error', 'orphan', owner, st} end
  local up, depth = f[3], 0
  while up and up ~= '' and depth < 64 do
    local u = redis.call('HMGET', up, 'st', 'parent')
    if u[1] and TERMINAL[u[1]] then
      if action ~= 'resume' then return {'error', 'orphan', u[1], st} end
      -- Resuming it only takes it out of its paused status: nothing is sent, and its keys keep
      -- the done TTL they got when the container above ended.
      resume(root, 0)
      actions = {}
      expire_tree(root, 0, 'done')
      return {'ok'}
    end
    up, depth = u[2], depth + 1
  end
end
if action == 'resume' then
  if st ~= 'suspended' and st ~= 'interrupted' then return {'error', 'invalid', st} end
  resume(root, 0)
elseif TERMINAL[st] then
  return {'error', 'invalid', st}
elseif action == 'suspend' then
  if f[2] == 'task' and st == 'active' then return {'error', 'running', st} end
  pause(root, 'suspended', 0)
elseif action == 'interrupt' then
  pause(root, 'interrupted', 0)
elseif action == 'cancel' then
  if f[2] == 'task' and st == 'active' then
    act('stop', root, redis.call('HGET', root, 'run') or '', '')
  end
  redis.call('HSET', root, 'st', 'canceled')
  for _, child in ipairs(children(root)) do cancel_tree(child, 1) end
  -- Through the completion path, so the parent container learns of it.
  complete(root, 'canceled', CANCELED, '')
else
  return {'error', 'invalid', st}
end
table.insert(actions, 1, 'ok')
return actions
