-- Second half of the prelude (after lib.lua): the one completion path. finalize() records an
-- outcome and fires callbacks, complete() walks up through the chains and swarms it completes,
-- container_start() starts a chain or swarm (and a map whose members were just written).

-- A started root ended: move it from the running index to the ended one, note when its records
-- expire, and drop (a bounded number of) ended entries whose records are gone. Only roots that
-- were started are in the running index, so the ZREM tells them apart.
local function retire_workflow(key, kind, created)
  if redis.call('ZREM', WORKFLOWS, key) == 0 then return end
  local ttl, now = ttl_of(ENDED, kind), now_ms()
  redis.call('ZADD', ENDED_WORKFLOWS, tonumber(created) or now, key)
  redis.call('ZADD', WORKFLOW_EXPIRY, now + ttl, key)
  local gone = redis.call('ZRANGEBYSCORE', WORKFLOW_EXPIRY, '-inf', now, 'LIMIT', 0, 100)
  if #gone > 0 then
    redis.call('ZREM', ENDED_WORKFLOWS, unpack(gone))
    redis.call('ZREM', WORKFLOW_EXPIRY, unpack(gone))
  end
  for _, index in ipairs({ENDED_WORKFLOWS, WORKFLOW_EXPIRY}) do
    if redis.call('PTTL', index) < ttl then redis.call('PEXPIRE', index, ttl) end
  end
end

-- Record a terminal outcome on one signature and queue its callbacks. Returns its parent's state
-- (nil when it has none), read once here for complete().
local FINAL_FIELDS = {F.SUCCESS, F.ERRORS, F.WAITED, F.PARENT, F.KIND, F.CACHE, F.STATUS,
  F.OWNER, F.CREATED}
local function finalize(key, outcome, value, msg, f)
  f = f or redis.call('HMGET', key, unpack(FINAL_FIELDS))
  local field = (outcome == ST.DONE) and F.RESULT or F.ERROR
  if outcome == ST.FAILED and msg ~= '' then
    redis.call('HSET', key, F.STATUS, outcome, field, value, F.FINISHED, now_ms(), F.FAILED_INPUT, msg)
  else
    redis.call('HSET', key, F.STATUS, outcome, field, value, F.FINISHED, now_ms())
  end
  -- The queued message is of no use any more; without it most records fit Redis's compact hash
  -- encoding.
  redis.call('HDEL', key, F.ENVELOPE, F.OUTBOX_ENTRY)
  if (f[5] or KIND.TASK) == KIND.TASK then redis.call('ZREM', LEASES, key) end
  local fire, skip, skip2 = f[1], f[2], nil
  if outcome == ST.FAILED then fire, skip = f[2], f[1] end
  if outcome == ST.CANCELED then fire, skip, skip2 = nil, f[1], f[2] end
  for _, cb in ipairs(decode_list(fire)) do
    if outcome == ST.DONE then
      deliver(cb, envelope(cb, '', value, ''))
    else
      deliver(cb, envelope(cb, msg, '', value))
    end
  end
  for _, cb in ipairs(decode_list(skip)) do expire_tree(cb, 0, ENDED) end
  for _, cb in ipairs(decode_list(skip2)) do expire_tree(cb, 0, ENDED) end
  if f[3] then publish_done(key, outcome) end
  local p = nil
  if f[4] and f[4] ~= '' then p = load_container(f[4]) end
  -- Under a running container the record already lives as long as that container (see
  -- touch_container); a signature with no running parent takes the done TTL for its subtree.
  if not (p and p.st and not TERMINAL[p.st]) then
    set_ttl(key, ENDED, f[5] or KIND.TASK, f[6])
    for _, child in ipairs(children(key, nil, f[5] or KIND.TASK)) do expire_tree(child, 1, ENDED) end
    if f[5] == KIND.SWARM then  -- a swarm's or map's templates (see TREE_FIELDS) end with it
      local t = redis.call('HMGET', key, F.TEMPLATE, F.ITEM_SUCCESS, F.ITEM_ERRORS)
      for i = 1, 3 do
        for _, tpl in ipairs(decode_list(t[i])) do expire_tree(tpl, 1, ENDED) end
      end
    end
  end
  if not p and (f[8] or '') == '' then retire_workflow(key, f[5] or KIND.TASK, f[9]) end
  return p
end

-- TREE_FIELDS, then the outcome: a finished swarm reads each member once for both.
local RESULT_FIELDS = {unpack(TREE_FIELDS)}
RESULT_FIELDS[#RESULT_FIELDS + 1] = F.RESULT
RESULT_FIELDS[#RESULT_FIELDS + 1] = F.ERROR
local function swarm_results(swarm)
  local parts = {}
  local res, err = #TREE_FIELDS + 1, #TREE_FIELDS + 2
  for i, m in ipairs(redis.call('LRANGE', swarm .. SUB.MEMBERS, 0, -1)) do
    local r = redis.call('HMGET', m, unpack(RESULT_FIELDS))
    seen[m] = r
    if r[1] == ST.DONE then
      parts[i] = r[res] or 'null'
    else
      parts[i] = '{"' .. FAILED_MARK .. '":' .. (r[err] or ('{"type":"' .. (r[1] or V.MISSING) ..
        '","message":"task did not finish","key":"' .. m .. '"}')) .. '}'
    end
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- Start queued members while slots are free.
local function swarm_fill(c)
  while c.running < c.maxc do
    local nxt = redis.call('LPOP', c.key .. SUB.QUEUE)
    if not nxt then break end
    c.running = c.running + 1
    local ret = c.map and (redis.call('HGET', nxt, F.ITEM) or 'null') or c.mr
    deliver(nxt, envelope(nxt, c.mi, ret, ''))
  end
end

local function swarm_is_complete(c)
  return c.closed and (c.nok + c.nfail + c.ncanc) >= c.total and c.running <= 0
end

-- Cancel a signature and everything inside it, without telling its parent: running tasks are
-- told to stop, nothing fires.
local function cancel_tree(key, depth)
  if depth > 64 then return end
  local f = redis.call('HMGET', key, F.STATUS, F.KIND, F.RUN_ID)
  if not f[1] or TERMINAL[f[1]] then return end
  if (f[2] or KIND.TASK) == KIND.TASK and f[1] == ST.ACTIVE then push(ACT.STOP, key, KIND.TASK, '', f[3] or '') end
  redis.call('HSET', key, F.STATUS, ST.CANCELED)
  for _, child in ipairs(children(key)) do cancel_tree(child, depth + 1) end
  finalize(key, ST.CANCELED, CANCELED, '')
end

-- Too many failures: queued members never start, running ones (and all inside them) stop.
local function swarm_abort(c)
  redis.call('DEL', c.key .. SUB.QUEUE)
  for _, m in ipairs(redis.call('LRANGE', c.key .. SUB.MEMBERS, 0, -1)) do cancel_tree(m, 1) end
  c.running = 0
end

-- Count a finished member (each member finishes once: finalize runs once per record).
local function swarm_count(c, member, outcome)
  -- Only a member canceled while it waited can still be queued (it held no slot); looking for
  -- it is O(queue), so only that case looks.
  if outcome ~= ST.CANCELED or redis.call('LREM', c.key .. SUB.QUEUE, 1, member) == 0 then
    c.running = c.running - 1
  end
  if outcome == ST.DONE then c.nok = c.nok + 1
  elseif outcome == ST.CANCELED then c.ncanc = c.ncanc + 1
  else c.nfail = c.nfail + 1 end
end

-- After a running swarm's counts changed: fail it, fill free slots, or complete it. Saves the
-- counts; returns what the swarm itself came to, if it ended.
local function swarm_settle(c, value)
  if c.limit and c.nfail >= c.limit then
    swarm_abort(c)
    save_counts(c)
    return c.key, ST.FAILED, value
  end
  swarm_fill(c)
  save_counts(c)
  if swarm_is_complete(c) then return c.key, ST.DONE, swarm_results(c.key) end
  return nil
end

local function swarm_member_done(c, member, outcome, value)
  touch_container(c)
  swarm_count(c, member, outcome)
  return swarm_settle(c, value)
end

-- Launch a chain's step, unless it was canceled before its turn: then the chain cannot run as
-- planned and is canceled too (returned for the cascade).
local function chain_launch(chain, step, input, ret)
  local st = redis.call('HGET', step, F.STATUS)
  if st == ST.CANCELED or not st then
    for _, s in ipairs(children(chain)) do
      if not TERMINAL[redis.call('HGET', s, F.STATUS) or ST.CANCELED] then expire_tree(s, 0, ENDED) end
    end
    return chain, ST.CANCELED, CANCELED
  end
  deliver(step, envelope(step, input, ret, ''))
  return nil
end

local function chain_step_done(c, step, outcome, value)
  touch_container(c)
  local steps = decode_list(redis.call('HGET', c.key, F.STEPS))
  if steps[c.cur + 1] ~= step then return nil end
  if outcome ~= ST.DONE then
    for i = c.cur + 2, #steps do expire_tree(steps[i], 0, ENDED) end
    return c.key, outcome, value
  end
  if c.cur + 2 > #steps then return c.key, ST.DONE, value end
  redis.call('HSET', c.key, F.CURRENT, c.cur + 1)
  return chain_launch(c.key, steps[c.cur + 2], '', value)
end

-- The one completion path: finish `key`, then walk up through the containers it completes.
-- `f`: the first key's FINAL_FIELDS when the caller read them already.
local function complete(key, outcome, value, msg, f)
  while key do
    local p = finalize(key, outcome, value, msg, f)
    f = nil
    if not p or not p.st then return end
    if p.st == ST.ACTIVE then
      if p.kind == KIND.CHAIN then
        key, outcome, value = chain_step_done(p, key, outcome, value)
      else
        key, outcome, value = swarm_member_done(p, key, outcome, value)
      end
    else
      -- A paused swarm still counts its members (resume acts on the counts); a paused chain
      -- looks at its current step when resumed; a finished parent ignores late children.
      if p.kind == KIND.SWARM and not TERMINAL[p.st] then
        swarm_count(p, key, outcome)
        save_counts(p)
      end
      return
    end
  end
end

-- A container's start message arrived (start_container.lua, map_start.lua): the claim. Only a
-- pending container starts; its outbox entry is done with. The refusal answer, or nil.
local function claim_container(key)
  local refused = guard()
  if refused then return refused end
  local f = redis.call('HMGET', key, F.STATUS, F.OUTBOX_ENTRY)
  if not f[1] then return answer(V.MISSING) end
  if f[1] ~= ST.PENDING then return answer(V.STATUS, f[1]) end
  if f[2] then redis.call('ZREM', OUTBOX, outbox_entry(key, f[2])) end
  return nil
end

-- A chain launches its first step; a swarm fills its slots from the queue.
local function container_start(key, input, ret)
  redis.call('HSET', key, F.STATUS, ST.ACTIVE, F.STARTED, now_ms())
  keep_alive(key)
  local c = load_container(key)
  if c.kind == KIND.CHAIN then
    local steps = decode_list(redis.call('HGET', key, F.STEPS))
    if #steps == 0 then
      complete(key, ST.DONE, 'null', input)
    else
      local k2, outcome, value = chain_launch(key, steps[1], input, ret)
      if k2 then complete(k2, outcome, value, '') end
    end
  else
    redis.call('HSET', key, F.MEMBER_INPUT, input, F.MEMBER_RET, ret)
    c.mi, c.mr = input, ret
    local k2, outcome, value = swarm_settle(c, '')
    if k2 then complete(k2, outcome, value, input) end
  end
end
