-- A worker received a task message: decide whether this delivery runs it, atomically.
-- KEYS[3] signature. ARGV[4] attempt number, ARGV[5] lease (ms), ARGV[6] the message envelope,
-- ARGV[7] the task the message is for (a record of another task answers V.WRONG_TASK).
-- Answers V.RUN with the kwarg and model fields the run needs; V.BUSY (a live holder runs this
-- attempt); V.MISSING; or V.STATUS with the status that forbids running (a paused signature
-- keeps the message for resume); V.DEFERRED with the due time (ms) when a pending signature may
-- not start yet (its delay is not served, or its rate limit's slot has not come): the message
-- then waits in the delayed index, and this delivery has nothing to do (it is not an attempt).

-- Rate limits. A limiter is a hash per task (or per value of its per-key field): RL_LAST holds
-- the last start slot it reserved; the fields 0..count-1 are a ring of the last `count` start
-- times, RL_POS the oldest of them. A pending signature reserves once (kept in F.SLOT, so a
-- duplicate delivery reuses it): slot = max(last + interval, now), so waiting work starts in
-- reservation order and never early. Slots alone would let starts bunch when some are released
-- late, so the ring also holds every start to at most `count` in any `period`.
local RL_LAST, RL_POS = 'tat', 'pos'

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

-- When a rate-limited pending signature may start: nil for now (the start is counted), or the
-- time it waits for (its slot, or the end of a full window).
local function rate_wait(key, rec, env, now)
  local count, period = string.match(rec[F.RATE], '^(%d+)/(%d+)$')
  count, period = tonumber(count), tonumber(period)
  if not count or count < 1 then return nil end
  local interval = math.ceil(period / count)
  local limiter = limiter_of(rec, env)
  local l = redis.call('HMGET', limiter, RL_LAST, RL_POS)
  local last, pos = tonumber(l[1] or ''), tonumber(l[2] or '0')
  local slot = tonumber(rec[F.SLOT] or '')
  if not slot then
    slot = now
    if last and last + interval > now then slot = last + interval end
    last = slot
    redis.call('HSET', limiter, RL_LAST, ms_text(last))
    redis.call('HSET', key, F.SLOT, ms_text(slot))
  end
  -- The limiter outlives its last reservation by a window, then has nothing left to say.
  redis.call('PEXPIRE', limiter, math.ceil(math.max((last or now) - now, 0) + period + interval))
  local wait = nil
  if slot > now then
    wait = slot
  else
    local oldest = tonumber(redis.call('HGET', limiter, tostring(pos)) or '')
    if oldest and oldest + period > now then wait = oldest + period end
  end
  if wait then return wait end
  redis.call('HSET', limiter, tostring(pos), ms_text(now), RL_POS, (pos + 1) % count)
  redis.call('HDEL', key, F.SLOT)
  return nil
end

-- A pending signature that may not start yet: its message goes (back) to the delayed index.
local function hold_back(key, rec, env, now)
  local due = tonumber(rec[F.DUE] or '')
  local wait = nil
  if due and due > now then
    wait = due
  elseif rec[F.RATE] then
    wait = rate_wait(key, rec, env, now)
  end
  if wait then schedule(key, env, wait, KIND.TASK) end
  return wait
end

local key = KEYS[3]
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
  local wait = hold_back(key, rec, rec[F.ENVELOPE] or ARGV[6], now)
  if wait then return answer(V.DEFERRED, ms_text(wait)) end
end
-- The claim is the delivery's receipt: the outbox entry is done with.
if rec[F.OUTBOX_ENTRY] then redis.call('ZREM', OUTBOX, outbox_entry(key, rec[F.OUTBOX_ENTRY])) end
if rec[F.ENVELOPE] then
  redis.call('HSET', key, F.STATUS, ST.ACTIVE, F.ATTEMPT, attempt, F.STARTED, now)
else  -- sent by something other than a transition (a test, a mock run): keep it for recovery
  redis.call('HSET', key, F.STATUS, ST.ACTIVE, F.ATTEMPT, attempt, F.STARTED, now, F.ENVELOPE, ARGV[6])
end
redis.call('ZADD', LEASES, now + tonumber(ARGV[5]), key)
keep_index(LEASES)
return answer_with(V.RUN, '', '', '', out)
