-- Dead-letter requeues (after prelude.lua, same KEYS): move(entry, handle) stores the entry's
-- record under a new handle, ready at once. Handles made for it start with "0": the priority-0
-- list, KEYS[1].
local function move(e, h)
  local c1 = string.find(e, ':', 1, true)
  local c2 = string.find(e, ':', c1 + 1, true)
  redis.call('HSET', KEYS[13], h, string.sub(e, c2 + 1 + tonumber(string.sub(e, c1 + 1, c2 - 1))))
  redis.call('RPUSH', KEYS[1], h)
end
