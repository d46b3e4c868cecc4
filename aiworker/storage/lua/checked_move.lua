-- Put a hash written under a temporary key in place, refusing (like RedisAI) a key that holds
-- anything but the same kind of value: a tensor, a model or a script. What is large (a tensor's
-- blob, a model's chunks, a script's source) travels as plain HSETs of the temporary key, never
-- as a Lua argument; the check and the move are one step, so a value written to the key since
-- the writer last looked at it (while a model was being verified) is never overwritten.
-- KEYS[1] the key, KEYS[2] the temporary key, KEYS[3] (optional) statistics the move resets (a
-- store makes a new model or script), all in one hash slot. ARGV[1] the kind: 'tensor', 'model'
-- or 'script'.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' then
  if kind ~= 'hash' or redis.call('HGET', KEYS[1], 'kind') ~= ARGV[1] then
    redis.call('DEL', KEYS[2])
    return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('ERR ' .. ARGV[1] .. ' data expired before it could be stored')
end
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('PERSIST', KEYS[1])
if KEYS[3] then
  redis.call('DEL', KEYS[3])
end
return 1
