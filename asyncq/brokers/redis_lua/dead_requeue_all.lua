-- ARGV: new handles, one per dead letter to move from the head of the list. Returns how many moved.
if redis.call('HEXISTS', KEYS[13], ARGV[1]) == 1 then
  local done = 0
  for i = 1, #ARGV do done = done + redis.call('HEXISTS', KEYS[13], ARGV[i]) end
  return done
end
local n = 0
for i = 1, #ARGV do
  local e = redis.call('LPOP', KEYS[16])
  if not e then break end
  move(e, ARGV[i])
  n = n + 1
end
if n > 0 then wake() end
return n
