-- Whether stream entries are still pending for one of this worker's consumers, renewing their
-- lease if so: the first step of a completion split over hash slots when the worker cannot tell
-- from its own clock that nobody else may hold the entry (worker/complete_steps.py).
-- KEYS[1] the queue.
-- ARGV[1] consumer group, ARGV[2] the worker's consumer name prefix (`host:pid:`), ARGV[3..] ids.
-- Returns per id 1 (pending for a consumer whose name starts with the prefix: its idle time is
-- reset, so no other worker reclaims it while the completion's steps run) or 0 (completed, or
-- another worker's now).
local results = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and string.sub(p[1][2], 1, string.len(ARGV[2])) == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], p[1][2], 0, ARGV[i], 'IDLE', 0, 'JUSTID')
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
return results
