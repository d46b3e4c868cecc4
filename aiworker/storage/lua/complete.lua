-- Completes stream entries: per entry, acknowledge and delete it, write its outputs, count its
-- statistics, push its reply, append its stream records (a forward to another device queue, a
-- dead letter) - all of it, or none of it.
-- KEYS[1] the queue; KEYS[2..] every other key written (entries refer to keys by index).
-- ARGV[1] consumer group; ARGV[2..] and the entries as complete_parts.lua says.
-- Returns per entry {code, reply, stats, reason, key, added}: code 1 applied, 0 already completed by
-- another delivery (nothing written), -1 refused (nothing written, the entry stays pending:
-- reason 'WRONGTYPE' | 'NOPERM' | 'PREFIX' for output key `key`, 'STREAM' for a stream record's
-- stream that takes no more entries, or 'STALE' for a model or script
-- stored anew since the job read its version); reply 1 pushed, 0 none, -1 dropped (the reply key
-- holds another type or is denied); stats 1 counted, 0 none, -1 counted after repairing a
-- statistics key that was not a hash of integers, -2 not counted (denied); added the id the
-- entry's last stream record got.
-- On Redis Cluster this runs in the queue's slot only: entries whose keys all live there, and
-- bare entries (an id only) whose other steps complete_once.lua applied.
--
-- Everything that could fail is checked before the first write: Redis does not roll a script back,
-- so a command failing halfway would leave an entry acknowledged with its reply unwritten.
-- @include complete_parts
local group = ARGV[1]
if not allowed('XACK', KEYS[1], group, '0-1') or not allowed('XDEL', KEYS[1], '0-1') then
  return redis.error_reply('NOPERM this worker may not XACK and XDEL ' .. KEYS[1])
end
local results, acked = {}, {}
for e, entry in ipairs(entries) do
  local refused, key = refusal(entry)
  local added = ''
  if not refused and #entry.records > 0 then
    -- its stream records first, while it is still pending: the one write that can fail after
    -- every check ('STREAM': a stream that takes no more entries) then leaves it as it was
    if #redis.call('XPENDING', KEYS[1], group, entry.id, entry.id, 1) == 0 then
      refused = 'DONE'
    else
      added, key = add_records(entry)
      if added == nil then refused = 'STREAM' end
    end
  end
  if refused == 'DONE' or (not refused and redis.call('XACK', KEYS[1], group, entry.id) == 0) then
    results[e] = {0, 0, 0, '', ''}  -- another delivery completed it
  elseif refused then
    results[e] = {-1, 0, 0, refused, key}
  else
    acked[#acked + 1] = entry.id
    local reply
    reply, added = apply(e, entry, added)
    results[e] = {1, reply, 0, '', '', added}
  end
end
count_tallies(results)
for first = 1, #acked, 1000 do  -- acknowledged entries go in one XDEL (a thousand at most)
  redis.call('XDEL', KEYS[1], unpack(acked, first, math.min(first + 999, #acked)))
end
return results
