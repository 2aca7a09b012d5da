-- A task ended (after its last attempt). KEYS[1] signature.
-- ARGV[3] outcome ('done' | 'failed'), ARGV[4] result or error json, ARGV[5] the task's message json,
-- ARGV[6] '1' to keep the follow-ups in the record's outbox until they are sent.
-- Only the first finish of an active signature counts; duplicates return {'skip', status}.
local key = KEYS[1]
local st = redis.call('HGET', key, 'st')
if st ~= 'active' then return {'skip', st or 'missing'} end
complete(key, ARGV[3], ARGV[4], ARGV[5])
if ARGV[6] == '1' then keep_actions(key) end
table.insert(actions, 1, 'ok')
return actions
