-- Compare-and-set the rendezvous state of one run (RedisRendezvousBackend.set_state).
--
-- KEYS[1]      the state key  rdzv:{R}:state  (a STRING: "RDZV1 <token>\n<state bytes>")
-- KEYS[2..n]   the other keys of the run; their expiry is refreshed with the state's
-- ARGV[1]      the caller's token, or "" for "create only if no state exists"
-- ARGV[2]      a fresh random nonce (hex) naming this write; reused when the call is retried
-- ARGV[3]      the new state (bytes)
-- ARGV[4]      key expiry in milliseconds
-- ARGV[5]      the channel to PUBLISH the new token on
--
-- A token is "<version>-<nonce>": the version counts writes (for humans), the nonce makes
-- the token unique even if the key expired and was created again.
--
-- Returns {1, token} when the state was written (or this very write was already applied
-- by an earlier attempt of the same call), {0, stored value} when the caller's token did
-- not match (the client decodes state and token from the value, or reports it corrupt),
-- and {-1} when a token was given but no state exists.
local MAGIC = 'RDZV1 '

local current = redis.call('GET', KEYS[1])
local current_token = nil
if current then
  local newline = string.find(current, '\n', 1, true)
  if not newline or string.sub(current, 1, #MAGIC) ~= MAGIC then
    return {0, current}
  end
  current_token = string.sub(current, #MAGIC + 1, newline - 1)
end

local expected, nonce = ARGV[1], ARGV[2]
if current_token then
  local dash = string.find(current_token, '-', 1, true)
  if dash and string.sub(current_token, dash + 1) == nonce then
    return {1, current_token}
  end
end
if expected == '' then
  if current then
    return {0, current}
  end
elseif not current then
  return {-1}
elseif current_token ~= expected then
  return {0, current}
end

local version = 1
if current_token then
  version = (tonumber(string.match(current_token, '^(%d+)-')) or 0) + 1
end
local token = string.format('%d', version) .. '-' .. nonce
redis.call('SET', KEYS[1], MAGIC .. token .. '\n' .. ARGV[3], 'PX', ARGV[4])
for i = 2, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
redis.call('PUBLISH', ARGV[5], token)
return {1, token}
