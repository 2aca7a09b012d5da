-- A rate limiter, asked by a worker between two calls of start_task.lua (the limiter is in no
-- shard: it counts the starts of a task across all of them). KEYS[1] the limiter; ARGV[1] count,
-- ARGV[2] period (ms), ARGV[3] the slot the signature reserved before, '' for none.
-- RL_LAST holds the last start slot reserved; fields 0..count-1 are a ring of the last `count`
-- start times, RL_POS the oldest of them. A signature reserves once: slot = max(last + interval,
-- now), so waiting work starts in reservation order and never early. Slots alone would let starts
-- bunch when some are released late, so the ring also holds starts to at most `count` in any
-- `period`. Answers {'go', now} (a grant: the start is counted now, and start_task.lua records
-- this moment as the run's start) or {time to wait for (ms), slot}.
-- Standalone: it has no prelude, and no other key.
local RL_LAST, RL_POS = 'tat', 'pos'
local limiter = KEYS[1]
local count, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms_text(ms) return string.format('%d', math.floor(ms)) end
if not count or count < 1 or not period then return {'go', ''} end
local interval = math.ceil(period / count)
local l = redis.call('HMGET', limiter, RL_LAST, RL_POS)
local last, pos = tonumber(l[1] or ''), tonumber(l[2] or '0')
local slot = tonumber(ARGV[3] or '')
if not slot then
  slot = now
  if last and last + interval > now then slot = last + interval end
  last = slot
  redis.call('HSET', limiter, RL_LAST, ms_text(last))
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
if wait then return {ms_text(wait), ms_text(slot)} end
redis.call('HSET', limiter, tostring(pos), ms_text(now), RL_POS, (pos + 1) % count)
return {'go', ms_text(now)}
