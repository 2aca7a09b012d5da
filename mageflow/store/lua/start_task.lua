-- A worker received a task message. Decide whether to run it, atomically.
-- KEYS[1] signature. ARGV[3] attempt number, ARGV[4] lease (ms), ARGV[5] the message envelope json
-- (kept on the signature, so resume can send the same message again).
-- Returns {'run', <kwarg and model fields...>}, {'replay', <outbox json>} or {<reason>}: 'busy' (a live worker holds it), 'missing', or the
-- status that forbids running (done, failed, canceled, suspended, interrupted).
local key = KEYS[1]
local st = redis.call('HGET', key, 'st')
if not st then return {'missing'} end
local now = now_ms()
local attempt = tonumber(ARGV[3])
if st == 'active' then
  local cur = redis.call('HMGET', key, 'att', 'lease')
  -- Same attempt while its holder's lease is live: a duplicate delivery. A later attempt (retry) or
  -- an expired lease (the holder died) may take over.
  if attempt <= tonumber(cur[1] or '0') and now < tonumber(cur[2] or '0') then return {'busy'} end
elseif st ~= 'pending' then
  -- Paused: park the message for resume.
  if st == 'suspended' or st == 'interrupted' then redis.call('HSET', key, 'env', ARGV[5]) end
  -- Finished, but what its finish asked for may not have gone out (the worker died): again.
  local acts = redis.call('HGET', key, 'acts')
  if acts then return {'replay', acts} end
  return {st}
end
redis.call('HSET', key, 'st', 'active', 'att', attempt, 'lease', now + tonumber(ARGV[4]),
  'ts_s', now, 'env', ARGV[5])
keep_alive(key)
-- What the run needs: its bound kwargs and any model override (not the whole record).
local out = {'run'}
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local name = all[i]
  if string.sub(name, 1, 2) == 'k:' or name == 'model' then
    out[#out + 1] = name
    out[#out + 1] = all[i + 1]
  end
end
return out
