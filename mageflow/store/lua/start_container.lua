-- Deliver a chain's or swarm's message: start it. KEY[1] container. ARGV[4] its message json
-- (input merged with its kwargs), ARGV[5] return value json ('' for none).
-- A paused container keeps its queued message for resume; V.STATUS with the status otherwise.
local key = KEY[1]
local refused = claim_container(key)
if refused then return refused end
container_start(key, ARGV[4], ARGV[5])
return answer(V.OK)
