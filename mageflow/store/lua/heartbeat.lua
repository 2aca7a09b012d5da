-- Keep running tasks claimed: extend the lease (and TTLs) of each KEY[1..] that is still
-- active. ARGV[4] lease (ms). Answers V.OK and, in order, the status of each key (V.MISSING for
-- one that is gone), so the caller can stop local runs that were canceled or interrupted.
local until_ms = now_ms() + tonumber(ARGV[4])
local statuses = {}
for i = 1, #KEY do
  local key = KEY[i]
  -- One key that is not a record must not cost the other runs their leases.
  local st = refusal(key) or redis.call('HGET', key, F.STATUS)
  if st == ST.ACTIVE then
    redis.call('ZADD', LEASES, until_ms, key)
    keep_alive(key)
  end
  statuses[#statuses + 1] = st or V.MISSING
end
keep_index(LEASES)
keep_index(WORKFLOWS)  -- a long task keeps its workflow listed while it runs
return answer_with(V.OK, '', '', '', statuses)
