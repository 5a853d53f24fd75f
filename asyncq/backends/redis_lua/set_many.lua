-- KEYS: records (on a Cluster, of one slot). ARGV: per record, its flagged value and ttl ms
-- (0: none). A final record is also PUBLISHed on the channel named like its key. One call
-- stores a whole batch: Redis runs one script instead of one per record.
for i = 1, #KEYS do
  local value, ttl = ARGV[2 * i - 1], ARGV[2 * i]
  if ttl == '0' then
    redis.call('SET', KEYS[i], value)
  else
    redis.call('SET', KEYS[i], value, 'PX', ttl)
  end
  if string.byte(value, 1) == 70 then redis.call('PUBLISH', KEYS[i], value) end  -- 70: "F"
end
return #KEYS
