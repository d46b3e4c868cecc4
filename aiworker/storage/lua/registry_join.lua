#!lua flags=allow-oom
-- KEYS[1] the workers sorted set; ARGV: worker name, heartbeat time, drop members older than
-- this. Allowed on a full Redis, as registry_set.lua (one member per worker).
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
