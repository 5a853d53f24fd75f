-- ARGV: most to drop. Returns {handles seen, messages dropped}; the caller loops while full.
-- Live leases stay; expired ones (their holder is gone) are waiting messages and go too.
local chunk = tonumber(ARGV[1])
local seen, dropped = 0, 0
local function drop(hs)
  seen = seen + #hs
  dropped = dropped + redis.call('HDEL', KEYS[13], unpack(hs))
  redis.call('HDEL', KEYS[14], unpack(hs))
  redis.call('HDEL', KEYS[17], unpack(hs))
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[12], '-inf', now_ms(), 'LIMIT', 0, chunk)
if #expired > 0 then
  redis.call('ZREM', KEYS[12], unpack(expired))
  drop(expired)
end
for k = 1, 10 do
  if seen >= chunk then break end
  local hs = redis.call('LPOP', KEYS[k], chunk - seen)
  if hs then drop(hs) end
end
if seen < chunk then
  local hs = redis.call('ZRANGE', KEYS[11], 0, chunk - seen - 1)
  if #hs > 0 then
    redis.call('ZREM', KEYS[11], unpack(hs))
    drop(hs)
  end
end
return {seen, dropped}
