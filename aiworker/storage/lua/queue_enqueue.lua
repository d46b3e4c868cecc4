-- Queue a job entry, unless its stream already holds as many entries as the limit the queue's
-- workers publish (max_queue_length): the check and the XADD are one atomic step.
-- KEYS[1] the stream (a device queue or one of its partitions), KEYS[2] its limit (a number the
-- workers write, in the stream's hash slot; absent or 0: no limit). ARGV: the entry's fields and
-- values.
-- Returns the new entry's id, or the error 'QUEUEFULL <entries> <limit>'.
local limit = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if limit > 0 then
  local length = redis.call('XLEN', KEYS[1])
  if length >= limit then
    return redis.error_reply('QUEUEFULL ' .. length .. ' ' .. limit)
  end
end
-- pcall: a refusal (OOM when Redis is full) is returned as Redis worded it
return redis.pcall('XADD', KEYS[1], '*', unpack(ARGV))
