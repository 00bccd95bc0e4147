-- Set fields of an existing profile and append its `update` event, atomically.
-- KEYS[1] profile hash, KEYS[2] partition event stream
-- ARGV[1] user, ARGV[2..] field, value, field, value, ...
-- Returns 1 when updated, 0 when there is no profile (nothing is written).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local now = redis.call('TIME')
redis.call('XADD', KEYS[2], '*', 'user', ARGV[1], 'type', 'update',
  'ts', now[1] * 1000 + math.floor(now[2] / 1000))
return 1
