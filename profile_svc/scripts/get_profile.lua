-- Read a profile and append its `read` event, atomically on the partition's slot.
-- KEYS[1] profile hash, KEYS[2] partition event stream, KEYS[3] the partition's wake flag
-- ARGV[1] user
-- Returns the fields as field, value, ... or nil when there is no profile (no event then).
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return false
end
append_event(KEYS[2], KEYS[3], ARGV[1], 'read')
return fields
