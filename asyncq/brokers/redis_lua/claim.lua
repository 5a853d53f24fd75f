-- ARGV: most to take, visibility ms, move limit, owner id.
-- Returns {handle, record, count, ...; ms until the next eta or lease deadline (-1: none)}.
local now = now_ms()
local limit = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', now, 'LIMIT', 0, limit)
if #due > 0 then
  for i = 1, #due do push_ready(due[i], false) end
  redis.call('ZREM', KEYS[11], unpack(due))
end
-- Leases whose holder stopped renewing (it died): back to the head of their queue, oldest first.
local expired = redis.call('ZRANGEBYSCORE', KEYS[12], '-inf', now, 'LIMIT', 0, limit)
if #expired > 0 then
  for i = #expired, 1, -1 do push_ready(expired[i], true) end
  redis.call('ZREM', KEYS[12], unpack(expired))
end
local want = tonumber(ARGV[1])
local taken = {}
-- Weighted round robin over the ring of priority p: the head key gives up to its weight (what
-- is left of its turn), then goes to the back, or leaves the ring once its sub-list is empty.
local function take_fair(p, want)
  local ring, credits = base .. 'ring:' .. p, base .. 'credit:' .. p
  while #taken < want do
    local key = redis.call('LINDEX', ring, 0)
    if not key then
      redis.call('SREM', base .. 'fairp', p)
      return
    end
    local sub = base .. 'fair:' .. p .. ':' .. key
    local left = tonumber(redis.call('HGET', credits, key) or '0')
    if left <= 0 then
      local head = redis.call('LINDEX', sub, 0)
      left = 1
      if head then left = fair_parts(head) end
    end
    local got = redis.call('LPOP', sub, math.min(left, want - #taken))
    if got then
      for i = 1, #got do taken[#taken + 1] = got[i] end
      left = left - #got
    end
    if redis.call('LLEN', sub) == 0 then
      redis.call('LPOP', ring)
      redis.call('HDEL', credits, key)
      if redis.call('LLEN', ring) == 0 then redis.call('SREM', base .. 'fairp', p) end
    elseif left <= 0 then
      redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
      redis.call('HDEL', credits, key)
    else
      redis.call('HSET', credits, key, left)
    end
  end
end
local fair = fair_priorities()
for k = 10, 1, -1 do
  local got = redis.call('LPOP', KEYS[k], want - #taken)
  if got then
    for i = 1, #got do taken[#taken + 1] = got[i] end
  end
  if #taken >= want then break end
  if fair[k - 1] then
    take_fair(tostring(k - 1), want)
    if #taken >= want then break end
  end
end
local out = {}
if #taken > 0 then
  local recs = redis.call('HMGET', KEYS[13], unpack(taken))
  local deadline = now + tonumber(ARGV[2])
  local lease = {}
  local owners = {}
  for i = 1, #taken do
    local h = taken[i]
    if recs[i] then
      out[#out + 1] = h
      out[#out + 1] = recs[i]
      out[#out + 1] = redis.call('HINCRBY', KEYS[14], h, 1)
      lease[#lease + 1] = deadline
      lease[#lease + 1] = h
      owners[#owners + 1] = h
      owners[#owners + 1] = ARGV[4]
    else
      -- Acked (or dead-lettered) by a holder whose lease had expired: already done.
      redis.call('HDEL', KEYS[14], h)
    end
  end
  if #lease > 0 then
    redis.call('ZADD', KEYS[12], unpack(lease))
    redis.call('HSET', KEYS[17], unpack(owners))
  end
end
local more = next(fair) ~= nil  -- fair work at the start (a stale yes only wakes a consumer for nothing)
for k = 1, 10 do
  if redis.call('LLEN', KEYS[k]) > 0 then more = true; break end
end
if more then
  wake()  -- pass the baton: another idle consumer takes what this one left
elseif #taken < want then
  redis.call('DEL', KEYS[15])  -- drained: tokens would only cause empty wake-ups
end
local hint = -1
local d = earliest(KEYS[11])
if d then hint = d - now end
local l = earliest(KEYS[12])
if l and (hint < 0 or l - now < hint) then hint = l - now end
if hint < -1 then hint = 0 end
out[#out + 1] = hint
return out
