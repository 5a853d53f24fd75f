-- ARGV: handles. Unconditional: once any holder acks, the message is done.
redis.call('ZREM', KEYS[12], unpack(ARGV))
redis.call('HDEL', KEYS[13], unpack(ARGV))
redis.call('HDEL', KEYS[14], unpack(ARGV))
redis.call('HDEL', KEYS[17], unpack(ARGV))
return #ARGV
