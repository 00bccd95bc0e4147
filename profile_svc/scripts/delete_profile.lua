-- Delete a profile and append its `delete` event, atomically on the partition's slot.
-- KEYS[1] profile hash, KEYS[2] partition event stream
-- ARGV[1] user
-- Returns 1 when deleted, 0 when there was no profile (nothing is written).
if redis.call('UNLINK', KEYS[1]) == 0 then
  return 0
end
local now = redis.call('TIME')
redis.call('XADD', KEYS[2], '*', 'user', ARGV[1], 'type', 'delete',
  'ts', now[1] * 1000 + math.floor(now[2] / 1000))
return 1
