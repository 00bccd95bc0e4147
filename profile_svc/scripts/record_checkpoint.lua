-- Record versions of a change-feed tail reader's chain of states in one of the chain's blocks
-- (profile_svc/feed_checkpoints.py), only where the block ends as its writer left it, so a failover that lost
-- part of a block makes the write fail instead of leaving a gap in it.
-- KEYS[1] the block (a list: a snapshot, then one element per version, each starting with its version number);
-- ARGV[1] the version the block must end at ('' for a block that must not exist yet), ARGV[2] the version the
-- last element written holds, ARGV[3] the block's expiry in ms, ARGV[4..] the elements.
-- Returns 1 when the elements are in the block (this write, or the same write before it: a retry), else 0.

local block = KEYS[1]
local last = redis.call('LINDEX', block, -1)
local ends_at = last and string.match(last, '^(%d+) ')
if ends_at == ARGV[2] then
  redis.call('PEXPIRE', block, ARGV[3])
  return 1
end
if (ARGV[1] == '' and last) or (ARGV[1] ~= '' and ends_at ~= ARGV[1]) then
  return 0
end
for i = 4, #ARGV, 1000 do
  redis.call('RPUSH', block, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIRE', block, ARGV[3])
return 1
