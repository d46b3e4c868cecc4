-- What the jobs of one read need (model and script metadata, input tensors), with every stored
-- size checked before any tensor data leaves Redis.
-- KEYS: the keys to read, each once; when ARGV[5] is '1', KEYS[1] is the read's flag key first.
-- ARGV[1] max bytes of one tensor's data, ARGV[2] of one job's tensors, ARGV[3] of this whole
-- read; ARGV[4] max bytes of each of a tensor's kind, dtype and shape fields; ARGV[5] who fetches
-- the tensors' fields: '0' this script (returned with each verdict), '1' the caller, with plain
-- HMGETs in a MULTI after this script, the keys WATCHed since before it (a Lua string copy of a
-- large value costs Redis ten times a plain HGET). Then this script returns verdicts only, and
-- deletes the flag KEYS[1] (which the caller set) only when every tensor may be fetched: the
-- caller's RENAME of the flag onto a WATCHed key aborts the MULTI otherwise, and also when this
-- script did not run at all (NOSCRIPT).
-- Then per key read: what ('M' model metadata, 'S' script metadata, 'T' a tensor, 'K' its type
-- and kind only) and how many times each job uses it, as "job:count job:count" (tensors only; a
-- job naming one tensor 300 times counts it 300 times).
-- Returns one reply per key read: {'none'} missing; {'wrongtype'} not a hash; {'ok', fields...}
-- (a tensor's kind, dtype, shape, blob, values; only {'ok'} when the caller fetches them); for
-- tensors {'toobig', 'tensor'|'job', bytes} or {'badfield', 'kind'|'dtype'|'shape', bytes} (nothing
-- fetched), or {'deferred'} when this read already carries enough: the caller reads that job's
-- tensors again on their own.
local MODEL = {'kind', 'backend', 'device', 'tag', 'batchsize', 'minbatchsize',
               'minbatchtimeout', 'inputs', 'outputs', 'digest', 'size', 'chunks'}
local SCRIPT = {'kind', 'device', 'tag', 'entry_points', 'digest'}
local META = {'kind', 'dtype', 'shape'}  -- a tensor's small fields
local max_tensor, max_job, max_read = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_field, caller_fetches = tonumber(ARGV[4]), ARGV[5] == '1'
local first = caller_fetches and 2 or 1  -- KEYS[first] is the first key read

local replies, sizes, uses, job_bytes = {}, {}, {}, {}
local blocked = false  -- a tensor the caller must not fetch
-- A command on a key of another type fails: that is how its type is told. Any other failure
-- (the worker's ACL denies the command) is this script's error, never taken for a type.
local function wrongtype(reply)
  if type(reply) ~= 'table' or reply.err == nil then return false end
  if string.sub(reply.err, 1, 9) ~= 'WRONGTYPE' then error(reply) end
  return true
end
local function all_nil(values)
  for _, v in ipairs(values) do
    if v then return false end
  end
  return true
end
-- A hash with none of the fields asked for: missing, or somebody else's hash.
local function absent(key)
  return redis.call('EXISTS', key) == 0 and {'none'} or {'wrongtype'}
end
-- First pass: types and stored sizes; nothing large is fetched yet (one call per key tells its
-- type: see wrongtype).
for n = 1, #KEYS - first + 1 do
  local key, what = KEYS[first + n - 1], ARGV[4 + 2 * n]
  if what == 'K' then
    local kind = redis.call('TYPE', key)['ok']
    if kind == 'none' then
      replies[n] = {'none'}
    else
      replies[n] = {'ok', kind, kind == 'hash' and redis.call('HMGET', key, 'kind')[1] or false}
    end
  elseif what == 'M' or what == 'S' then
    local fields = redis.pcall('HMGET', key, unpack(what == 'M' and MODEL or SCRIPT))
    if wrongtype(fields) then
      replies[n] = {'wrongtype'}
    elseif all_nil(fields) then
      replies[n] = absent(key)
    else
      replies[n] = {'ok', unpack(fields)}
    end
  else
    local blob = redis.pcall('HSTRLEN', key, 'blob')
    if wrongtype(blob) then
      replies[n] = {'wrongtype'}
    else
      local size, small, long = blob + redis.call('HSTRLEN', key, 'values'), 0, nil
      for _, name in ipairs(META) do
        local length = redis.call('HSTRLEN', key, name)
        if length > max_field then long = {'badfield', name, length} end
        small = small + length
      end
      if long then
        blocked = true
        replies[n] = long
      elseif size > max_tensor then
        blocked = true
        replies[n] = {'toobig', 'tensor', size}
      elseif size + small == 0 and redis.call('EXISTS', key) == 0 then
        replies[n] = {'none'}
      else
        sizes[n] = size
        uses[n] = {}
        for job, count in string.gmatch(ARGV[5 + 2 * n], '(%d+):(%d+)') do
          uses[n][#uses[n] + 1] = job
          job_bytes[job] = (job_bytes[job] or 0) + size * tonumber(count)
        end
      end
    end
  end
end
-- Second pass: the tensors of jobs within their limits, until the read's budget is spent.
local read_bytes, deferred = 0, {}
for n = 1, #KEYS - first + 1 do
  if sizes[n] then
    local key, over, later = KEYS[first + n - 1], nil, false
    for _, job in ipairs(uses[n]) do
      if job_bytes[job] > max_job then over = job_bytes[job] end
      if deferred[job] then later = true end
    end
    if over then
      blocked = true
      replies[n] = {'toobig', 'job', over}
    elseif later or (read_bytes > 0 and read_bytes + sizes[n] > max_read) then
      blocked = true
      for _, job in ipairs(uses[n]) do deferred[job] = true end
      replies[n] = {'deferred'}
    else
      read_bytes = read_bytes + sizes[n]
      if caller_fetches then
        replies[n] = {'ok'}
      else
        local fields = redis.call('HMGET', key, 'kind', 'dtype', 'shape', 'blob', 'values')
        replies[n] = all_nil(fields) and absent(key) or {'ok', unpack(fields)}
      end
    end
  end
end
if caller_fetches and not blocked then
  redis.call('DEL', KEYS[1])
end
return replies
