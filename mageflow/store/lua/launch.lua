-- Start a signature with a message (aio_run_no_wait). KEY[1] signature, ARGV[4] envelope json.
-- A pending one is queued in the outbox; a paused one keeps the message for resume (V.PARKED);
-- one started before answers V.LAUNCHED; else V.INVALID with its status, or V.MOVED, V.MISSING.
-- A root (no parent, no owner) is a workflow: it goes into the running workflows' index by its
-- creation time (finalize moves it to the ended index).
-- ARGV[5] a delay (ms) or ARGV[6] a due time (ms since the epoch), '' for none: the message waits
-- until then (one in the past is due at once), instead of any delay the signature was signed with.
local key = KEY[1]
local refused = guard()
if refused then return refused end
local f = redis.call('HMGET', key, F.STATUS, F.ENVELOPE, F.MOVED, F.PARENT, F.OWNER, F.CREATED)
if f[3] then return answer(V.MOVED, f[3]) end
if not f[1] then return answer(V.MISSING) end
if f[2] then return answer(V.LAUNCHED, f[1]) end
local function index_root()
  if (f[4] or '') == '' and (f[5] or '') == '' then
    redis.call('ZADD', WORKFLOWS, tonumber(f[6]) or now_ms(), key)
    keep_index(WORKFLOWS)
  end
end
-- The due time is taken from Redis's clock for a delay, so a client's clock does not shift it.
local function set_due()
  local due = nil
  if (ARGV[5] or '') ~= '' then due = now_ms() + tonumber(ARGV[5]) end
  if (ARGV[6] or '') ~= '' then due = tonumber(ARGV[6]) end
  if due then redis.call('HSET', key, F.DUE, ms_text(due)) end
end
if f[1] == ST.PENDING then
  index_root()
  set_due()
  deliver(key, ARGV[4])
  return answer(V.OK)
end
if f[1] == ST.SUSPENDED or f[1] == ST.INTERRUPTED then
  index_root()
  set_due()
  redis.call('HSET', key, F.ENVELOPE, ARGV[4])
  return answer(V.PARKED, f[1])
end
return answer(V.INVALID, f[1])
