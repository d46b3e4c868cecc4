-- Replace a tensor in one round trip, refusing (like RedisAI) keys that hold anything else.
-- KEYS[1] the tensor key. ARGV: field, value, field, value, ... (the tensor hash's fields).
-- Three calls whatever the key holds (four to replace a tensor): HGET fails on a key of
-- another type (pcall tells it).
local WRONGTYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'
local kind = redis.pcall('HGET', KEYS[1], 'kind')
if type(kind) == 'table' and kind.err then
  return redis.error_reply(WRONGTYPE)
elseif kind == 'tensor' then
  -- A full Redis (maxmemory) checks only a script's first write: an HSET goes before the DEL
  -- so that a replace is refused as a new tensor is, with Redis's OOM error.
  local refused = redis.pcall('HSET', KEYS[1], 'kind', 'tensor')
  if type(refused) == 'table' and refused.err then return refused end
  redis.call('DEL', KEYS[1])  -- a stale 'values' field must go
elseif kind or redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply(WRONGTYPE)  -- a model, a script, somebody else's hash
end
-- pcall: a refusal (OOM) is returned as Redis worded it, without the script's name and line
return redis.pcall('HSET', KEYS[1], unpack(ARGV))
