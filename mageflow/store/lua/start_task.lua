-- A worker received a task message: decide whether this delivery runs it, atomically.
-- KEYS[3] signature. ARGV[4] attempt number, ARGV[5] lease (ms), ARGV[6] the message envelope,
-- ARGV[7] the task the message is for (a record of another task answers V.WRONG_TASK).
-- Answers V.RUN with the kwarg and model fields the run needs; V.BUSY (a live holder runs this
-- attempt); V.MISSING; or V.STATUS with the status that forbids running (a paused signature
-- keeps the message for resume).
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
