-- Completes stream entries: per entry, acknowledge and delete it, write its outputs, count its
-- statistics, push its reply, append its stream records (a forward to another device queue, a
-- dead letter) - all of it, or none of it.
-- KEYS[1] the queue; KEYS[2..] every other key written (commands below refer to them by index).
-- ARGV[1] consumer group, ARGV[2] aiworker's key prefix, ARGV[3] reply TTL (seconds), ARGV[4]
-- 1 to check every command against the worker user's ACL first (0: the user may run anything on
-- any key, as the worker found out with ACL GETUSER), ARGV[5]
-- number of keys passed here instead of in KEYS (0; or, on a standalone Redis only, the keys
-- themselves, so that when the ACL denies one, this script's own check names it), those keys,
-- then the number of entries; then per entry:
--   id, reply key index (0: none), reply payload, n outputs, n stats, n records, n expects,
--   per output: key index, TTL (0: a job's output; > 0: the worker's own expiring key), number of
--     field/value items, the items;
--   per stats record: key index, duration, samples, calls, errors;
--   per record: stream key index, MAXLEN (0: none), number of field/value items, the items;
--   per expect: key index, digest (a model or script the job ran from cached metadata: it must
--     still be stored in that version, or the entry is refused as STALE and runs again).
-- Returns per entry {code, reply, stats, reason, key}: code 1 applied, 0 already completed by
-- another delivery (nothing written), -1 refused (nothing written, the entry stays pending:
-- reason 'WRONGTYPE' | 'NOPERM' | 'PREFIX' for output key `key`, or 'STALE' for a model or script
-- stored anew since the job read its version); reply 1 pushed, 0 none, -1
-- dropped (the reply key holds another type or is denied); stats 1 counted, 0 none, -1 counted
-- after repairing a statistics key that was not a hash of integers, -2 not counted (denied).
--
-- Everything that could fail is checked before the first write: Redis does not roll a script back,
-- so a command failing halfway would leave an entry acknowledged with its reply unwritten.
local group, prefix, ttl, check_acl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local K, i = KEYS, 6
if tonumber(ARGV[5]) > 0 then
  K = {KEYS[1]}
  for j = 1, tonumber(ARGV[5]) do K[j + 1] = ARGV[5 + j] end
  i = 6 + tonumber(ARGV[5])
end
local function take()
  local v = ARGV[i]
  i = i + 1
  return v
end
local function list(n)
  local out = {}
  for j = 1, n do out[j] = take() end
  return out
end

local entries = {}
for e = 1, tonumber(take()) do
  local entry = {id = take(), reply = tonumber(take()), payload = take()}
  local n_out, n_stats, n_rec = tonumber(take()), tonumber(take()), tonumber(take())
  local n_exp = tonumber(take())
  entry.outputs, entry.stats, entry.records, entry.expect = {}, {}, {}, {}
  for o = 1, n_out do
    local key, key_ttl, n = K[tonumber(take())], tonumber(take()), tonumber(take())
    entry.outputs[o] = {key = key, ttl = key_ttl, fields = list(n)}
  end
  for s = 1, n_stats do
    entry.stats[s] = {key = K[tonumber(take())], values = list(4)}
  end
  for r = 1, n_rec do
    local key, maxlen, n = K[tonumber(take())], tonumber(take()), tonumber(take())
    entry.records[r] = {key = key, maxlen = maxlen, fields = list(n)}
  end
  for x = 1, n_exp do
    entry.expect[x] = {key = K[tonumber(take())], digest = take()}
  end
  entries[e] = entry
end

-- The type each key will have when this script reaches it (earlier entries' writes count).
local will = {}
local function type_of(key)
  if will[key] == nil then
    local t = redis.call('TYPE', key)['ok']
    if t == 'hash' and redis.call('HMGET', key, 'kind')[1] == 'tensor' then t = 'tensor' end
    will[key] = t
  end
  return will[key]
end
local function allowed(...)
  return not check_acl or not redis.acl_check_cmd or redis.acl_check_cmd(...)
end
local COUNTERS = {'duration', 'samples', 'calls', 'errors'}
local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end
-- Count into a statistics hash. HINCRBY fails, writing nothing, on a key of another type or a
-- field that is not an integer: it is one of aiworker's own keys, so the script repairs it (drops
-- the key, or zeroes the field) and counts; failing would be worse. Returns 1 counted, -1 counted
-- after a repair, -2 not counted (the worker's ACL denies it).
local function count(rec)
  if not allowed('HINCRBY', rec.key, 'calls', '1') then return -2 end
  local result = 1
  for c, name in ipairs(COUNTERS) do
    local amount = tonumber(rec.values[c])
    if amount ~= 0 and failed(redis.pcall('HINCRBY', rec.key, name, amount)) then
      if not (allowed('DEL', rec.key) and allowed('HSET', rec.key, name, '0')) then return -2 end
      if redis.call('TYPE', rec.key)['ok'] ~= 'hash' then
        redis.call('DEL', rec.key)
      else
        redis.call('HSET', rec.key, name, '0')
      end
      redis.call('HINCRBY', rec.key, name, amount)
      result = -1
    end
  end
  will[rec.key] = 'hash'
  return result
end

if not allowed('XACK', KEYS[1], group, '0-1') or not allowed('XDEL', KEYS[1], '0-1') then
  return redis.error_reply('NOPERM this worker may not XACK and XDEL ' .. KEYS[1])
end
local results = {}
for e, entry in ipairs(entries) do
  local refused, key = nil, nil
  for _, exp in ipairs(entry.expect) do
    local fields = type_of(exp.key) == 'hash' and redis.call('HMGET', exp.key, 'kind', 'digest')
    if not (fields and (fields[1] == 'model' or fields[1] == 'script')
            and fields[2] == exp.digest) then
      refused, key = 'STALE', exp.key
      break
    end
  end
  -- ACL first: reading the type of a key the worker may not touch would fail the script
  for _, out in ipairs(entry.outputs) do
    if refused then break end
    if out.ttl == 0 and string.sub(out.key, 1, string.len(prefix)) == prefix then
      refused, key = 'PREFIX', out.key
    elseif not allowed('DEL', out.key) or not allowed('HSET', out.key, unpack(out.fields))
        or (out.ttl > 0 and not allowed('EXPIRE', out.key, out.ttl)) then
      refused, key = 'NOPERM', out.key
    elseif type_of(out.key) ~= 'none' and type_of(out.key) ~= 'tensor' then
      refused, key = 'WRONGTYPE', out.key
    end
  end
  for _, rec in ipairs(entry.records) do
    if refused then break end
    if not allowed('XADD', rec.key, '*', unpack(rec.fields)) then
      refused, key = 'NOPERM', rec.key
    elseif type_of(rec.key) ~= 'none' and type_of(rec.key) ~= 'stream' then
      refused, key = 'WRONGTYPE', rec.key
    end
  end
  if refused then
    results[e] = {-1, 0, 0, refused, key}
  elseif redis.call('XACK', KEYS[1], group, entry.id) == 0 then
    results[e] = {0, 0, 0, '', ''}  -- another delivery completed it
  else
    redis.call('XDEL', KEYS[1], entry.id)
    for _, out in ipairs(entry.outputs) do
      if type_of(out.key) ~= 'none' then redis.call('DEL', out.key) end  -- no stale 'values'
      redis.call('HSET', out.key, unpack(out.fields))
      if out.ttl > 0 then redis.call('EXPIRE', out.key, out.ttl) end
      will[out.key] = 'tensor'
    end
    local stats = 0
    for _, rec in ipairs(entry.stats) do
      local counted = count(rec)
      if stats == 0 or counted < stats then stats = counted end
    end
    for _, rec in ipairs(entry.records) do
      if rec.maxlen > 0 then
        redis.call('XADD', rec.key, 'MAXLEN', '~', rec.maxlen, '*', unpack(rec.fields))
      else
        redis.call('XADD', rec.key, '*', unpack(rec.fields))
      end
      will[rec.key] = 'stream'
    end
    local reply = 0
    if entry.reply > 0 then
      local rkey = K[entry.reply]
      local pushed = false
      if allowed('LPUSH', rkey, entry.payload) and allowed('EXPIRE', rkey, ttl) then
        -- LPUSH fails, writing nothing, on a key of another type: no reply then
        pushed = redis.pcall('LPUSH', rkey, entry.payload)
      end
      if pushed and not failed(pushed) then
        -- an expiry only on a list this push created: never on somebody else's list
        if pushed == 1 and ttl > 0 then redis.call('EXPIRE', rkey, ttl) end
        will[rkey] = 'list'
        reply = 1
      else
        reply = -1
      end
    end
    results[e] = {1, reply, stats, '', ''}
  end
end
return results
