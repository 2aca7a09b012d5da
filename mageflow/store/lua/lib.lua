-- Shared prelude of every transition script (prepended at load time; Redis 6.2 has no functions).
-- Convention for every script: ARGV[1] = active TTLs (ms) and ARGV[2] = done TTLs (ms), each
-- "task,chain,swarm". Scripts return a flat list of actions, 6 strings each, for the Python side
-- to carry out after the state change has committed:
--   fire_ok  <cb key> <kind> <task> <return value json> ''
--   fire_err <cb key> <kind> <task> <failed message json> <error json>
--   launch   <key>    <kind> <task> <input json or ''>   <return value json or '' for none>
--   relaunch <key>    <kind> <task> <envelope json>      ''   (resume: send the same message again)
--   stop     <key>    <kind> <task> <run id or ''>        ''   (cancel the running task)
local function ttl_table(raw)
  local t, kinds, i = {}, {'task', 'chain', 'swarm'}, 1
  for part in string.gmatch(raw, '[^,]+') do t[kinds[i]] = tonumber(part); i = i + 1 end
  return t
end
local TTL = {active = ttl_table(ARGV[1]), done = ttl_table(ARGV[2])}
local TERMINAL = {done = true, failed = true, canceled = true}
local CANCELED = '{"type":"Canceled","message":"canceled before it finished"}'
local TOO_MANY_FAILURES = '{"type":"SwarmFailed","message":"stop_after_n_failures reached"}'
local actions = {}
local SWARM_SUBKEYS = {':members', ':queue', ':finished'}

local NOW = nil
local function now_ms()  -- one clock reading per script run is enough
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW
end

local function act(verb, key, a, b)
  local kt = redis.call('HMGET', key, 'kind', 'task')
  local n = #actions
  actions[n + 1] = verb
  actions[n + 2] = key
  actions[n + 3] = kt[1] or ''
  actions[n + 4] = kt[2] or ''
  actions[n + 5] = a or ''
  actions[n + 6] = b or ''
end

-- The outbox: what a transition asked for is kept on the record until the caller confirms it was
-- sent, so a worker that dies in between leaves it for the redelivered message to send again.
local function keep_actions(key)
  if #actions > 0 then redis.call('HSET', key, 'acts', cjson.encode(actions)) end
end

local function decode_list(raw)
  if not raw or raw == '' or raw == '[]' then return {} end
  return cjson.decode(raw)
end

-- Set a signature's TTL for its phase ('active' or 'done'), sub-keys included.
local function expire(key, phase)
  local f = redis.call('HMGET', key, 'kind', 'cache')
  local kind = f[1] or 'task'
  local ttl = TTL[phase][kind] or TTL[phase]['task']
  redis.call('PEXPIRE', key, ttl)
  if kind == 'swarm' then
    for _, s in ipairs(SWARM_SUBKEYS) do redis.call('PEXPIRE', key .. s, ttl) end
  end
  -- A durable task's retry cache lives exactly as long as the task.
  if f[2] then redis.call('PEXPIRE', key .. ':cache', ttl) end
end

-- Steps of a chain and members of a swarm.
local function children(key)
  local out = decode_list(redis.call('HGET', key, 'steps'))
  for _, m in ipairs(redis.call('LRANGE', key .. ':members', 0, -1)) do out[#out + 1] = m end
  return out
end

-- A signature and everything under it (callbacks, steps, members) get one phase's TTL: 'done'
-- for what will never run (an unfired callback, a step after a failure), 'active' for what is
-- still waiting its turn.
local function expire_tree(key, depth, phase)
  if depth > 64 then return end
  -- Something still running (a callback fired earlier) sets its own TTL when it finishes.
  if phase == 'done' and depth > 0 and redis.call('HGET', key, 'st') == 'active' then return end
  expire(key, phase or 'done')
  local f = redis.call('HMGET', key, 'ok', 'err')
  for i = 1, 2 do
    for _, cb in ipairs(decode_list(f[i])) do expire_tree(cb, depth + 1, phase) end
  end
  for _, child in ipairs(children(key)) do expire_tree(child, depth + 1, phase) end
end

-- A container with work in flight is refreshed on every transition below it. What it still
-- waits for (its callbacks, later steps, queued members) must not expire either, but refreshing
-- that is O(size), so it runs at most once per quarter of the container's active TTL: those keys
-- always keep at least three quarters of it. Returns the container's parent.
local function touch_container(c)
  local f = redis.call('HMGET', c, 'kind', 'qtouch', 'ok', 'err', 'parent')
  local ttl = TTL.active[f[1]] or TTL.active.task
  redis.call('PEXPIRE', c, ttl)
  local now = now_ms()
  if f[2] and now - tonumber(f[2]) < ttl / 4 then return f[5] end
  redis.call('HSET', c, 'qtouch', now)
  expire(c, 'active')  -- with its sub-keys
  for i = 3, 4 do
    for _, cb in ipairs(decode_list(f[i])) do expire_tree(cb, 0, 'active') end
  end
  -- Finished children too: the container reads their results when it completes.
  for _, child in ipairs(children(c)) do
    if not TERMINAL[redis.call('HGET', child, 'st') or 'done'] then
      expire_tree(child, 0, 'active')
    else
      expire(child, 'active')
    end
  end
  return f[5]
end

-- A signature made progress: refresh it, its callbacks, and every container above it.
local function keep_alive(key)
  expire(key, 'active')
  local f = redis.call('HMGET', key, 'ok', 'err', 'parent')
  for i = 1, 2 do
    for _, cb in ipairs(decode_list(f[i])) do expire(cb, 'active') end
  end
  local parent, depth = f[3], 0
  while parent and parent ~= '' and depth < 64 do
    parent = touch_container(parent)
    depth = depth + 1
  end
end

local function publish_done(key, outcome)
  local ns, wf = string.match(key, '^(.*):sig:{([^}]*)}')
  if ns then redis.call('PUBLISH', ns .. ':done:{' .. wf .. '}', key .. ' ' .. outcome) end
end

-- Record a terminal outcome on one signature and queue its callbacks. Returns its parent's key
-- and {status, kind} (nil when it has none), read once here for complete().
local function finalize(key, outcome, value, msg)
  local field = (outcome == 'done') and 'res' or 'error'
  redis.call('HSET', key, 'st', outcome, field, value, 'ts_f', now_ms())
  -- The message kept for resume is of no use any more; without it most records fit Redis's
  -- compact hash encoding (a third of the memory).
  redis.call('HDEL', key, 'env', 'lease')
  if outcome == 'failed' and msg ~= '' then redis.call('HSET', key, 'msg', msg) end
  local f = redis.call('HMGET', key, 'ok', 'err', 'w')
  local fire, skip, skip2 = f[1], f[2], nil
  if outcome == 'failed' then fire, skip = f[2], f[1] end
  if outcome == 'canceled' then fire, skip, skip2 = nil, f[1], f[2] end
  for _, cb in ipairs(decode_list(fire)) do
    if outcome == 'done' then act('fire_ok', cb, value, '') else act('fire_err', cb, msg, value) end
  end
  for _, cb in ipairs(decode_list(skip)) do expire_tree(cb, 0, 'done') end
  for _, cb in ipairs(decode_list(skip2)) do expire_tree(cb, 0, 'done') end
  if f[3] then publish_done(key, outcome) end
  -- A child's result is read by its container when that completes, so it lives as long as the
  -- container; a signature with no running parent takes the done TTL for its whole subtree.
  local parent = redis.call('HGET', key, 'parent')
  local p = nil
  if parent and parent ~= '' then p = redis.call('HMGET', parent, 'st', 'kind') end
  if p and p[1] and not TERMINAL[p[1]] then
    expire(key, 'active')
  else
    expire(key, 'done')
    for _, child in ipairs(children(key)) do expire_tree(child, 1, 'done') end
  end
  return parent, p
end

local function swarm_results(swarm)
  local parts = {}
  for i, m in ipairs(redis.call('LRANGE', swarm .. ':members', 0, -1)) do
    local r = redis.call('HMGET', m, 'st', 'res', 'error')
    if r[1] == 'done' then
      parts[i] = r[2] or 'null'
    else
      parts[i] = '{"$mageflow_failed":' .. (r[3] or ('{"type":"' .. (r[1] or 'missing') ..
        '","message":"task did not finish","key":"' .. m .. '"}')) .. '}'
    end
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

local function swarm_counts(swarm)
  local c = redis.call('HMGET', swarm, 'running', 'nok', 'nfail', 'total', 'closed', 'maxc',
    'limit', 'ncanc')
  return {running = tonumber(c[1] or '0'), nok = tonumber(c[2] or '0'),
          nfail = tonumber(c[3] or '0'), total = tonumber(c[4] or '0'), closed = c[5] == '1',
          maxc = tonumber(c[6] or '1'), limit = tonumber(c[7] or ''),
          ncanc = tonumber(c[8] or '0')}
end

-- Start queued members while slots are free. Returns the updated counts.
local function swarm_fill(swarm, c)
  local sm = redis.call('HMGET', swarm, 'msg', 'ret')
  while c.running < c.maxc do
    local nxt = redis.call('LPOP', swarm .. ':queue')
    if not nxt then break end
    c.running = redis.call('HINCRBY', swarm, 'running', 1)
    expire(nxt, 'active')
    act('launch', nxt, sm[1], sm[2])
  end
  return c
end

local function swarm_is_complete(c)
  return c.closed and (c.nok + c.nfail + c.ncanc) >= c.total and c.running <= 0
end

-- Cancel a signature and everything inside it, without telling its parent: running tasks are
-- told to stop, nothing fires.
local function cancel_tree(key, depth)
  if depth > 64 then return end
  local f = redis.call('HMGET', key, 'st', 'kind', 'run')
  if not f[1] or TERMINAL[f[1]] then return end
  if f[2] == 'task' and f[1] == 'active' then act('stop', key, f[3] or '', '') end
  redis.call('HSET', key, 'st', 'canceled')
  for _, child in ipairs(children(key)) do cancel_tree(child, depth + 1) end
  finalize(key, 'canceled', CANCELED, '')
end

-- Too many failures: queued members never start, running ones (and all inside them) stop.
local function swarm_abort(swarm)
  redis.call('DEL', swarm .. ':queue')
  for _, m in ipairs(redis.call('LRANGE', swarm .. ':members', 0, -1)) do cancel_tree(m, 1) end
  redis.call('HSET', swarm, 'running', 0)
end

-- Count a finished member once. A member still queued held no slot.
local function swarm_count(swarm, member, outcome)
  if redis.call('SADD', swarm .. ':finished', member) == 0 then return false end
  touch_container(swarm)
  -- Only a member canceled while it waited can still be queued (it held no slot); looking for
  -- it is O(queue), so only that case looks.
  if outcome ~= 'canceled' or redis.call('LREM', swarm .. ':queue', 1, member) == 0 then
    redis.call('HINCRBY', swarm, 'running', -1)
  end
  local field = 'nfail'
  if outcome == 'done' then field = 'nok' elseif outcome == 'canceled' then field = 'ncanc' end
  redis.call('HINCRBY', swarm, field, 1)
  return true
end

-- After a running swarm's counts changed: fail it, fill free slots, or complete it.
local function swarm_settle(swarm, value)
  local c = swarm_counts(swarm)
  if c.limit and c.nfail >= c.limit then
    swarm_abort(swarm)
    return swarm, 'failed', value
  end
  c = swarm_fill(swarm, c)
  if swarm_is_complete(c) then return swarm, 'done', swarm_results(swarm) end
  return nil
end

local function swarm_member_done(swarm, member, outcome, value)
  if not swarm_count(swarm, member, outcome) then return nil end
  return swarm_settle(swarm, value)
end

-- Launch a chain's next step, unless it was canceled before its turn: then the chain cannot run
-- as planned and is canceled too (returned for the cascade).
local function chain_launch(chain, step, input, ret)
  local st = redis.call('HGET', step, 'st')
  if st == 'canceled' or not st then
    for _, s in ipairs(children(chain)) do
      if not TERMINAL[redis.call('HGET', s, 'st') or 'canceled'] then expire_tree(s, 0, 'done') end
    end
    return chain, 'canceled', CANCELED
  end
  expire(step, 'active')
  act('launch', step, input, ret)
  return nil
end

local function chain_step_done(chain, step, outcome, value)
  touch_container(chain)
  local steps = decode_list(redis.call('HGET', chain, 'steps'))
  local cur = tonumber(redis.call('HGET', chain, 'cur') or '0')
  if steps[cur + 1] ~= step then return nil end
  if outcome ~= 'done' then
    for i = cur + 2, #steps do expire_tree(steps[i], 0, 'done') end
    return chain, outcome, value
  end
  if cur + 2 > #steps then return chain, 'done', value end
  redis.call('HSET', chain, 'cur', cur + 1)
  return chain_launch(chain, steps[cur + 2], '', value)
end

-- The one completion path: finish `key`, then walk up through the containers it completes.
local function complete(key, outcome, value, msg)
  while key do
    local parent, p = finalize(key, outcome, value, msg)
    if not p then return end
    if p[1] == 'active' then
      if p[2] == 'chain' then
        key, outcome, value = chain_step_done(parent, key, outcome, value)
      else
        key, outcome, value = swarm_member_done(parent, key, outcome, value)
      end
    else
      -- A paused swarm still counts its members (resume acts on the counts); a paused chain
      -- looks at its current step when resumed; a finished parent ignores late children.
      if p[2] == 'swarm' and p[1] and not TERMINAL[p[1]] then swarm_count(parent, key, outcome) end
      return
    end
  end
end

-- A chain launches its first step; a swarm fills its slots from the queue.
local function container_start(key, input, ret)
  redis.call('HSET', key, 'st', 'active', 'ts_s', now_ms())
  keep_alive(key)
  if redis.call('HGET', key, 'kind') == 'chain' then
    local steps = decode_list(redis.call('HGET', key, 'steps'))
    if #steps == 0 then
      complete(key, 'done', 'null', input)
    else
      local k2, outcome, value = chain_launch(key, steps[1], input, ret)
      if k2 then complete(k2, outcome, value, '') end
    end
  else
    redis.call('HSET', key, 'msg', input, 'ret', ret)
    local k2, outcome, value = swarm_settle(key, '')
    if k2 then complete(k2, outcome, value, input) end
  end
end
