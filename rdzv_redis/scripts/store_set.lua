-- Set fields of a store hash and announce them (RedisStore.set / multi_set).
--
-- KEYS[1]      the store hash  rdzv:{R}:store
-- ARGV[1]      the channel prefix: each set key is PUBLISHed on ARGV[1] .. key
-- ARGV[2]      key expiry in milliseconds
-- ARGV[3..n]   key, value, key, value, ...
--
-- Returns the number of keys set.
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[1] .. ARGV[i], ARGV[i])
end
return (#ARGV - 2) / 2
