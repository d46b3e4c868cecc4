-- Put a tensor written under a temporary key in place, refusing (like RedisAI) keys that hold
-- anything else; large blobs travel as a plain HSET of the temporary key, not as a Lua argument.
-- KEYS[1] the tensor key, KEYS[2] the temporary key (same hash slot). No ARGV.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' then
  if kind ~= 'hash' or redis.call('HGET', KEYS[1], 'kind') ~= 'tensor' then
    redis.call('DEL', KEYS[2])
    return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('ERR tensor data expired before it could be stored')
end
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('PERSIST', KEYS[1])
return 1
