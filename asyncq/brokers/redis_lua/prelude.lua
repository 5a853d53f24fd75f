-- KEYS, in every script: 1..10 ready lists (priority 0..9), 11 delayed, 12 inflight, 13 msg,
-- 14 count, 15 wake, 16 dead, 17 owner (handle -> the claiming broker's owner id; see reclaim.lua).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ready_key(h)
  return KEYS[tonumber(string.sub(h, 1, 1)) + 1]
end
local function wake()
  if redis.call('LLEN', KEYS[15]) == 0 then redis.call('RPUSH', KEYS[15], 1) end
end
local function earliest(key)
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then return tonumber(head[2]) end
  return nil
end
