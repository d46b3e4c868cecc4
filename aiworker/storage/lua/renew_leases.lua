-- KEYS[1] queue; ARGV: group, consumer, idle ms to set, entry ids.
-- Returns the ids another consumer owns now (ids no longer pending were just completed).
local lost = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
  elseif #p == 1 then
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
