-- Append to a value of a store hash, creating it when absent (RedisStore.append).
--
-- KEYS[1]      the store hash  rdzv:{R}:store
-- ARGV[1]      the channel prefix: the key is PUBLISHed on ARGV[1] .. key
-- ARGV[2]      key expiry in milliseconds
-- ARGV[3]      the key
-- ARGV[4]      the bytes to append
--
-- Returns the length of the new value.
local current = redis.call('HGET', KEYS[1], ARGV[3]) or ''
local value = current .. ARGV[4]
redis.call('HSET', KEYS[1], ARGV[3], value)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[1] .. ARGV[3], ARGV[3])
return #value
