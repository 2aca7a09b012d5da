-- Queue the waiting messages that are due (the scheduler of every client calls this). ARGV[4]
-- at most this many index entries per call, oldest due first. Each one taken is dropped from the
-- delayed index in this same step, so several processes releasing at once release it once:
--   a pending signature still waiting for that due time gets its message queued now (outbox
--     entry and a DELIVER action); its due time stays on the record, passed: its wait is served;
--   a suspended or interrupted one keeps its message parked on the record for resume;
--   anything else (it started, ended, was canceled or expired, or waits for another due time
--     now: a stale entry) is simply dropped.
-- Answers V.OK with the actions; details: the due time (ms) of the next entry ('' for none), the
-- Redis time (ms) the scheduler measures its sleep from, and '1' when more may be due already.
local now, most = now_ms(), tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, most)
if #due > 0 then redis.call('ZREM', DELAYED, unpack(due)) end
for _, entry in ipairs(due) do
  local key, stamp = string.match(entry, '^(.+)@(%d+)$')
  if key and not refusal(key) then
    local f = redis.call('HMGET', key, F.STATUS, F.DUE, F.ENVELOPE, F.KIND, F.TASK)
    if f[1] == ST.PENDING and f[2] == stamp and f[3] then queue_now(key, f[3], f[4], f[5]) end
  end
end
if #due > 0 then keep_delayed() end
local head = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
return answer(V.OK, head[2] or '', ms_text(now), #due >= most and '1' or '')
