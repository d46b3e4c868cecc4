-- Delete a model or a script, and its statistics, only if the key holds one: the check and the
-- delete are one step, so a value written to the key since (a tensor set under the same name) is
-- never deleted by an AI.MODELDEL or AI.SCRIPTDEL that looked at the key before it was written.
-- KEYS[1] the key, KEYS[2] its statistics (one hash slot). ARGV[1] the kind: 'model' or 'script'.
-- Returns 1 when deleted, 0 when the key holds nothing; another kind of value is WRONGTYPE.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  return 0
end
if kind ~= 'hash' or redis.call('HGET', KEYS[1], 'kind') ~= ARGV[1] then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
