-- Extend leases: KEYS are concurrency keys; ARGV: lease (s), then per key a count and its holders.
-- Only slots still held are extended (ZADD XX): an expired one may have gone to someone else.
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local lease = tonumber(ARGV[1])
local expiry = string.format('%.6f', now + lease)
local at = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  for i = 1, n do
    redis.call('ZADD', KEYS[k], 'XX', expiry, ARGV[at + i])
  end
  at = at + n + 1
  redis.call('PEXPIRE', KEYS[k], math.ceil(lease * 1000) + 1000)
end
return #KEYS
