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
-- First pass: types and stored sizes; nothing large is fetched yet.
for i, key in ipairs(KEYS) do
  local what = ARGV[2 + 2 * i]
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then
    replies[i] = {'none'}
  elseif what == 'K' then
    replies[i] = {'ok', kind, kind == 'hash' and redis.call('HMGET', key, 'kind')[1] or false}
  elseif kind ~= 'hash' then
    replies[i] = {'wrongtype'}
  elseif what == 'M' then
    replies[i] = {'ok', unpack(redis.call('HMGET', key, unpack(MODEL)))}
  elseif what == 'S' then
    replies[i] = {'ok', unpack(redis.call('HMGET', key, unpack(SCRIPT)))}
  else
    local size = redis.call('HSTRLEN', key, 'blob') + redis.call('HSTRLEN', key, 'values')
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
      replies[i] = {'ok', unpack(redis.call('HMGET', key, 'kind', 'dtype', 'shape', 'blob', 'values'))}
    end
  end
end
return replies
