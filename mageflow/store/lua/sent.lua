-- The actions a transition returned were all sent: empty the record's outbox.
redis.call('HDEL', KEYS[1], 'acts')
return 1
