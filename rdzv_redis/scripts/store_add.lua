-- Atomically add to an integer counter in a store hash (RedisStore.add).
--
-- KEYS[1]      the store hash  rdzv:{R}:store
-- ARGV[1]      the channel prefix: the key is PUBLISHed on ARGV[1] .. key
-- ARGV[2]      key expiry in milliseconds
-- ARGV[3]      the key
-- ARGV[4]      the amount (a decimal integer)
--
-- Returns the new value. Fails with "ERR hash value is not an integer" when the current
-- value is not a decimal integer (HINCRBY's own check); nothing is written then.
local value = redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[1] .. ARGV[3], ARGV[3])
return value
