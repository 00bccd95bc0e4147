-- The entries of a partition's stream after an id, and whether any entry after that id was
-- deleted (trimmed): read together, atomically, so a trim can't slip in between.
-- KEYS[1] partition event stream
-- ARGV[1] exclusive start id, ARGV[2] inclusive end id, ARGV[3] at most how many entries
-- Returns {the largest id ever deleted from the stream ('' when there is no stream), entries}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'', {}}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local max_deleted = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then
    max_deleted = info[i + 1]
  end
end
return {max_deleted, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2], 'COUNT', ARGV[3])}
