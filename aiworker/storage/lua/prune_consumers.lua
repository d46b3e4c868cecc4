-- KEYS[1] queue; ARGV: group, min idle ms, consumer names (none: any consumer).
-- Deletes consumers that have nothing pending; the check and the delete are one atomic step.
local wanted, any = {}, #ARGV < 3
for i = 3, #ARGV do wanted[ARGV[i]] = true end
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for j = 1, #c, 2 do info[c[j]] = c[j + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2])
      and (any or wanted[info['name']]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
