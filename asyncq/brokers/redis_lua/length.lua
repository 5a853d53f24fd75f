-- Expired leases count as waiting: their holder is gone and the next claim takes them back.
local n = redis.call('ZCARD', KEYS[11]) + redis.call('ZCOUNT', KEYS[12], '-inf', now_ms())
for k = 1, 10 do n = n + redis.call('LLEN', KEYS[k]) end
return n
