-- Delete a profile and append its `delete` event, atomically on the partition's slot.
-- KEYS[1] profile hash, KEYS[2] partition event stream, KEYS[3] the partition's wake flag
-- ARGV[1] user
-- Returns 1 when deleted, 0 when there was no profile (nothing is written).
if redis.call('UNLINK', KEYS[1]) == 0 then
  return 0
end
append_event(KEYS[2], KEYS[3], ARGV[1], 'delete')
return 1
