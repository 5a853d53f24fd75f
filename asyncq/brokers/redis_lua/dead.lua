-- ARGV: handle, reason, keep (0 = all). Unconditional, like ack.
local h = ARGV[1]
local rec = redis.call('HGET', KEYS[13], h)
if not rec then return 0 end
local stamp = string.format('%d', now_ms())
redis.call('RPUSH', KEYS[16], stamp .. ':' .. string.len(ARGV[2]) .. ':' .. ARGV[2] .. rec)
local keep = tonumber(ARGV[3])
if keep > 0 then redis.call('LTRIM', KEYS[16], -keep, -1) end
redis.call('HDEL', KEYS[13], h)
redis.call('ZREM', KEYS[12], h)
redis.call('HDEL', KEYS[14], h)
redis.call('HDEL', KEYS[17], h)
return 1
