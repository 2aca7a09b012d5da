-- Shared prelude of every transition script (prepended at load time; Redis 6.2 has no functions).
-- Convention for every script: ARGV[1] = active TTL (ms), ARGV[2] = done TTL (ms).
-- Scripts return a flat list of actions, 6 strings each, for the Python side to carry out after
-- the state change has committed:
--   fire_ok  <cb key> <kind> <task> <return value json> ''
--   fire_err <cb key> <kind> <task> <failed message json> <error json>
--   launch   <key>    <kind> <task> <input json or ''>   <return value json or '' for none>
--   stop     <key>    <kind> <task> <run id or ''>        ''
local ACTIVE_TTL = tonumber(ARGV[1])
local DONE_TTL = tonumber(ARGV[2])
local actions = {}
local SUBKEYS = {':members', ':queue', ':finished'}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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

local function decode_list(raw)
  if not raw or raw == '' or raw == '[]' then return {} end
  return cjson.decode(raw)
end

local function expire(key, ttl)
  redis.call('PEXPIRE', key, ttl)
  -- Only swarms have sub-keys (members, queue, finished).
  if redis.call('HGET', key, 'kind') == 'swarm' then
    for _, s in ipairs(SUBKEYS) do redis.call('PEXPIRE', key .. s, ttl) end
  end
end

-- A signature that will never run (an unfired callback, a step after a failure): its whole
-- subtree gets the done TTL so nothing of the workflow outlives it.
local function expire_tree(key, depth)
  if depth > 64 then return end
  expire(key, DONE_TTL)
  local f = redis.call('HMGET', key, 'ok', 'err', 'steps')
  for i = 1, 3 do
    for _, child in ipairs(decode_list(f[i])) do expire_tree(child, depth + 1) end
  end
  for _, m in ipairs(redis.call('LRANGE', key .. ':members', 0, -1)) do expire_tree(m, depth + 1) end
end

local function publish_done(key, outcome)
  local ns, wf = string.match(key, '^(.*):sig:{([^}]*)}')
  if ns then redis.call('PUBLISH', ns .. ':done:{' .. wf .. '}', key .. ' ' .. outcome) end
end

-- Record a terminal outcome on one signature and queue its callbacks.
local function finalize(key, outcome, value, msg)
  local field = (outcome == 'done') and 'res' or 'error'
  redis.call('HSET', key, 'st', outcome, field, value, 'ts_f', now_ms())
  local f = redis.call('HMGET', key, 'ok', 'err', 'w')
  local fire, skip = f[1], f[2]
  if outcome ~= 'done' then fire, skip = f[2], f[1] end
  if outcome == 'canceled' then fire, skip = nil, nil end
  for _, cb in ipairs(decode_list(fire)) do
    if outcome == 'done' then act('fire_ok', cb, value, '') else act('fire_err', cb, msg, value) end
  end
  for _, cb in ipairs(decode_list(skip)) do expire_tree(cb, 0) end
  if f[3] then publish_done(key, outcome) end
  expire(key, DONE_TTL)
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
  local c = redis.call('HMGET', swarm, 'running', 'nok', 'nfail', 'total', 'closed', 'maxc', 'limit')
  return {running = tonumber(c[1] or '0'), nok = tonumber(c[2] or '0'),
          nfail = tonumber(c[3] or '0'), total = tonumber(c[4] or '0'), closed = c[5] == '1',
          maxc = tonumber(c[6] or '1'), limit = tonumber(c[7] or '')}
end

-- Start queued members while slots are free. Returns the updated counts.
local function swarm_fill(swarm, c)
  local sm = redis.call('HMGET', swarm, 'msg', 'ret')
  while c.running < c.maxc do
    local nxt = redis.call('LPOP', swarm .. ':queue')
    if not nxt then break end
    c.running = redis.call('HINCRBY', swarm, 'running', 1)
    act('launch', nxt, sm[1], sm[2])
  end
  return c
end

local function swarm_is_complete(c)
  return c.closed and (c.nok + c.nfail) >= c.total and c.running <= 0
end

-- Too many failures: queued members never start, running ones are told to stop.
local function swarm_abort(swarm)
  for _, q in ipairs(redis.call('LRANGE', swarm .. ':queue', 0, -1)) do
    redis.call('HSET', q, 'st', 'canceled')
    expire_tree(q, 0)
  end
  redis.call('DEL', swarm .. ':queue')
  for _, m in ipairs(redis.call('LRANGE', swarm .. ':members', 0, -1)) do
    local st = redis.call('HGET', m, 'st')
    if st == 'active' then
      act('stop', m, redis.call('HGET', m, 'run') or '', '')
      redis.call('HSET', m, 'st', 'canceled')
      expire_tree(m, 0)
    end
  end
  redis.call('HSET', swarm, 'running', 0)
end

local function swarm_member_done(swarm, member, outcome, value)
  if redis.call('SADD', swarm .. ':finished', member) == 0 then return nil end
  expire(swarm, ACTIVE_TTL)
  redis.call('HINCRBY', swarm, 'running', -1)
  redis.call('HINCRBY', swarm, (outcome == 'done') and 'nok' or 'nfail', 1)
  local c = swarm_counts(swarm)
  if outcome ~= 'done' and c.limit and c.nfail >= c.limit then
    swarm_abort(swarm)
    return swarm, 'failed', value
  end
  c = swarm_fill(swarm, c)
  if swarm_is_complete(c) then return swarm, 'done', swarm_results(swarm) end
  return nil
end

local function chain_step_done(chain, step, outcome, value)
  expire(chain, ACTIVE_TTL)
  local steps = decode_list(redis.call('HGET', chain, 'steps'))
  local cur = tonumber(redis.call('HGET', chain, 'cur') or '0')
  if steps[cur + 1] ~= step then return nil end
  if outcome ~= 'done' then
    for i = cur + 2, #steps do expire_tree(steps[i], 0) end
    return chain, 'failed', value
  end
  if cur + 2 > #steps then return chain, 'done', value end
  redis.call('HSET', chain, 'cur', cur + 1)
  act('launch', steps[cur + 2], '', value)
  return nil
end

-- The one completion path: finish `key`, then walk up through the containers it completes.
local function complete(key, outcome, value, msg)
  while key do
    finalize(key, outcome, value, msg)
    local parent = redis.call('HGET', key, 'parent')
    if not parent or parent == '' then return end
    local p = redis.call('HMGET', parent, 'st', 'kind')
    -- A parent that is not running (suspended, canceled, finished) does not advance now.
    if p[1] ~= 'active' then return end
    if p[2] == 'chain' then
      key, outcome, value = chain_step_done(parent, key, outcome, value)
    else
      key, outcome, value = swarm_member_done(parent, key, outcome, value)
    end
  end
end
