-- Move a pending leaf signature under another workflow's hash tag (it became a callback, step or
-- member of a new parent). KEY[1] old key, KEY[2] new key. ARGV[4] parent key or '', ARGV[5]
-- owner. Answers V.OK, or what the caller handles: V.MISSING, V.MOVED key, V.OWNED, V.TREE,
-- V.BUSY status (it started, or its message is queued).
-- Across shards (the new key is in another slot) the script gets only the old key, and the new
-- one as ARGV[6]: it leaves the forwarding note and answers V.OK with the record's fields, which
-- the caller writes at the new key in the MULTI that writes the new parent (Store.create_many).
local old, new = KEY[1], KEY[2] or ARGV[6]
local across = KEY[2] == nil
local refused = guard()
if refused then return refused end
local f = redis.call('HMGET', old, F.STATUS, F.MOVED, F.OWNER, F.KIND, F.SUCCESS, F.ERRORS,
  F.ENVELOPE, F.PARENT)
if f[2] then return answer(V.MOVED, f[2]) end
if not f[1] then return answer(V.MISSING) end
if (f[3] and f[3] ~= '') or (f[8] and f[8] ~= '') then return answer(V.OWNED) end
if f[1] ~= ST.PENDING or f[7] then return answer(V.BUSY, f[1]) end
if (f[4] or KIND.TASK) ~= KIND.TASK or #decode_list(f[5]) > 0 or #decode_list(f[6]) > 0 then
  return answer(V.TREE)
end
local fields = redis.call('HGETALL', old)
redis.call('DEL', old)
if not across then
  redis.call('HSET', new, unpack(fields))
  redis.call('HSET', new, F.PARENT, ARGV[4])
  -- A step's or member's owner is its parent and is not stored (see schema.Field.OWNER).
  if ARGV[5] ~= ARGV[4] then redis.call('HSET', new, F.OWNER, ARGV[5]) end
  expire(new, LIVE)
end
-- Leave a forwarding note so a key handed out earlier still resolves.
redis.call('HSET', old, F.MARK, RECORD_MARK, F.MOVED, new)
-- A waiter listening under the old key looks it up again and listens under the new one.
publish_done(old, NOTICE.MOVED)
redis.call('PEXPIRE', old, ttl_of(ENDED, KIND.TASK))
if across then return answer_with(V.OK, '', '', '', fields) end
return answer(V.OK)
