-- Give slots of one concurrency key to holders while fewer than the limit are held.
-- KEYS[1]: zset holder -> lease expiry; ARGV: limit, lease (s), holders...
-- Returns the holders given a slot (one already holding keeps it).
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now))
local held = redis.call('ZCARD', KEYS[1])
local expiry = string.format('%.6f', now + lease)
local given = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
    given[#given + 1] = ARGV[i]
  elseif held < limit then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
    held = held + 1
    given[#given + 1] = ARGV[i]
  end
end
if held > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000) + 1000)
end
return given
