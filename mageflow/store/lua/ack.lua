-- Nothing but the prelude: it pushes the outbox entries in ARGV[3] (their messages went out to a
-- durable engine) past the accepted grace.
return answer(V.OK)
