-- Shared prelude of every transition script. Before it come the constants generated from
-- store/schema.py and store/keys.py (F fields, ST statuses, KIND, ACT, V verdicts, SUB, SEG).
-- Convention for every script:
--   KEYS[1..6] the indexes of the shard the script's records are in (store/keys.py Shard: outbox,
--   leases, running and ended workflows, their expiry, delayed messages), KEYS[7..] the script's
--   own keys, which scripts read as KEY[1..]; all of one Redis Cluster slot;
--   ARGV[1] active TTLs and ARGV[2] done TTLs (ms, "task,chain,swarm"); ARGV[3] outbox entries a
--   sender has delivered (space separated, or ''); ARGV[4..] the script's own arguments.
-- Every script answers {verdict, detail1, detail2, detail3, rest...}; the rest is a flat list of
-- actions, 6 strings each (kind, key, target kind, task, payload, outbox entry), decoded by
-- schema.Answer.
local OUTBOX, LEASES, WORKFLOWS, ENDED_WORKFLOWS, WORKFLOW_EXPIRY, DELAYED =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local KEY = {}
for i = 7, #KEYS do KEY[i - 6] = KEYS[i] end

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
local NAMESPACE = string.match(OUTBOX, '^(.*)' .. SEG.OUTBOX .. ':{[^}]*}$') or ''
local SIG_PREFIX = NAMESPACE .. SEG.SIG .. '{'
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

-- The refusal answer for the first of KEY[1..] that is not a record of this namespace, or nil.
local function guard()
  for i = 1, #KEY do
    local why = refusal(KEY[i])
    if why then return answer_with(why, KEY[i], '', '', {}) end
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
-- one, and the shard's delayed index (DELAYED) holds "<key>@<due ms>" -> due; release.lua queues
-- it once due, and a wake notice tells sleeping schedulers (recovery.py) to look at the index
-- heads. The channel is no key: Redis Cluster broadcasts it to every node.
local WAKE = NAMESPACE .. SEG.WAKE

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
