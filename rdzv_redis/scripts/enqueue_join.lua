-- Add a node to the join queue of a run (RedisRendezvousBackend.enqueue_join).
--
-- KEYS[1]      rdzv:{R}:joins      ZSET node -> arrival number (the queue, in arrival order)
-- KEYS[2]      rdzv:{R}:joins:seq  STRING counter of arrivals
-- ARGV[1]      the node
-- ARGV[2]      key expiry in milliseconds
--
-- A node already queued keeps its place. Returns the node's 1-based position in the queue
-- (1 = at the head: that node admits the queue into the state).
local node = ARGV[1]
if not redis.call('ZSCORE', KEYS[1], node) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[2]), node)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return redis.call('ZRANK', KEYS[1], node) + 1
