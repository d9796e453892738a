-- c10d compare-and-set on a store hash (RedisStore.compare_set).
--
-- KEYS[1]      the store hash  rdzv:{R}:store
-- ARGV[1]      the channel prefix: the key is PUBLISHed on ARGV[1] .. key when it is set
-- ARGV[2]      key expiry in milliseconds
-- ARGV[3]      the key
-- ARGV[4]      the expected value ("" = only if the key is absent)
-- ARGV[5]      the desired value
--
-- Returns the desired value when it was set; otherwise the current value, or the expected
-- value when the key is absent and the expected value is not empty.
local current = redis.call('HGET', KEYS[1], ARGV[3])
if not current then
  if ARGV[4] ~= '' then
    return ARGV[4]
  end
elseif current ~= ARGV[4] then
  return current
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[1] .. ARGV[3], ARGV[3])
return ARGV[5]
