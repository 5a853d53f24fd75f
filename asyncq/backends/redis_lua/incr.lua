-- KEYS: counter. ARGV: amount, ttl ms (0: no expiry).
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] == '0' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
