-- KEYS, in every script: 1..10 ready lists (priority 0..9), 11 delayed, 12 inflight, 13 msg,
-- 14 count, 15 wake, 16 dead, 17 owner (handle -> the claiming broker's owner id; see reclaim.lua).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ready_key(h)
  return KEYS[tonumber(string.sub(h, 1, 1)) + 1]
end
-- Fair messages: handle "<p><24 hex><weight>:<key>" waits in the sub-list <base>fair:<p>:<key>;
-- <base>ring:<p> lists the keys of priority p whose sub-list is not empty, in turn order;
-- <base>credit:<p> (hash) holds what is left of the head key's turn; <base>fairp is the set of
-- priorities with a non-empty ring (one SMEMBERS tells a claim whether there is fair work).
-- These keys are built here, not passed: they share the queue's hash tag, so one slot.
local base = string.sub(KEYS[1], 1, -8)  -- KEYS[1] is "<prefix>:{q}:ready:0"
local function fair_parts(h)
  local rest = string.sub(h, 26)
  local colon = string.find(rest, ':', 1, true)
  return tonumber(string.sub(rest, 1, colon - 1)), string.sub(rest, colon + 1)
end
local function push_ready(h, front)
  local verb = 'RPUSH'
  if front then verb = 'LPUSH' end
  if #h <= 25 then
    redis.call(verb, ready_key(h), h)
    return
  end
  local p = string.sub(h, 1, 1)
  local _, key = fair_parts(h)
  if redis.call(verb, base .. 'fair:' .. p .. ':' .. key, h) == 1 then
    redis.call('RPUSH', base .. 'ring:' .. p, key)
    redis.call('SADD', base .. 'fairp', p)
  end
end
local function fair_priorities()
  local present = {}
  for _, p in ipairs(redis.call('SMEMBERS', base .. 'fairp')) do present[tonumber(p)] = true end
  return present
end
local function wake()
  if redis.call('LLEN', KEYS[15]) == 0 then redis.call('RPUSH', KEYS[15], 1) end
end
local function earliest(key)
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then return tonumber(head[2]) end
  return nil
end
