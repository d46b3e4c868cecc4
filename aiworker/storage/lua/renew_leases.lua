-- KEYS[1] queue; ARGV: group, consumer, idle ms to set, 1 to count the delivery off (entries
-- handed back that never ran: a read ahead is no attempt against max_deliveries) or 0, entry ids.
-- Returns the ids another consumer owns now (ids no longer pending were just completed).
local lost = {}
for i = 5, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    if ARGV[4] == '1' then
      local retries = math.max(0, p[1][4] - 1)
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3],
                 'RETRYCOUNT', retries, 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    end
  elseif #p == 1 then
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
