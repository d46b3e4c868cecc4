-- Fields of a hash, fetched only when each is within its limit: a worker reads a model's or a
-- script's metadata, and a script's source, from a hash anyone may have written by hand (a 500 MB
-- tag), so their lengths are checked before any of them leaves Redis.
-- KEYS[1]: a hash. ARGV: field, most bytes, field, most bytes, ...
-- Returns {'ok', values...} (HMGET's, in ARGV's order), {'badfield', field, bytes} (nothing
-- fetched), or HSTRLEN's WRONGTYPE error when KEYS[1] is not a hash.
local names = {}
for i = 1, #ARGV, 2 do
  local length = redis.pcall('HSTRLEN', KEYS[1], ARGV[i])
  if type(length) == 'table' then return length end
  if length > tonumber(ARGV[i + 1]) then return {'badfield', ARGV[i], length} end
  names[#names + 1] = ARGV[i]
end
return {'ok', unpack(redis.call('HMGET', KEYS[1], unpack(names)))}
