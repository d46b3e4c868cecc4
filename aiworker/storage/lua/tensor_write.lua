-- Replace a tensor in one round trip, refusing (like RedisAI) keys that hold anything else.
-- KEYS[1] the tensor key. ARGV: field, value, field, value, ... (the tensor hash's fields).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' then
  if kind ~= 'hash' or redis.call('HGET', KEYS[1], 'kind') ~= 'tensor' then
    return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
  end
  redis.call('DEL', KEYS[1])
end
return redis.call('HSET', KEYS[1], unpack(ARGV))
