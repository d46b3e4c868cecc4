#!lua flags=allow-oom
-- KEYS[1] a key of the worker registry (a worker's status, a queue's length limit); ARGV: its
-- value, seconds to live. Allowed on a full Redis (it replaces a small value): refused, a live
-- worker would look dead to clients and to `aiworker check` while Redis is full.
return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
