-- ARGV: handle, delivery count, delay ms. Only the current lease holder may return a message.
local h = ARGV[1]
if redis.call('HGET', KEYS[14], h) ~= ARGV[2] or redis.call('ZREM', KEYS[12], h) == 0 then return 0 end
redis.call('HDEL', KEYS[17], h)
local delay = tonumber(ARGV[3])
if delay > 0 then
  local eta = now_ms() + delay
  local before = earliest(KEYS[11])
  redis.call('ZADD', KEYS[11], eta, h)
  if before == nil or eta < before then wake() end
else
  push_ready(h, true)
  wake()
end
return 1
