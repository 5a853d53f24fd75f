-- ARGV: n, then per message: handle (priority digit first), eta ms (0 = now), record.
-- A handle already stored is skipped: a publish retried after its reply was lost (same
-- handles) stores nothing twice. Only a delayed message needs the clock or the delayed set.
local n = tonumber(ARGV[1])
local new = {}
if n == 1 then
  if redis.call('HSETNX', KEYS[13], ARGV[2], ARGV[4]) == 1 then new[1] = 0 end
else
  local handles = {}
  for i = 0, n - 1 do handles[i + 1] = ARGV[2 + 3 * i] end
  local stored = redis.call('HMGET', KEYS[13], unpack(handles))
  local fields = {}
  for i = 0, n - 1 do
    if not stored[i + 1] then
      new[#new + 1] = i
      fields[#fields + 1] = ARGV[2 + 3 * i]
      fields[#fields + 1] = ARGV[4 + 3 * i]
    end
  end
  if #fields > 0 then redis.call('HSET', KEYS[13], unpack(fields)) end
end
local now, before, soonest = nil, false, nil
local lists = {}
local fair_ready = false
for j = 1, #new do
  local i = new[j]
  local h = ARGV[2 + 3 * i]
  local eta = tonumber(ARGV[3 + 3 * i])
  if eta > 0 and now == nil then now = now_ms() end
  if eta > 0 and eta > now then
    if before == false then before = earliest(KEYS[11]) end
    redis.call('ZADD', KEYS[11], eta, h)
    if soonest == nil or eta < soonest then soonest = eta end
  elseif #h > 25 then
    push_ready(h, false)
    fair_ready = true
  else
    local p = string.sub(h, 1, 1)
    local l = lists[p]
    if l == nil then l = {}; lists[p] = l end
    l[#l + 1] = h
  end
end
local ready = fair_ready
for p, l in pairs(lists) do
  redis.call('RPUSH', KEYS[tonumber(p) + 1], unpack(l))
  ready = true
end
-- Wake an idle consumer for new ready work, or for a delayed message due before the one it sleeps for.
if ready or (soonest and (before == nil or soonest < before)) then wake() end
return #new
