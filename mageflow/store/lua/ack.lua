-- Nothing but the prelude: it drops the outbox entries in ARGV[3] (their messages went out).
return answer(V.OK)
