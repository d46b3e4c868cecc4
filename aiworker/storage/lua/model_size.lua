-- The real size of a model's blob, measured with HSTRLEN, so that a reader learns it in one round
-- trip without transferring it.
-- KEYS[1]: a model hash. ARGV[1]: the most chunks accepted.
-- Returns {chunks, total bytes of chunk:0 .. chunk:<chunks-1>}; chunks is -1 when the ``chunks``
-- field is not a whole number in [0, ARGV[1]].
local chunks = tonumber(redis.call('HMGET', KEYS[1], 'chunks')[1] or '0')
if chunks == nil or chunks < 0 or chunks > tonumber(ARGV[1]) or chunks % 1 ~= 0 then
  return {-1, 0}
end
local total = 0
for i = 0, chunks - 1 do
  total = total + redis.call('HSTRLEN', KEYS[1], 'chunk:' .. i)
end
return {chunks, total}
