-- Book ARGV[2] starts of one GCRA rate limit (asyncq/flow/gcra.py does the same sums).
-- KEYS[1]: the limit's theoretical arrival time; ARGV: interval (s), count, burst.
-- Returns each start's wait in seconds from now, as strings (Lua numbers lose their fraction).
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = (tonumber(ARGV[3]) - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local waits = {}
for i = 1, tonumber(ARGV[2]) do
  local start = math.max(now, tat - tolerance)
  tat = math.max(tat, start) + interval
  waits[i] = string.format('%.6f', start - now)
end
-- The key outlives its last booking by a second, then an idle limit takes no memory.
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return waits
