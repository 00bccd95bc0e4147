-- Create or update a profile and append its event, atomically on the partition's slot.
-- KEYS[1] profile hash, KEYS[2] partition event stream, KEYS[3] the partition's wake flag
-- ARGV[1] user, ARGV[2] 'create' (the profile must not exist yet) or 'update' (it must exist),
-- ARGV[3..] field, value, field, value, ...
-- Returns 1 when written, 0 when the profile exists (create) or doesn't (update): nothing is written then.
local kind = ARGV[2]
if kind ~= 'create' and kind ~= 'update' then
  return redis.error_reply('write_profile: ARGV[2] must be create or update')
end
if (redis.call('EXISTS', KEYS[1]) == 1) ~= (kind == 'update') then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
append_event(KEYS[2], KEYS[3], ARGV[1], kind)
return 1
