-- The part of a completion that complete.lua and complete_once.lua share (storage/lua.py puts
-- it where their `-- @include complete_parts` line is): reading the entries from ARGV, the checks
-- that must all pass before anything is written, and the writes.
-- ARGV[2] aiworker's key prefix, ARGV[3] reply TTL (seconds), ARGV[4] 1 to check every command
-- against the worker user's ACL first (0: the user may run anything on any key, as the worker
-- found out with ACL GETUSER), ARGV[5] number of keys passed here instead of in KEYS (0; or the
-- keys themselves, so that when the ACL denies one, the script's own check names it), those keys,
-- then the number of entries; then per entry:
--   id, reply key index (0: none), reply payload, splice (> 0: the payload is a forward notice,
--     and the id the entry's last stream record gets is written after that many of its bytes),
--     n outputs, n stats, n records, n expects,
--   per output: key index, TTL (0: a job's output; > 0: the worker's own expiring key), stage
--     key index (0: none), number of field/value items, the items; with a stage key, the output
--     was written there whole by a plain HSET in the same MULTI as this script (a large value
--     copied into Lua and out again costs Redis ten times the HSET), and is RENAMEd into place;
--     the caller deletes the stage after this script, so none is left whatever happens here;
--   per stats record: key index, the index of the model or script it counts for (0: none
--     given), duration, samples, calls, errors;
--   per record: stream key index, MAXLEN (0: none), number of field/value items, the items;
--   per expect: key index, digest (a model or script the job ran from cached metadata: it must
--     still be stored in that version, or the entry is refused as STALE and runs again).
-- Defines `entries`, `K` (the keys, by index), `type_of`, `allowed`, `refusal(entry)`,
-- `apply(e, entry)` and `count_tallies(results)` (called once every entry is applied).
-- @keys-in-argv 5
local prefix, ttl, check_acl = ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local K, i = KEYS, 6
if tonumber(ARGV[5]) > 0 then
  K = {KEYS[1]}
  for j = 1, tonumber(ARGV[5]) do K[j + 1] = ARGV[5 + j] end
  i = 6 + tonumber(ARGV[5])
end
-- The next n arguments: one unpack, not n calls (reading the entries was a fifth of a single
-- entry's completion).
local function take(n)
  i = i + n
  return unpack(ARGV, i - n, i - 1)
end
local function list(n)
  if n <= 64 then return {take(n)} end
  local out = {}  -- a long record (a dead letter's fields): no more results than Lua's stack holds
  for j = 1, n do out[j] = ARGV[i + j - 1] end
  i = i + n
  return out
end

local entries = {}
for e = 1, tonumber(take(1)) do
  local id, reply, payload, splice, n_out, n_stats, n_rec, n_exp = take(8)
  local entry = {id = id, reply = tonumber(reply), payload = payload, splice = tonumber(splice),
                 outputs = {}, stats = {}, records = {}, expect = {}}
  for o = 1, tonumber(n_out) do
    local key, key_ttl, stage, n = take(4)
    entry.outputs[o] = {key = K[tonumber(key)], ttl = tonumber(key_ttl), stage = K[tonumber(stage)],
                        fields = list(tonumber(n))}
  end
  for s = 1, tonumber(n_stats) do
    local key, owner = take(2)
    entry.stats[s] = {key = K[tonumber(key)], owner = K[tonumber(owner)], values = list(4)}
  end
  for r = 1, tonumber(n_rec) do
    local key, maxlen, n = take(3)
    entry.records[r] = {key = K[tonumber(key)], maxlen = tonumber(maxlen),
                        fields = list(tonumber(n))}
  end
  for x = 1, tonumber(n_exp) do
    local key, digest = take(2)
    entry.expect[x] = {key = K[tonumber(key)], digest = digest}
  end
  entries[e] = entry
end

local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end
-- A failed probe: a key of another type (WRONGTYPE), or one the worker's ACL denies.
local function wrongtype(reply)
  return string.sub(reply.err, 1, 9) == 'WRONGTYPE'
end
-- The type each key will have when this script reaches it (earlier entries' writes count):
-- 'tensor', 'hash' (any other hash), 'none', or Redis's name of another type; 'denied' when the
-- worker's ACL forbids asking (never taken for another type). Every call from Lua costs
-- microseconds, so a key that is likely a tensor (an output: serving loops reuse theirs) is asked
-- its kind first, which fails, writing nothing, on a key of another type.
local will = {}
local function type_of(key, likely_tensor)
  if will[key] == nil then
    local kind = likely_tensor and redis.pcall('HGET', key, 'kind')
    if kind and not failed(kind) then
      will[key] = kind == 'tensor' and 'tensor' or 'hash'
    elseif kind and not wrongtype(kind) then
      return 'denied'
    else
      local t = redis.pcall('TYPE', key)
      if failed(t) then return 'denied' end
      t = t['ok']
      if t == 'hash' and not likely_tensor then
        kind = redis.pcall('HGET', key, 'kind')
        if failed(kind) then return 'denied' end
        if kind == 'tensor' then t = 'tensor' end
      end
      will[key] = t
    end
  end
  return will[key]
end
local function allowed(...)
  return not check_acl or not redis.acl_check_cmd or redis.acl_check_cmd(...)
end
local COUNTERS = {'duration', 'samples', 'calls', 'errors'}
-- Count into a statistics hash (``values``: the four amounts). HINCRBY fails, writing nothing,
-- on a key of another type or a field that is not an integer: it is one of aiworker's own keys,
-- so the script repairs it (drops the key, or zeroes the field) and counts; failing would be
-- worse. Returns 1 counted, -1 counted after a repair, -2 not counted (the worker's ACL denies
-- it).
local function count(key, values)
  if not allowed('HINCRBY', key, 'calls', '1') then return -2 end
  local result = 1
  for c, name in ipairs(COUNTERS) do
    local amount = values[c]
    if amount ~= 0 and failed(redis.pcall('HINCRBY', key, name, amount)) then
      if not (allowed('DEL', key) and allowed('HSET', key, name, '0')) then return -2 end
      if redis.call('TYPE', key)['ok'] ~= 'hash' then
        redis.call('DEL', key)
      else
        redis.call('HSET', key, name, '0')
      end
      redis.call('HINCRBY', key, name, amount)
      result = -1
    end
  end
  will[key] = 'hash'
  return result
end

-- A model's or script's stored version, read once per call: the entries of a batch ran the same
-- model, and nothing this script writes is a model or a script (an output over one is refused).
local versions = {}
local function version_of(key)
  if versions[key] == nil then versions[key] = redis.pcall('HMGET', key, 'kind', 'digest') end
  return versions[key]
end
-- Whether the model or script a statistics hash counts for is gone (deleted, or its key given
-- another value, while the job ran): counting would make a hash that nothing deletes. A key the
-- worker may not read is counted for, as before.
local function owner_gone(key)
  local fields = version_of(key)
  if failed(fields) then return wrongtype(fields) end
  return fields[1] ~= 'model' and fields[1] ~= 'script'
end

-- Statistics are tallied per key as entries apply and counted once per key at the end
-- (``count_tallies``): the entries of a batch share their model's key, and four HINCRBYs per
-- entry would cost Redis more than the rest of a batched completion.
local tallies, tallied = {}, {}  -- key -> {amounts, entries, owner}; keys in order of first use
local function tally(e, rec)
  local t = tallies[rec.key]
  if t == nil then
    t = {amounts = {0, 0, 0, 0}, entries = {}, owner = rec.owner}
    tallies[rec.key] = t
    tallied[#tallied + 1] = rec.key
  end
  for c = 1, 4 do t.amounts[c] = t.amounts[c] + tonumber(rec.values[c]) end
  t.entries[#t.entries + 1] = e
end
-- Count every tally; each entry's row (results[e][3]) gets the worst of its keys' outcomes:
-- 1 counted, -1 counted after repairing its hash, -2 not counted (denied); a key whose model or
-- script is gone is not counted (0: none).
local function count_tallies(results)
  for _, key in ipairs(tallied) do
    local t = tallies[key]
    if not (t.owner and owner_gone(t.owner)) then
      local counted = count(key, t.amounts)
      for _, e in ipairs(t.entries) do
        local stats = results[e][3]
        if stats == 0 or counted < stats then results[e][3] = counted end
      end
    end
  end
end

-- Why an entry's writes may not happen (nil when they may), and the key: 'STALE' (a model or
-- script stored anew since the job read its version), 'PREFIX' | 'NOPERM' | 'WRONGTYPE' for an
-- output or a stream record, 'STAGE' for an output whose stage key holds no tensor.
local function refusal(entry)
  for _, exp in ipairs(entry.expect) do  -- the key as it is now (HMGET fails on another type)
    local fields = version_of(exp.key)
    if failed(fields) and not wrongtype(fields) then
      return 'NOPERM', exp.key
    elseif failed(fields) or not ((fields[1] == 'model' or fields[1] == 'script')
                                  and fields[2] == exp.digest) then
      return 'STALE', exp.key
    end
  end
  -- ACL first: reading the type of a key the worker may not touch would fail the script
  for _, out in ipairs(entry.outputs) do
    if out.ttl == 0 and string.sub(out.key, 1, string.len(prefix)) == prefix then
      return 'PREFIX', out.key
    elseif not allowed('DEL', out.key)
        or (out.stage and not allowed('RENAME', out.stage, out.key))
        or (not out.stage and not allowed('HSET', out.key, unpack(out.fields)))
        or (out.ttl > 0 and not allowed('EXPIRE', out.key, out.ttl)) then
      return 'NOPERM', out.key
    end
    local kind = type_of(out.key, true)
    if kind == 'denied' then
      return 'NOPERM', out.key
    elseif kind ~= 'none' and kind ~= 'tensor' then
      return 'WRONGTYPE', out.key
    elseif out.stage and type_of(out.stage, true) ~= 'tensor' then
      return 'STAGE', out.key
    end
  end
  for _, rec in ipairs(entry.records) do
    local kind = allowed('XADD', rec.key, '*', unpack(rec.fields)) and type_of(rec.key)
    if not kind or kind == 'denied' then
      return 'NOPERM', rec.key
    elseif kind ~= 'none' and kind ~= 'stream' then
      return 'WRONGTYPE', rec.key
    end
  end
  return nil, nil
end

-- A forward notice with the id of the entry it announces written in.
local function spliced(entry, id)
  return string.sub(entry.payload, 1, entry.splice) .. id .. string.sub(entry.payload, entry.splice + 1)
end

-- Entry ``e``'s stream records (a forward, a dead letter), the one write every check above cannot
-- clear: a stream whose last id is the largest there is (anyone who may XADD can make one) takes
-- no more. Returns the id the last one got ('' when none), or nil and the stream that refused.
local function add_records(entry)
  local added = ''
  for _, rec in ipairs(entry.records) do
    if rec.maxlen > 0 then
      added = redis.pcall('XADD', rec.key, 'MAXLEN', '~', rec.maxlen, '*', unpack(rec.fields))
    else
      added = redis.pcall('XADD', rec.key, '*', unpack(rec.fields))
    end
    if failed(added) then return nil, rec.key end
    will[rec.key] = 'stream'
  end
  return added
end

-- Entry ``e``'s other writes, once ``add_records`` added its stream records (``added``: the id the
-- last one got): outputs, then its reply (RPUSH: a requester's BLPOP reads a forward notice before
-- the reply that follows it); its statistics are tallied, counted by ``count_tallies`` once every
-- entry is applied (the script is atomic: nobody sees the order). Returns reply, added: reply 1
-- pushed, 0 none, -1 dropped (the reply key holds another type or is denied).
local function apply(e, entry, added)
  for _, out in ipairs(entry.outputs) do
    if out.stage then  -- replaces the key whole: no stale 'values'
      redis.call('RENAME', out.stage, out.key)
      will[out.stage] = 'none'
    else
      if type_of(out.key) ~= 'none' then redis.call('DEL', out.key) end  -- no stale 'values'
      redis.call('HSET', out.key, unpack(out.fields))
    end
    if out.ttl > 0 then redis.call('EXPIRE', out.key, out.ttl) end
    will[out.key] = 'tensor'
  end
  for _, rec in ipairs(entry.stats) do tally(e, rec) end
  if entry.splice > 0 then
    entry.payload = spliced(entry, added)
  end
  local reply = 0
  if entry.reply > 0 then
    local rkey = K[entry.reply]
    local pushed = false
    if allowed('RPUSH', rkey, entry.payload) and allowed('EXPIRE', rkey, ttl) then
      -- RPUSH fails, writing nothing, on a key of another type: no reply then
      pushed = redis.pcall('RPUSH', rkey, entry.payload)
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
  return reply, added
end
