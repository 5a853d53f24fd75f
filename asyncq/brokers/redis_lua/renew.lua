-- ARGV: visibility ms, then pairs: handle, delivery count. Returns the handles no longer held.
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local h = ARGV[i]
  if redis.call('HGET', KEYS[14], h) == ARGV[i + 1] and redis.call('ZSCORE', KEYS[12], h) then
    redis.call('ZADD', KEYS[12], 'XX', deadline, h)
  else
    lost[#lost + 1] = h
  end
end
return lost
