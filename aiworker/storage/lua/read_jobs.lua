-- What the jobs of one read need (model and script metadata, input tensors), with every stored
-- size checked before any tensor data leaves Redis.
-- KEYS: the keys to read, each once; when ARGV[7] is '1', KEYS[1] is the read's flag key first.
-- ARGV[1] max bytes of one tensor's data, ARGV[2] of one job's tensors, ARGV[3] of this whole
-- read; ARGV[4] max bytes of each of a tensor's kind, dtype and shape fields; ARGV[5] the most
-- tensor data this script fetches itself (a Lua string copy of a large value costs Redis ten
-- times a plain HGET); ARGV[6] max bytes of each model or script metadata field (a hand-written
-- hash may hold anything); ARGV[7] '1' when KEYS[1] is the flag. Then per key read: what ('M'
-- model metadata, 'S' script metadata, 'K' a key's type and kind only, 'T' a tensor this script
-- fetches if its data is at most ARGV[5] bytes, 'B' a tensor the caller fetches) and how many
-- times each job uses it, as "job:count job:count" (tensors only; a job naming one tensor 300
-- times counts it 300 times).
-- The caller fetches 'B' tensors with plain HMGETs in a MULTI after this script, the keys WATCHed
-- since before it; it set the flag, and this script deletes it only when every 'B' tensor may be
-- fetched. The caller then copies the flag (if it is still there) onto a key it WATCHes, which
-- aborts the MULTI: when a 'B' tensor was refused, and when this script did not run (NOSCRIPT).
-- Returns one reply per key read: {'none'} missing; {'wrongtype'} not a hash; {'ok', fields...}
-- (a 'T' tensor's kind, dtype, shape, blob, values; only {'ok'} for a 'B' tensor);
-- {'badfield', field, bytes} for a field longer than its limit and {'toobig', 'tensor'|'job',
-- bytes} for a tensor's data (nothing fetched); {'large', bytes} for a 'T' tensor with more data
-- than ARGV[5] (not fetched: the caller reads it as 'B'); {'deferred'} when this read already
-- carries enough: the caller reads that job's tensors again on their own.
local MODEL = {'kind', 'backend', 'device', 'tag', 'batchsize', 'minbatchsize',
               'minbatchtimeout', 'inputs', 'outputs', 'digest', 'size', 'chunks',
               'listed_inputs', 'listed_outputs'}  -- storage.model.JOB_FIELDS
local SCRIPT = {'kind', 'device', 'tag', 'entry_points', 'digest'}
local META = {'kind', 'dtype', 'shape'}  -- a tensor's small fields
local max_tensor, max_job, max_read = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_field, max_inline, max_meta = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local flagged = ARGV[7] == '1'
local first = flagged and 2 or 1  -- KEYS[first] is the first key read

local replies, sizes, uses, job_bytes = {}, {}, {}, {}
local blocked = false  -- a 'B' tensor the caller must not fetch
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
-- The first of ``fields`` longer than ``limit`` bytes, as a 'badfield' reply; nil when none is.
local function too_long(key, fields, limit)
  for _, name in ipairs(fields) do
    local length = redis.call('HSTRLEN', key, name)
    if length > limit then return {'badfield', name, length} end
  end
  return nil
end
local function refuse(n, reply)
  replies[n] = reply
  if ARGV[6 + 2 * n] == 'B' then blocked = true end
end
-- First pass: types and stored sizes; nothing large is fetched yet.
for n = 1, #KEYS - first + 1 do
  local key, what = KEYS[first + n - 1], ARGV[6 + 2 * n]
  if what == 'K' then
    local kind = redis.call('TYPE', key)['ok']
    if kind == 'none' then
      replies[n] = {'none'}
    elseif kind ~= 'hash' then
      replies[n] = {'ok', kind, false}
    else  -- a kind longer than any of aiworker's is none of them
      local long = too_long(key, {'kind'}, max_field)
      replies[n] = {'ok', kind, long and '?' or redis.call('HMGET', key, 'kind')[1]}
    end
  elseif what == 'M' or what == 'S' then
    local names = what == 'M' and MODEL or SCRIPT
    if wrongtype(redis.pcall('HSTRLEN', key, 'kind')) then
      replies[n] = {'wrongtype'}
    else
      local long = too_long(key, names, max_meta)
      local fields = not long and redis.call('HMGET', key, unpack(names))
      if long then
        replies[n] = long
      elseif all_nil(fields) then
        replies[n] = absent(key)
      else
        replies[n] = {'ok', unpack(fields)}
      end
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
        refuse(n, long)
      elseif size > max_tensor then
        refuse(n, {'toobig', 'tensor', size})
      elseif size + small == 0 and redis.call('EXISTS', key) == 0 then
        replies[n] = {'none'}
      else
        sizes[n] = size
        uses[n] = {}
        for job, count in string.gmatch(ARGV[7 + 2 * n], '(%d+):(%d+)') do
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
      refuse(n, {'toobig', 'job', over})
    elseif later or (read_bytes > 0 and read_bytes + sizes[n] > max_read) then
      for _, job in ipairs(uses[n]) do deferred[job] = true end
      refuse(n, {'deferred'})
    elseif ARGV[6 + 2 * n] == 'B' then
      read_bytes = read_bytes + sizes[n]
      replies[n] = {'ok'}
    elseif sizes[n] > max_inline then
      replies[n] = {'large', sizes[n]}
    else
      read_bytes = read_bytes + sizes[n]
      local fields = redis.call('HMGET', key, 'kind', 'dtype', 'shape', 'blob', 'values')
      replies[n] = all_nil(fields) and absent(key) or {'ok', unpack(fields)}
    end
  end
end
if flagged and not blocked then
  redis.call('DEL', KEYS[1])
end
return replies
