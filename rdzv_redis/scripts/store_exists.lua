-- Which fields of a store hash exist (RedisStore.check / wait), in one round trip.
--
-- KEYS[1]      the store hash  rdzv:{R}:store
-- ARGV[1..n]   the keys
--
-- Returns one integer per key: 1 when it exists, 0 when not.
local flags = {}
for i = 1, #ARGV do
  flags[i] = redis.call('HEXISTS', KEYS[1], ARGV[i])
end
return flags
