-- Read a profile and append its `read` event, atomically on the partition's slot.
-- KEYS[1] profile hash, KEYS[2] partition event stream
-- ARGV[1] user
-- Returns the fields as field, value, ... or nil when there is no profile (no event then).
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return false
end
local now = redis.call('TIME')
redis.call('XADD', KEYS[2], '*', 'user', ARGV[1], 'type', 'read',
  'ts', now[1] * 1000 + math.floor(now[2] / 1000))
return fields
