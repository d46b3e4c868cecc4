-- Take back a job entry that no worker has read, atomically against workers reading the stream,
-- so that a request its client gave up on can never run later.
-- KEYS[1] the device queue (a stream). ARGV[1] the entry id, ARGV[2] the consumer group.
-- Returns 1: removed (never delivered, it will not run); 0: a worker read it (delivered: pending,
-- running or being completed); -1: it is not in the stream (completed and deleted already).
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return -1
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local last = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered = nil, nil
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] end
    if group[i] == 'last-delivered-id' then delivered = group[i + 1] end
  end
  if name == ARGV[2] then last = delivered end
end
if last ~= nil then
  -- XREADGROUP delivers in id order, so an id at or below last-delivered-id was read
  local last_ms, last_seq = parse(last)
  local ms, seq = parse(ARGV[1])
  if ms < last_ms or (ms == last_ms and seq <= last_seq) then
    return 0
  end
  if #redis.call('XPENDING', KEYS[1], ARGV[2], ARGV[1], ARGV[1], 1) > 0 then
    return 0
  end
end
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
