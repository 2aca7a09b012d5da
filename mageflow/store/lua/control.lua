-- Lifecycle control of a signature and, for chains and swarms, everything inside it.
-- KEY[1] signature. ARGV[4] action: suspend | interrupt | resume | cancel.
-- Answers V.OK with actions, or a refusal: V.MISSING, V.INVALID status (not allowed from this
-- status), V.RUNNING status (suspend of a task that already runs), V.ORPHAN status own-status.
--   suspend   graceful: what has not started will not start; running tasks finish
--   interrupt aggressive: running tasks are stopped too
--   resume    sends again exactly what was stopped or parked; finished work is not redone
--   cancel    stops everything for good and tells the parent container
local root, action = KEY[1], ARGV[4]
local refused = guard()
if refused then return refused end

local function pause(key, to, depth)
  if depth > 64 then return end
  local f = redis.call('HMGET', key, F.STATUS, F.KIND, F.RUN_ID)
  local st = f[1]
  if not st or TERMINAL[st] or st == ST.INTERRUPTED then return end
  if (f[2] or KIND.TASK) == KIND.TASK then
    if st == ST.ACTIVE then
      if to == ST.SUSPENDED then return end
      push(ACT.STOP, key, KIND.TASK, '', f[3] or '')
      -- Stopped on purpose: not a lost holder, so recovery must not send it again.
      redis.call('ZREM', LEASES, key)
    end
    if st ~= to then redis.call('HSET', key, F.STATUS, to, F.PREVIOUS, st) end
  else
    if st ~= ST.SUSPENDED then redis.call('HSET', key, F.PREVIOUS, st) end
    redis.call('HSET', key, F.STATUS, to)
    for _, child in ipairs(children(key)) do pause(child, to, depth + 1) end
  end
  expire(key, LIVE)
end

-- A resumed chain looks at its current step, which may have ended while the chain was paused.
local function reconcile_chain(c)
  local steps = decode_list(redis.call('HGET', c.key, F.STEPS))
  local step = steps[c.cur + 1]
  if not step then return end
  local s = redis.call('HMGET', step, F.STATUS, F.RESULT, F.ERROR, F.FAILED_INPUT)
  if s[1] == ST.DONE then
    if c.cur + 2 > #steps then
      complete(c.key, ST.DONE, s[2], '')
    else
      redis.call('HSET', c.key, F.CURRENT, c.cur + 1)
      local k2, outcome, value = chain_launch(c.key, steps[c.cur + 2], '', s[2])
      if k2 then complete(k2, outcome, value, '') end
    end
  elseif s[1] == ST.FAILED or s[1] == ST.CANCELED then
    complete(c.key, s[1], s[3] or CANCELED, s[4] or '')
  end
end

local function resume(key, depth)
  if depth > 64 then return end
  local f = redis.call('HMGET', key, F.STATUS, F.KIND, F.PREVIOUS, F.ENVELOPE)
  if f[1] ~= ST.SUSPENDED and f[1] ~= ST.INTERRUPTED then return end
  expire(key, LIVE)
  if (f[2] or KIND.TASK) == KIND.TASK then
    redis.call('HSET', key, F.STATUS, ST.PENDING)
    redis.call('HDEL', key, F.PREVIOUS, F.ATTEMPT)
    -- A task whose message already arrived (it ran, or was parked) gets it again; one whose
    -- message was never sent runs when that happens.
    if f[4] then deliver(key, f[4]) end
    return
  end
  local prev = f[3] or ST.ACTIVE
  redis.call('HSET', key, F.STATUS, prev)
  redis.call('HDEL', key, F.PREVIOUS)
  for _, child in ipairs(children(key)) do resume(child, depth + 1) end
  if prev == ST.PENDING then
    -- Its message arrived while it was paused: start it now.
    if f[4] then deliver(key, f[4]) end
    return
  end
  local c = load_container(key)
  if prev ~= ST.ACTIVE or c.st ~= ST.ACTIVE then return end
  if c.kind == KIND.CHAIN then
    reconcile_chain(c)
  else
    local k2, outcome, value = swarm_settle(c, TOO_MANY_FAILURES)
    if k2 then complete(k2, outcome, value, '') end
  end
end

local f = redis.call('HMGET', root, F.STATUS, F.KIND, F.PARENT, F.OWNER, F.ENVELOPE, F.RUN_ID)
local st = f[1]
if not st then return answer(V.MISSING) end
-- A signature that has not run, under a container (at any depth) or an owner that already
-- finished, will never run unless its message is parked on it (a callback fired while it was
-- paused): controlling it would only bring its keys back to life.
if (st == ST.PENDING or st == ST.SUSPENDED or st == ST.INTERRUPTED) and not f[5] then
  local ended, by_owner = nil, false
  local owner = f[4] and f[4] ~= '' and redis.call('HGET', f[4], F.STATUS)
  if owner and TERMINAL[owner] then ended, by_owner = owner, true end
  local up, depth = f[3], 0
  while not ended and up and up ~= '' and depth < 64 do
    local u = redis.call('HMGET', up, F.STATUS, F.PARENT)
    if u[1] and TERMINAL[u[1]] then ended = u[1] end
    up, depth = u[2], depth + 1
  end
  if ended and action == CTL.RESUME then
    -- Resuming it only takes it out of its paused status: nothing is sent, and its keys keep
    -- the done TTL they got when what was above it ended.
    resume(root, 0)
    actions = {}
    expire_tree(root, 0, ENDED)
    return answer(V.OK)
  end
  -- A callback whose owner ended may still be canceled; anything else is refused.
  if ended and not (by_owner and action == CTL.CANCEL) then return answer(V.ORPHAN, ended, st) end
end
if action == CTL.RESUME then
  if st ~= ST.SUSPENDED and st ~= ST.INTERRUPTED then return answer(V.INVALID, st) end
  resume(root, 0)
elseif TERMINAL[st] then
  return answer(V.INVALID, st)
elseif action == CTL.SUSPEND then
  if (f[2] or KIND.TASK) == KIND.TASK and st == ST.ACTIVE then return answer(V.RUNNING, st) end
  pause(root, ST.SUSPENDED, 0)
elseif action == CTL.INTERRUPT then
  pause(root, ST.INTERRUPTED, 0)
elseif action == CTL.CANCEL then
  if (f[2] or KIND.TASK) == KIND.TASK and st == ST.ACTIVE then
    push(ACT.STOP, root, KIND.TASK, '', f[6] or '')
  end
  redis.call('HSET', root, F.STATUS, ST.CANCELED)
  for _, child in ipairs(children(root)) do cancel_tree(child, 1) end
  -- Through the completion path, so the parent container learns of it.
  complete(root, ST.CANCELED, CANCELED, '')
else
  return answer(V.INVALID, st)
end
return answer(V.OK)
