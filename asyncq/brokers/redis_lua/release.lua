-- ARGV: pairs handle, delivery count, newest first. Returns taken-but-never-yielded messages
-- to the head of their queue and takes back the delivery count the claim added.
local n = 0
for i = 1, #ARGV, 2 do
  local h = ARGV[i]
  if redis.call('HGET', KEYS[14], h) == ARGV[i + 1] and redis.call('ZREM', KEYS[12], h) == 1 then
    push_ready(h, true)
    redis.call('HDEL', KEYS[17], h)
    if ARGV[i + 1] == '1' then redis.call('HDEL', KEYS[14], h) else redis.call('HINCRBY', KEYS[14], h, -1) end
    n = n + 1
  end
end
if n > 0 then wake() end
return n
