-- Replace a tensor in one round trip, refusing (like RedisAI) keys that hold anything else.
-- KEYS[1] the tensor key. ARGV: field, value, field, value, ... (the tensor hash's fields).
-- Three calls whatever the key holds: HGET fails on a key of another type (pcall tells it).
local WRONGTYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'
local kind = redis.pcall('HGET', KEYS[1], 'kind')
if type(kind) == 'table' and kind.err then
  return redis.error_reply(WRONGTYPE)
elseif kind == 'tensor' then
  redis.call('DEL', KEYS[1])  -- a stale 'values' field must go
elseif kind or redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply(WRONGTYPE)  -- a model, a script, somebody else's hash
end
return redis.call('HSET', KEYS[1], unpack(ARGV))
