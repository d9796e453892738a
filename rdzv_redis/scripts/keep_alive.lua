-- Record a keep-alive of one node (RedisRendezvousBackend.keep_alive).
--
-- KEYS[1]      rdzv:{R}:alive        ZSET node -> last keep-alive, server time in microseconds
-- KEYS[2]      rdzv:{R}:alive:until  ZSET node -> when the record lapses, server time in us
-- KEYS[3..n]   the other keys of the run; their expiry is refreshed too
-- ARGV[1]      the node
-- ARGV[2]      how long the record stays valid, in microseconds
-- ARGV[3]      key expiry in milliseconds
--
-- Times come from the Redis server's clock (TIME), so clients' clocks may disagree.
-- A few lapsed records are pruned on the way. Returns the server time in microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local node = ARGV[1]

redis.call('ZADD', KEYS[1], string.format('%d', now), node)
redis.call('ZADD', KEYS[2], string.format('%d', now + tonumber(ARGV[2])), node)

local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', now),
  'LIMIT', 0, 16)
if #lapsed > 0 then
  redis.call('ZREM', KEYS[1], unpack(lapsed))
  redis.call('ZREM', KEYS[2], unpack(lapsed))
end
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
return now
