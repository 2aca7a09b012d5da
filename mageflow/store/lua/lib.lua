-- Shared prelude of every transition script. Before it come the constants generated from
-- store/schema.py and store/keys.py (F fields, ST statuses, KIND, ACT, V verdicts, SUB, SEG).
-- Convention for every script:
--   KEYS[1] the outbox index, KEYS[2] the lease index, KEYS[3..] the script's own keys;
--   ARGV[1] active TTLs and ARGV[2] done TTLs (ms, "task,chain,swarm"); ARGV[3] outbox entries a
--   sender has delivered (space separated, or ''); ARGV[4..] the script's own arguments.
-- Every script answers {verdict, detail1, detail2, detail3, rest...}; the rest is a flat list of
-- actions, 6 strings each (kind, key, target kind, task, payload, outbox entry), decoded by
-- schema.Answer.
local OUTBOX, LEASES = KEYS[1], KEYS[2]

local function ttl_table(raw)
  local t, kinds, i = {}, {KIND.TASK, KIND.CHAIN, KIND.SWARM}, 1
  for part in string.gmatch(raw, '[^,]+') do t[kinds[i]] = tonumber(part); i = i + 1 end
  return t
end
-- TTL phases: LIVE while a signature may still run, ENDED once it never will.
local LIVE, ENDED = 'live', 'ended'
local TTL = {[LIVE] = ttl_table(ARGV[1]), [ENDED] = ttl_table(ARGV[2])}
local CANCELED = '{"type":"Canceled","message":"canceled before it finished"}'
local TOO_MANY_FAILURES = '{"type":"SwarmFailed","message":"stop_after_n_failures reached"}'
local actions = {}

local NOW = nil
local function now_ms()  -- one clock reading per script run is enough
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW
end

-- The outbox and lease indexes live as long as the longest TTL of any record they can name:
-- every write to one renews it, so an idle namespace leaves nothing behind.
local INDEX_TTL = 0
for _, phase in pairs(TTL) do
  for _, ms in pairs(phase) do INDEX_TTL = math.max(INDEX_TTL, ms) end
end
local function keep_index(index)
  redis.call('PEXPIRE', index, INDEX_TTL)
end

-- Outbox entries whose messages a durable engine has taken (ARGV[3] = "<grace ms> entry ..."):
-- they stay in the outbox until a receiver claims them, but recovery leaves them alone for the
-- accepted grace. One still unclaimed after it (the broker lost it, or Redis lost the claim in a
-- crash) is sent again; the claim makes the extra copy harmless.
if ARGV[3] and ARGV[3] ~= '' then
  local grace, later = nil, {}
  for token in string.gmatch(ARGV[3], '%S+') do
    if not grace then
      grace = tonumber(token)
    else
      later[#later + 1] = now_ms() + grace
      later[#later + 1] = token
    end
  end
  if #later > 0 then redis.call('ZADD', OUTBOX, 'XX', unpack(later)) end
end

-- Only records of this namespace are touched: a script's own keys must be signature keys under
-- the namespace of its outbox, and an existing one must be a hash carrying the record marker.
-- A key refused here was not written to.
local NAMESPACE = string.sub(OUTBOX, 1, #OUTBOX - #SEG.OUTBOX)
local SIG_PREFIX = NAMESPACE .. SEG.SIG .. '{'
-- The workflow indexes (what `mageflow ls` reads). Derived from the namespace like the prefix
-- above; Redis Cluster support will have to pass them as keys.
local WORKFLOWS = NAMESPACE .. SEG.WORKFLOWS
local ENDED_WORKFLOWS = NAMESPACE .. SEG.ENDED
local WORKFLOW_EXPIRY = NAMESPACE .. SEG.EXPIRY
local function refusal(key)
  if string.sub(key, 1, #SIG_PREFIX) ~= SIG_PREFIX then return V.FOREIGN end
  local mark = redis.pcall('HGET', key, F.MARK)
  if type(mark) == 'table' and mark.err then return V.NOT_RECORD end
  if mark ~= RECORD_MARK and redis.call('EXISTS', key) == 1 then return V.NOT_RECORD end
  return nil
end

local function push(kind, key, target, task, payload, entry)
  local n = #actions
  actions[n + 1] = kind
  actions[n + 2] = key
  actions[n + 3] = target or KIND.TASK
  actions[n + 4] = task or ''
  actions[n + 5] = payload or ''
  actions[n + 6] = entry or ''
end

local function answer_with(verdict, d1, d2, d3, rest)
  local out = {verdict, d1 or '', d2 or '', d3 or ''}
  for i = 1, #rest do out[#out + 1] = rest[i] end
  return out
end

local function answer(verdict, d1, d2, d3)
  return answer_with(verdict, d1, d2, d3, actions)
end

-- The refusal answer for the first of KEYS[3..] that is not a record of this namespace, or nil.
local function guard()
  for i = 3, #KEYS do
    local why = refusal(KEYS[i])
    if why then return answer_with(why, KEYS[i], '', '', {}) end
  end
  return nil
end

local function decode_list(raw)
  if not raw or raw == '' or raw == '[]' then return {} end
  return cjson.decode(raw)
end

local function ttl_of(phase, kind)
  return TTL[phase][kind or KIND.TASK] or TTL[phase][KIND.TASK]
end

-- Set a signature's TTL for its phase (LIVE or ENDED), sub-keys included. `kind` and `cache`
-- are read when not given.
local function set_ttl(key, phase, kind, cache)
  local ttl = ttl_of(phase, kind)
  redis.call('PEXPIRE', key, ttl)
  if kind == KIND.SWARM then
    redis.call('PEXPIRE', key .. SUB.MEMBERS, ttl)
    redis.call('PEXPIRE', key .. SUB.QUEUE, ttl)
  end
  -- A durable task's retry cache lives exactly as long as the task.
  if cache then redis.call('PEXPIRE', key .. SUB.CACHE, ttl) end
end

local function expire(key, phase)
  local f = redis.call('HMGET', key, F.KIND, F.CACHE)
  set_ttl(key, phase, f[1] or KIND.TASK, f[2])
end

-- Steps of a chain and members of a swarm (`steps` and `kind` when the caller read them).
local function children(key, steps, kind)
  if kind == nil then
    local f = redis.call('HMGET', key, F.STEPS, F.KIND)
    steps, kind = f[1], f[2]
  elseif kind == KIND.CHAIN and steps == nil then
    steps = redis.call('HGET', key, F.STEPS)
  end
  local out = decode_list(steps)
  if kind == KIND.SWARM then
    for _, m in ipairs(redis.call('LRANGE', key .. SUB.MEMBERS, 0, -1)) do out[#out + 1] = m end
  end
  return out
end

-- A signature and everything under it (callbacks, steps, members) get one phase's TTL: ENDED
-- for what will never run (an unfired callback, a step after a failure), LIVE for what is
-- still waiting its turn. One read per signature: a plain task costs two commands.
local function publish_done(key, outcome)
  local ns, wf = string.match(key, '^(.*)' .. SEG.SIG .. '{([^}]*)}')
  if ns then redis.call('PUBLISH', ns .. SEG.DONE .. '{' .. wf .. '}', key .. ' ' .. outcome) end
end

local TREE_FIELDS = {F.STATUS, F.KIND, F.CACHE, F.SUCCESS, F.ERRORS, F.STEPS, F.WAITED,
  F.TEMPLATE, F.ITEM_SUCCESS, F.ITEM_ERRORS}
-- The TREE_FIELDS that list signatures hanging off a record besides its children: callbacks, and
-- a container's templates (a map's task, per-member callbacks), which never run but live as
-- long as the container that copies them.
local HANGING = {4, 5, 8, 9, 10}
-- Records a script already read with TREE_FIELDS in front (swarm_results), so a swarm that
-- completes reads each member once for its result and its TTL.
local seen = {}
local function expire_tree(key, depth, phase)
  if depth > 64 then return end
  local f = seen[key] or redis.call('HMGET', key, unpack(TREE_FIELDS))
  -- Something still running (a callback fired earlier) sets its own TTL when it finishes.
  if phase == ENDED and depth > 0 and f[1] == ST.ACTIVE then return end
  -- Someone waits for a signature that now will never run: tell them.
  if phase == ENDED and f[7] and not TERMINAL[f[1] or ST.DONE] then publish_done(key, NOTICE.NEVER) end
  local kind = f[2] or KIND.TASK
  set_ttl(key, phase, kind, f[3])
  for _, i in ipairs(HANGING) do
    for _, cb in ipairs(decode_list(f[i])) do expire_tree(cb, depth + 1, phase) end
  end
  if kind ~= KIND.TASK then
    for _, child in ipairs(children(key, f[6], kind)) do expire_tree(child, depth + 1, phase) end
  end
end

-- A container's state, read in one command; the swarm steps below change it in memory and
-- save_counts writes the counters back in one command.
local CONTAINER_FIELDS = {F.STATUS, F.KIND, F.PARENT, F.CURRENT, F.RUNNING, F.N_DONE, F.N_FAILED,
  F.N_CANCELED, F.TOTAL, F.CLOSED, F.MAX_CONCURRENCY, F.FAIL_LIMIT, F.MEMBER_INPUT, F.MEMBER_RET,
  F.TOUCHED, F.CREATED, F.TEMPLATE}
local function load_container(key)
  local c = redis.call('HMGET', key, unpack(CONTAINER_FIELDS))
  return {key = key, st = c[1], kind = c[2], parent = c[3], cur = tonumber(c[4] or '0'),
          running = tonumber(c[5] or '0'), nok = tonumber(c[6] or '0'),
          nfail = tonumber(c[7] or '0'), ncanc = tonumber(c[8] or '0'),
          total = tonumber(c[9] or '0'), closed = c[10] == '1', maxc = tonumber(c[11] or '1'),
          limit = tonumber(c[12] or ''), mi = c[13] or '', mr = c[14] or '',
          -- Never touched: everything under it got its TTL when it was written, at creation.
          touched = tonumber(c[15] or c[16] or '0'),
          -- A map: each member gets its own item as its return value.
          map = (c[17] or '') ~= ''}
end

local function save_counts(c)
  redis.call('HSET', c.key, F.RUNNING, c.running, F.N_DONE, c.nok, F.N_FAILED, c.nfail,
    F.N_CANCELED, c.ncanc)
end

-- A container with work in flight must not expire, nor may what it still waits for (its
-- callbacks, later steps, queued members, finished children whose results it will read).
-- Refreshing all that is O(size), so it runs at most once per quarter of the container's active
-- TTL: those keys always keep at least three quarters of it.
local function touch_container(c)
  local ttl = ttl_of(LIVE, c.kind)
  local now = now_ms()
  if now - c.touched < ttl / 4 then return end
  c.touched = now
  redis.call('HSET', c.key, F.TOUCHED, now)
  expire(c.key, LIVE)
  keep_index(WORKFLOWS)  -- a long workflow keeps its index entry listed while it progresses
  local f = redis.call('HMGET', c.key, F.SUCCESS, F.ERRORS, F.TEMPLATE, F.ITEM_SUCCESS,
    F.ITEM_ERRORS)
  for i = 1, 5 do
    for _, cb in ipairs(decode_list(f[i])) do expire_tree(cb, 0, LIVE) end
  end
  for _, child in ipairs(children(c.key, nil, c.kind)) do expire_tree(child, 1, LIVE) end
end

-- A signature made progress: refresh it, its callbacks, and every container above it.
local function keep_alive(key)
  expire(key, LIVE)
  local f = redis.call('HMGET', key, F.SUCCESS, F.ERRORS, F.PARENT)
  for i = 1, 2 do
    for _, cb in ipairs(decode_list(f[i])) do expire(cb, LIVE) end
  end
  local parent, depth = f[3], 0
  while parent and parent ~= '' and depth < 64 do
    local c = load_container(parent)
    if not c.st then return end
    touch_container(c)
    parent, depth = c.parent, depth + 1
  end
end

-- The JSON envelope a target receives, built from JSON parts (user data is never decoded here).
-- It is stored on the target, so it leaves out the target's own key: a short envelope keeps the
-- record in Redis's compact hash encoding (values up to 64 bytes), a third of the memory.
local function envelope(key, input, ret, err)
  local parts = {'{"input":', (input and input ~= '') and input or '{}'}
  if ret and ret ~= '' then parts[#parts + 1] = ',"ret":'; parts[#parts + 1] = ret end
  if err and err ~= '' then parts[#parts + 1] = ',"error":'; parts[#parts + 1] = err end
  parts[#parts + 1] = '}'
  return table.concat(parts)
end

-- The outbox: queue `key`'s message. It is kept on the record and indexed in the outbox by this
-- same script, so it is durable before anything is sent; the receiver's claim (or a durable
-- engine's acceptance) drops the index entry, and recovery sends again what neither dropped.
-- A paused target keeps the message for resume; a finished one never gets it.
local function outbox_entry(key, stamp)
  return key .. '@' .. stamp
end

-- Queue `key`'s message now: on the record, in the outbox, and as a DELIVER action.
local function queue_now(key, env, kind, task)
  -- The entry is "<key>@<ms>"; the record keeps only the <ms> part (short, see envelope()).
  local stamp = tostring(now_ms())
  local entry = outbox_entry(key, stamp)
  redis.call('HSET', key, F.ENVELOPE, env, F.OUTBOX_ENTRY, stamp)
  redis.call('ZADD', OUTBOX, now_ms(), entry)
  keep_index(OUTBOX)
  push(ACT.DELIVER, key, kind, task, env, entry)
end

-- Scheduling (delays, rate limits). A message that must wait is kept on its record like a parked
-- one, and the namespace's delayed index holds "<key>@<due ms>" -> due; release.lua queues it
-- once due, and a wake notice tells sleeping schedulers (recovery.py) to look at the index head.
-- Like SIG_PREFIX, the index and channel are named from the outbox key's namespace prefix; they
-- are in no workflow's hash slot, so Redis Cluster support will have to pass them as KEYS.
local DELAYED, WAKE = NAMESPACE .. SEG.DELAYED, NAMESPACE .. SEG.WAKE

local function ms_text(ms)
  return string.format('%d', math.floor(ms))
end

-- The delayed index lives as long as the other indexes, and that much past its last due time:
-- a long wait (a rate limit's backlog) never expires with it.
local function keep_delayed()
  local last = redis.call('ZRANGE', DELAYED, -1, -1, 'WITHSCORES')
  local ttl = INDEX_TTL
  if last[2] then ttl = math.max(ttl, tonumber(last[2]) - now_ms() + INDEX_TTL) end
  redis.call('PEXPIRE', DELAYED, math.ceil(ttl))
end

-- A waiting signature must still exist when it is due: refresh it, its callbacks and the
-- containers above it (and a container's subtree); a wait longer than the active TTL (a rate
-- limit's backlog) stretches the record's own TTL past the due time.
local function hold_until(key, kind, due)
  keep_alive(key)
  if kind ~= KIND.TASK then
    for _, child in ipairs(children(key, nil, kind)) do expire_tree(child, 1, LIVE) end
  end
  local wait = due - now_ms()
  if wait > 0 then redis.call('PEXPIRE', key, math.ceil(wait + ttl_of(LIVE, kind))) end
end

-- Keep `key`'s message until `due` (ms). Nothing is to be sent before then, so it has no outbox
-- entry (one it had is done with): the delayed index entry is what release.lua acts on.
local function schedule(key, env, due, kind)
  local stamp = ms_text(due)
  local obx = redis.call('HGET', key, F.OUTBOX_ENTRY)
  if obx then redis.call('ZREM', OUTBOX, outbox_entry(key, obx)) end
  redis.call('HSET', key, F.ENVELOPE, env, F.DUE, stamp)
  redis.call('HDEL', key, F.OUTBOX_ENTRY)
  redis.call('ZADD', DELAYED, tonumber(stamp), outbox_entry(key, stamp))
  keep_delayed()
  hold_until(key, kind or KIND.TASK, tonumber(stamp))
  redis.call('PUBLISH', WAKE, stamp)
end

local function deliver(key, env)
  local f = redis.call('HMGET', key, F.STATUS, F.KIND, F.TASK, F.DELAY, F.DUE)
  local st = f[1]
  if not st or TERMINAL[st] or st == ST.ACTIVE then return end
  if st == ST.SUSPENDED or st == ST.INTERRUPTED then
    redis.call('HSET', key, F.ENVELOPE, env)
    return
  end
  -- A due time, once set, stands: before it the message waits (again, after a resume), after it
  -- the wait is served. Without one, a signature signed with a delay starts waiting now.
  local due = tonumber(f[5] or '')
  if not due and f[4] then due = now_ms() + tonumber(f[4]) end
  if due and due > now_ms() then
    schedule(key, env, due, f[2])
    return
  end
  queue_now(key, env, f[2], f[3])
end

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
