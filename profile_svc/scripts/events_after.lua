-- The entries of a partition's stream after an id, with what tells whether any were trimmed: how many
-- entries were ever added and how many remain. Entries only leave from the head (trimming; nothing
-- deletes from the middle), so the entries-added count of the oldest remaining one is added - length + 1.
-- Read together, atomically, so a trim can't slip in between.
-- KEYS[1] partition event stream
-- ARGV[1] exclusive start id, ARGV[2] inclusive end id, ARGV[3] at most how many entries
-- Returns {entries ever added, entries remaining, entries}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0, {}}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added, length
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then added = info[i + 1] end
  if info[i] == 'length' then length = info[i + 1] end
end
return {added, length, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2], 'COUNT', ARGV[3])}
