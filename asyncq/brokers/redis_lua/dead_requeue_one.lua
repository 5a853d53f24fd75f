-- ARGV: the exact entry, a new handle. 1 if moved (or moved by an earlier try of this call).
if redis.call('HEXISTS', KEYS[13], ARGV[2]) == 1 then return 1 end
if redis.call('LREM', KEYS[16], 1, ARGV[1]) == 0 then return 0 end
move(ARGV[1], ARGV[2])
wake()
return 1
