-- Create a profile and append its `create` event, atomically on the partition's slot.
-- KEYS[1] profile hash, KEYS[2] partition event stream
-- ARGV[1] user, ARGV[2..] field, value, field, value, ...
-- Returns 1 when created, 0 when the profile already exists (nothing is written).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local now = redis.call('TIME')
redis.call('XADD', KEYS[2], '*', 'user', ARGV[1], 'type', 'create',
  'ts', now[1] * 1000 + math.floor(now[2] / 1000))
return 1
