-- One step of completing stream entries on Redis Cluster: the writes of each entry that live in
-- one hash slot (outputs and reply; statistics; a dead letter or a forward), applied by whichever
-- delivery of the entry gets here first. A marker key per entry and step (in this slot, expiring
-- long after any redelivery) says the step is done; a second delivery finds it and writes nothing.
-- Acknowledging the entry is a later step (complete.lua in the queue's slot), so a worker killed
-- between steps leaves the entry pending: its redelivery re-runs and finds the done steps done.
-- KEYS: every key written here (entries refer to them by index), markers included.
-- ARGV[1] the markers' TTL (seconds); ARGV[2..] and the entries as complete_parts.lua says, where
-- an entry's id is the index of its marker key.
-- Returns per entry {code, reply, stats, reason, key, added} as complete.lua (code 0: the marker
-- was set, another delivery did this step; added is then what the marker holds: the id that
-- delivery's stream record got, which a forward notice in a later step needs).
-- @include complete_parts
local marker_ttl = ARGV[1]
local results = {}
for e, entry in ipairs(entries) do
  local marker = K[tonumber(entry.id)]
  local refused, key = refusal(entry)
  if not refused and not allowed('SET', marker, '1', 'EX', marker_ttl) then
    refused, key = 'NOPERM', marker
  end
  if refused then
    results[e] = {-1, 0, 0, refused, key}
  elseif type_of(marker) ~= 'none' then
    local held = redis.pcall('MGET', marker)  -- another delivery did this step
    results[e] = {0, 0, 0, '', '', failed(held) and '' or held[1] or ''}
  else
    local added, stream = add_records(entry)  -- first: the one write that can fail (STREAM)
    if added == nil then
      results[e] = {-1, 0, 0, 'STREAM', stream}
    else
      local reply
      reply, added = apply(e, entry, added)
      redis.call('SET', marker, added ~= '' and added or '1', 'EX', marker_ttl)
      will[marker] = 'string'
      results[e] = {1, reply, 0, '', '', added}
    end
  end
end
count_tallies(results)
return results
