-- Slots of one concurrency key held now. KEYS[1]: zset holder -> lease expiry.
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], string.format('(%.6f', now), '+inf')
