-- Tenants with waiting fair messages (counted once per priority they wait at).
local n = 0
for p in pairs(fair_priorities()) do n = n + redis.call('LLEN', base .. 'ring:' .. p) end
return n
