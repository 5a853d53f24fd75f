local n = redis.call('LLEN', KEYS[16])
redis.call('DEL', KEYS[16])
return n
