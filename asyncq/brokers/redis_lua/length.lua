-- Expired leases count as waiting: their holder is gone and the next claim takes them back.
local n = redis.call('ZCARD', KEYS[11]) + redis.call('ZCOUNT', KEYS[12], '-inf', now_ms())
for k = 1, 10 do n = n + redis.call('LLEN', KEYS[k]) end
for p in pairs(fair_priorities()) do
  for _, key in ipairs(redis.call('LRANGE', base .. 'ring:' .. p, 0, -1)) do
    n = n + redis.call('LLEN', base .. 'fair:' .. p .. ':' .. key)
  end
end
return n
