-- The membership operations of one run, applied atomically by the server
-- (RedisRendezvousBackend's AtomicMembership; the spec is rdzv_core/rounds.py).
--
-- KEYS[1]      rdzv:{R}:round              HASH  inc, ver, round, complete, closed, world,
--                                                 deadline (server time, us; absent = none), seq,
--                                                 boot (rank 0's bootstrap; absent = none),
--                                                 min, max, lcall (us): the spec of the last
--                                                 operation that carried one (for status)
-- KEYS[2]      rdzv:{R}:round:participants ZSET  node -> rank (0 until the round completes)
-- KEYS[3]      rdzv:{R}:round:wait         ZSET  node -> arrival number (the wait list)
-- KEYS[4]      rdzv:{R}:round:redundant    ZSET  node -> arrival number (the redundancy list)
-- KEYS[5]      rdzv:{R}:alive              ZSET  node -> last keep-alive (server time, us)
-- KEYS[6]      rdzv:{R}:alive:until        ZSET  node -> when its record lapses (us)
-- KEYS[7..n]   the other keys of the run; every write refreshes their expiry too
-- ARGV[1]      the operation: join | leave | complete | keep_alive | standing | close | bootstrap
-- ARGV[2]      the node
-- ARGV[3..6]   min_nodes, max_nodes, last call (us), dead-node timeout (us)
-- ARGV[7]      key expiry in milliseconds
-- ARGV[8]      the channel on which a new "<inc>:<ver>" is PUBLISHed
-- ARGV[9]      a fresh random hex id: the incarnation, if this call creates the record
-- ARGV[10]     complete, bootstrap: the round; keep_alive: "1" to sweep lapsed nodes
-- ARGV[11]     at most this many lapsed records are looked at by one sweep (SWEEP_LIMIT)
-- ARGV[12]     bootstrap: the value rank 0 publishes
-- ARGV[13]     key expiry in milliseconds once the rendezvous is closed (closed_ttl)
-- ARGV[14]     "1" when ARGV[3..6] are the caller's spec (stored for status), else ""
--
-- The version is bumped (and announced) only when the summary changes: round, complete,
-- closed, last call running, wait list non-empty, participants missing, bootstrap published.
-- A burst of joins
-- therefore announces O(1) changes.
--
-- Returns the caller's standing: {inc, ver, round, complete, closed, role, rank (-1: none),
-- world, participants, waiting, redundant, deadline_in_us (-1: none), left_redundancy,
-- bootstrap ('' : none), removed node...}; {"corrupt", field} when the round hash holds a non-number (or lacks
-- "inc"). leave, complete, keep_alive, standing and bootstrap never create the record: without one they
-- answer the empty standing (keep_alive still writes the caller's keep-alive record).
local H, P, W, R, A, U = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local op, node = ARGV[1], ARGV[2]
local min_nodes, max_nodes = tonumber(ARGV[3]), tonumber(ARGV[4])
local last_call, dead_after = tonumber(ARGV[5]), tonumber(ARGV[6])
local SWEEP_LIMIT, CHUNK = tonumber(ARGV[11]) or 1000, 1000

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function int(x) return string.format('%d', x) end

local FIELDS = {'inc', 'ver', 'round', 'complete', 'closed', 'world', 'deadline', 'seq', 'boot'}

local function load()
  local f = redis.call('HMGET', H, unpack(FIELDS))
  if not f[1] then
    for i = 2, #FIELDS do
      if f[i] then return {corrupt = 'inc'} end  -- fields without an incarnation: not rdzv's
    end
    return nil
  end
  local rec = {inc = f[1], complete = f[4] == '1', closed = f[5] == '1', boot = f[9] or nil,
    stored = {deadline = f[7] ~= false, boot = f[9] ~= false}}
  for _, i in ipairs({2, 3, 6, 8}) do
    rec[FIELDS[i]] = tonumber(f[i])
    if not rec[FIELDS[i]] then return {corrupt = FIELDS[i]} end
  end
  if f[7] then
    rec.deadline = tonumber(f[7])
    if not rec.deadline then return {corrupt = 'deadline'} end
  end
  return rec
end

local function create()
  return {inc = ARGV[9], ver = 1, round = 0, complete = false, closed = false, world = 0, seq = 0, new = true, stored = {}}
end

-- Refresh the expiry of every key of the run (absent keys are skipped by PEXPIRE): key_ttl,
-- or closed_ttl once the rendezvous is closed (then a finished run id becomes free again).
local function touch(rec)
  local ttl = (rec and rec.closed and ARGV[13] ~= '') and ARGV[13] or ARGV[7]
  for i = 1, #KEYS do
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end

-- One HSET of every field; the optional ones (deadline, boot) go with it when set, and are
-- deleted only when the record held them (no HDEL per operation).
local function save(rec)
  local fields = {'inc', rec.inc, 'ver', int(rec.ver), 'round', int(rec.round),
    'complete', rec.complete and '1' or '0', 'closed', rec.closed and '1' or '0',
    'world', int(rec.world), 'seq', int(rec.seq)}
  if ARGV[14] == '1' then
    for _, f in ipairs({'min', ARGV[3], 'max', ARGV[4], 'lcall', ARGV[5]}) do fields[#fields + 1] = f end
  end
  local gone = {}
  for _, opt in ipairs({{'deadline', rec.deadline and int(rec.deadline)}, {'boot', rec.boot}}) do
    if opt[2] then
      fields[#fields + 1] = opt[1]
      fields[#fields + 1] = opt[2]
    elseif rec.stored[opt[1]] then
      gone[#gone + 1] = opt[1]
    end
  end
  redis.call('HSET', H, unpack(fields))
  if #gone > 0 then redis.call('HDEL', H, unpack(gone)) end
  touch(rec)
end

local function summary(rec)
  local missing = rec.complete and redis.call('ZCARD', P) < rec.world
  return table.concat({int(rec.round), tostring(rec.complete), tostring(rec.closed),
    tostring(rec.deadline ~= nil), tostring(redis.call('ZCARD', W) > 0), tostring(missing),
    tostring(rec.boot ~= nil)}, ',')
end

-- Save; bump the version when the summary changed since `before` (also in the call that
-- created the record, as rounds.py does), and announce a bumped or new record.
local function commit(rec, before)
  local bumped = summary(rec) ~= before
  if bumped then rec.ver = rec.ver + 1 end
  save(rec)
  if bumped or rec.new then
    redis.call('PUBLISH', ARGV[8], rec.inc .. ':' .. int(rec.ver))
  end
end

local function beat(who)
  redis.call('ZADD', A, int(now), who)
  redis.call('ZADD', U, int(now + dead_after), who)
end

local function mark_complete(rec)
  local members = redis.call('ZRANGE', P, 0, -1)  -- equal scores: sorted by key
  for i = 1, #members, CHUNK do
    local args = {}
    for j = i, math.min(i + CHUNK - 1, #members) do
      args[#args + 1] = j - 1
      args[#args + 1] = members[j]
    end
    redis.call('ZADD', P, unpack(args))
  end
  rec.complete, rec.deadline, rec.world, rec.boot = true, nil, #members, nil
  redis.call('DEL', W)  -- its entries predate the round and did not come (see rounds.py)
end

local function add_participant(rec, who)
  redis.call('ZADD', P, 0, who)
  local count = redis.call('ZCARD', P)
  if count == min_nodes then rec.deadline = now + last_call end
  if count >= max_nodes then mark_complete(rec) end
end

local function append(rec, key, who)
  rec.seq = rec.seq + 1
  redis.call('ZADD', key, rec.seq, who)
end

local function remove(rec, who)
  if redis.call('ZREM', P, who) == 1 then
    local count = redis.call('ZCARD', P)
    if rec.complete then
      if count == 0 then
        rec.round, rec.complete, rec.world, rec.deadline, rec.boot = rec.round + 1, false, 0, nil, nil
      end
    elseif count < min_nodes then
      rec.deadline = nil
    end
  end
  redis.call('ZREM', W, who)
  redis.call('ZREM', R, who)
end

local function standing(rec, left, removed)
  if not rec then
    return {'', 0, 0, 0, 0, 'none', -1, 0, 0, 0, 0, -1, 0, ''}
  end
  local role, rank = 'none', -1
  local score = redis.call('ZSCORE', P, node)
  if score then
    role = 'participant'
    if rec.complete then rank = tonumber(score) end
  elseif redis.call('ZSCORE', W, node) then
    role = 'waiting'
  elseif redis.call('ZSCORE', R, node) then
    role = 'redundant'
  end
  local deadline_in = -1
  if rec.deadline then deadline_in = math.max(0, rec.deadline - now) end
  local reply = {rec.inc, rec.ver, rec.round, rec.complete and 1 or 0, rec.closed and 1 or 0, role, rank,
    rec.world, redis.call('ZCARD', P), redis.call('ZCARD', W), redis.call('ZCARD', R), deadline_in,
    left and 1 or 0, rec.complete and rec.boot or ''}
  for _, who in ipairs(removed or {}) do reply[#reply + 1] = who end
  return reply
end

local rec = load()
if rec and rec.corrupt then
  return {'corrupt', rec.corrupt}
end

if op == 'standing' then
  return standing(rec)
end

if op == 'keep_alive' then
  beat(node)
  if not rec then
    touch()  -- the keep-alive record must expire with the run
    return standing(nil)
  end
  local before, removed = summary(rec), {}
  if ARGV[10] == '1' then
    local lapsed = redis.call('ZRANGEBYSCORE', U, '-inf', '(' .. int(now), 'LIMIT', 0, SWEEP_LIMIT)
    for _, who in ipairs(lapsed) do
      if who ~= node then  -- never the caller (its record was just renewed anyway)
        redis.call('ZREM', A, who)
        redis.call('ZREM', U, who)
        if redis.call('ZSCORE', P, who) or redis.call('ZSCORE', W, who) or redis.call('ZSCORE', R, who) then
          remove(rec, who)
          removed[#removed + 1] = who
        end
      end
    end
  end
  commit(rec, before)
  return standing(rec, false, removed)
end

if op == 'bootstrap' then
  if not rec then return standing(nil) end
  local before = summary(rec)
  if rec.round == tonumber(ARGV[10]) and rec.complete and not rec.boot
      and tonumber(redis.call('ZSCORE', P, node)) == 0 then
    rec.boot = ARGV[12]
  end
  commit(rec, before)
  return standing(rec)
end

if op == 'leave' or op == 'complete' then
  if not rec then return standing(nil) end
  local before = summary(rec)
  if op == 'leave' then
    remove(rec, node)
  elseif rec.round == tonumber(ARGV[10]) and not rec.complete and not rec.closed and rec.deadline
      and now >= rec.deadline and redis.call('ZCARD', P) >= min_nodes then
    mark_complete(rec)
  end
  commit(rec, before)
  return standing(rec)
end

rec = rec or create()
local before = summary(rec)

if op == 'close' then
  rec.closed = true
  commit(rec, before)
  return standing(rec)
end

if op ~= 'join' then
  return redis.error_reply('ERR unknown round operation ' .. op)
end

beat(node)
if rec.closed then
  commit(rec, before)
  return standing(rec)
end
local left = false
local count = redis.call('ZCARD', P)
if redis.call('ZSCORE', R, node) then
  if count >= max_nodes then
    commit(rec, before)
    return standing(rec)
  end
  redis.call('ZREM', R, node)
  left = true
end
if redis.call('ZSCORE', P, node) then
  commit(rec, before)
  return standing(rec, left)
end
if redis.call('ZSCORE', W, node) then
  if rec.complete and count < max_nodes then
    commit(rec, before)
    return standing(rec, left)
  end
  redis.call('ZREM', W, node)  -- re-opened: join it; or full: move to the redundancy list
end
if not rec.complete then
  add_participant(rec, node)
elseif count < max_nodes then
  append(rec, W, node)
else
  append(rec, R, node)
end
commit(rec, before)
return standing(rec, left)
