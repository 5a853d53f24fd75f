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
for p in pairs(fair_priorities()) do
  local ring = base .. 'ring:' .. p
  for _, key in ipairs(redis.call('LRANGE', ring, 0, -1)) do
    if seen >= chunk then break end
    local sub = base .. 'fair:' .. p .. ':' .. key
    local hs = redis.call('LPOP', sub, chunk - seen)
    if hs then drop(hs) end
    if redis.call('LLEN', sub) == 0 then
      redis.call('LREM', ring, 0, key)
      redis.call('HDEL', base .. 'credit:' .. p, key)
    end
  end
  if redis.call('LLEN', ring) == 0 then redis.call('SREM', base .. 'fairp', p) end
end
if seen < chunk then
  local hs = redis.call('ZRANGE', KEYS[11], 0, chunk - seen - 1)
  if #hs > 0 then
    redis.call('ZREM', KEYS[11], unpack(hs))
    drop(hs)
  end
end
return {seen, dropped}
