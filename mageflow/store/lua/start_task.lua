-- A worker received a task message: decide whether this delivery runs it, atomically.
-- KEY[1] signature. ARGV[4] attempt number, ARGV[5] lease (ms), ARGV[6] the message envelope,
-- ARGV[7] the task the message is for (a record of another task answers V.WRONG_TASK); ARGV[8]
-- and ARGV[9] the rate limiter's answer, when asked (see below).
-- Answers V.RUN with the kwarg and model fields the run needs; V.RATE (ask the limiter); V.BUSY (a live holder runs this
-- attempt); V.MISSING; or V.STATUS with the status that forbids running (a paused signature
-- keeps the message for resume); V.DEFERRED with the due time (ms) when a pending signature may
-- not start yet (its delay is not served, or its rate limit's slot has not come): the message
-- then waits in the delayed index, and this delivery has nothing to do (it is not an attempt).

-- Rate limits. A limiter is a hash per task (or per value of its per-key field) that lives in no
-- shard, so it is asked in a call of its own (rate.lua) between two calls of this script: the
-- first answers V.RATE with the limiter's key, the rate and the slot this signature reserved
-- earlier (kept in F.SLOT, so a duplicate delivery reuses it); the second brings the limiter's
-- answer in ARGV[8]: 'go' with the grant's time in ARGV[9], or the time to wait for with the slot
-- in ARGV[9]. The limiter counted the start at its grant, so that moment is the run's start time
-- (F.STARTED): the claim follows it within a round trip, and the starts the limiter counted are
-- the ones the records show.

-- The per-key value as text: a bound kwarg, else the message's input field (decoded only here,
-- and only for a task limited per key); '' when the message has none. A long value (a document)
-- names its limiter by digest.
local function rate_value(rec, name, env)
  local raw, value = rec[KWARG_PREFIX .. name], nil
  if raw then
    local ok, decoded = pcall(cjson.decode, raw)
    if ok then value = decoded end
  else
    local ok, decoded = pcall(cjson.decode, env)
    if ok and type(decoded) == 'table' and type(decoded.input) == 'table' then
      value = decoded.input[name]
    end
  end
  if value == nil or value == cjson.null then return '' end
  local text = type(value) == 'table' and cjson.encode(value) or tostring(value)
  if #text > 64 then text = redis.sha1hex(text) end
  return text
end

local function limiter_of(rec, env)
  local name = NAMESPACE .. SEG.RATE .. rec[F.TASK]
  local per = rec[F.RATE_KEY] or ''
  if per ~= '' then name = name .. ':' .. rate_value(rec, per, env) end
  return name
end

-- A pending signature that may not start yet: its message goes (back) to the delayed index.
-- Answers the due time it waits for, RATE_FIRST when the limiter must be asked, or nil (it may
-- start; `granted` then holds the limiter's grant time, if any).
local RATE_FIRST = -1
local granted = nil
local function hold_back(key, rec, env, now)
  local due = tonumber(rec[F.DUE] or '')
  local wait = nil
  if due and due > now then
    wait = due
  elseif rec[F.RATE] then
    local said = ARGV[8] or ''
    if said == '' then return RATE_FIRST end
    if said == 'go' then
      redis.call('HDEL', key, F.SLOT)
      granted = ARGV[9]
    else
      wait = tonumber(said)
      redis.call('HSET', key, F.SLOT, ARGV[9])
    end
  end
  if wait then schedule(key, env, wait, KIND.TASK) end
  return wait
end

local key = KEY[1]
local refused = guard()
if refused then return refused end
local all = redis.call('HGETALL', key)
if #all == 0 then return answer(V.MISSING) end
local rec, out = {}, {}
for i = 1, #all, 2 do
  local name = all[i]
  rec[name] = all[i + 1]
  if string.sub(name, 1, #KWARG_PREFIX) == KWARG_PREFIX or name == F.MODEL then
    out[#out + 1] = name
    out[#out + 1] = all[i + 1]
  end
end
local st = rec[F.STATUS]
if rec[F.MOVED] then return answer(V.MOVED, rec[F.MOVED]) end
if (rec[F.TASK] or '') ~= ARGV[7] then return answer(V.WRONG_TASK, rec[F.TASK] or '') end
local now, attempt = now_ms(), tonumber(ARGV[4])
if st == ST.ACTIVE then
  -- The same attempt while its holder's lease is live is a duplicate delivery. A later attempt
  -- (a retry) or an expired lease (the holder died) takes over.
  local lease = tonumber(redis.call('ZSCORE', LEASES, key) or '0')
  if attempt <= tonumber(rec[F.ATTEMPT] or '0') and now < lease then return answer(V.BUSY) end
elseif st ~= ST.PENDING then
  if (st == ST.SUSPENDED or st == ST.INTERRUPTED) and not rec[F.ENVELOPE] then
    redis.call('HSET', key, F.ENVELOPE, ARGV[6])
  end
  return answer(V.STATUS, st)
end
if st == ST.PENDING then
  local env = rec[F.ENVELOPE] or ARGV[6]
  local wait = hold_back(key, rec, env, now)
  if wait == RATE_FIRST then return answer(V.RATE, limiter_of(rec, env), rec[F.RATE], rec[F.SLOT]) end
  if wait then return answer(V.DEFERRED, ms_text(wait)) end
end
-- The claim is the delivery's receipt: the outbox entry is done with.
if rec[F.OUTBOX_ENTRY] then redis.call('ZREM', OUTBOX, outbox_entry(key, rec[F.OUTBOX_ENTRY])) end
local started = granted or now
if rec[F.ENVELOPE] then
  redis.call('HSET', key, F.STATUS, ST.ACTIVE, F.ATTEMPT, attempt, F.STARTED, started)
else  -- sent by something other than a transition (a test, a mock run): keep it for recovery
  redis.call('HSET', key, F.STATUS, ST.ACTIVE, F.ATTEMPT, attempt, F.STARTED, started,
    F.ENVELOPE, ARGV[6])
end
redis.call('ZADD', LEASES, now + tonumber(ARGV[5]), key)
keep_index(LEASES)
return answer_with(V.RUN, '', '', '', out)
