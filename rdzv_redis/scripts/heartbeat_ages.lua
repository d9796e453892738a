-- Ages of the last keep-alives of some nodes (RedisRendezvousBackend.heartbeat_ages).
--
-- KEYS[1]      rdzv:{R}:alive        ZSET node -> last keep-alive, server time in microseconds
-- KEYS[2]      rdzv:{R}:alive:until  ZSET node -> when the record lapses, server time in us
-- ARGV[1..n]   the nodes (at least one)
--
-- Returns one reply per node: the age in microseconds (a decimal string), or nil when the
-- node has no record or its record lapsed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = redis.call('ZMSCORE', KEYS[1], unpack(ARGV))
local lapse = redis.call('ZMSCORE', KEYS[2], unpack(ARGV))
local ages = {}
for i = 1, #ARGV do
  if last[i] and lapse[i] and tonumber(lapse[i]) >= now then
    ages[i] = string.format('%d', math.max(0, now - tonumber(last[i])))
  else
    ages[i] = false
  end
end
return ages
