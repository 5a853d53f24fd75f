-- ARGV: a dead owner's id. Its leases end now (the next claim takes the messages back, first
-- in their queue); a lease taken since by someone else has another owner and is left alone.
local n = 0
local flat = redis.call('HGETALL', KEYS[17])
for i = 1, #flat, 2 do
  local h = flat[i]
  if flat[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[17], h)
    if redis.call('ZSCORE', KEYS[12], h) then
      redis.call('ZADD', KEYS[12], 'XX', 0, h)
      n = n + 1
    end
  end
end
if n > 0 then wake() end
return n
