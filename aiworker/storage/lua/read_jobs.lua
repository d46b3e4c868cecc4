-- What the jobs of one read need (model and script metadata, input tensors), in one round trip,
-- with stored sizes checked before any tensor data is fetched.
-- KEYS: the keys to read, each once.
-- ARGV[1] max bytes of one tensor's data, ARGV[2] max bytes of one job's tensors, ARGV[3] max
-- bytes of this whole read; then per key in KEYS: what to read ('M' model metadata, 'S' script
-- metadata, 'T' a tensor, 'K' its type and kind only) and how many times each job uses it, as
-- "job:count job:count" (tensors only; a job naming one tensor 300 times counts it 300 times).
-- Returns one reply per key: {'none'} missing; {'wrongtype'} not a hash; {'ok', fields...};
-- for tensors {'toobig', 'tensor'|'job', bytes} (nothing fetched), or {'deferred'} when this
-- read already carries enough: the caller fetches that job's tensors again on their own.
local MODEL = {'kind', 'backend', 'device', 'tag', 'batchsize', 'minbatchsize',
               'minbatchtimeout', 'inputs', 'outputs', 'digest', 'size', 'chunks'}
local SCRIPT = {'kind', 'device', 'tag', 'entry_points', 'digest'}
local max_tensor, max_job, max_read = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local replies, sizes, uses, job_bytes = {}, {}, {}, {}
local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
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
-- First pass: types and stored sizes; nothing large is fetched yet. A command on a key of
-- another type fails (pcall), which is how that type is told, in one call per key.
for i, key in ipairs(KEYS) do
  local what = ARGV[2 + 2 * i]
  if what == 'K' then
    local kind = redis.call('TYPE', key)['ok']
    if kind == 'none' then
      replies[i] = {'none'}
    else
      replies[i] = {'ok', kind, kind == 'hash' and redis.call('HMGET', key, 'kind')[1] or false}
    end
  elseif what == 'M' or what == 'S' then
    local fields = redis.pcall('HMGET', key, unpack(what == 'M' and MODEL or SCRIPT))
    if failed(fields) then
      replies[i] = {'wrongtype'}
    elseif all_nil(fields) then
      replies[i] = absent(key)
    else
      replies[i] = {'ok', unpack(fields)}
    end
  else
    local blob = redis.pcall('HSTRLEN', key, 'blob')
    if failed(blob) then
      replies[i] = {'wrongtype'}
    else
      local size = blob + redis.call('HSTRLEN', key, 'values')
      if size > max_tensor then
        replies[i] = {'toobig', 'tensor', size}
      else
        sizes[i] = size
        uses[i] = {}
        for job, count in string.gmatch(ARGV[3 + 2 * i], '(%d+):(%d+)') do
          uses[i][#uses[i] + 1] = job
          job_bytes[job] = (job_bytes[job] or 0) + size * tonumber(count)
        end
      end
    end
  end
end
-- Second pass: fetch the tensors of jobs within their limits, until the read's budget is spent.
local read_bytes, deferred = 0, {}
for i, key in ipairs(KEYS) do
  if sizes[i] then
    local over, later = nil, false
    for _, job in ipairs(uses[i]) do
      if job_bytes[job] > max_job then over = job_bytes[job] end
      if deferred[job] then later = true end
    end
    if over then
      replies[i] = {'toobig', 'job', over}
    elseif later or (read_bytes > 0 and read_bytes + sizes[i] > max_read) then
      for _, job in ipairs(uses[i]) do deferred[job] = true end
      replies[i] = {'deferred'}
    else
      read_bytes = read_bytes + sizes[i]
      local fields = redis.call('HMGET', key, 'kind', 'dtype', 'shape', 'blob', 'values')
      replies[i] = all_nil(fields) and absent(key) or {'ok', unpack(fields)}
    end
  end
end
return replies
