-- One page of a partition's outbox, for the copy into the top list's index (aggregator.py): the users' notes,
-- without the outbox's own fields ('#version', '#indexed').
-- KEYS[1] the outbox (hash)
-- ARGV[1] the scan's cursor ('0' to start), ARGV[2] fields to read at most (1 to 1000)
-- Returns {the next cursor, '0' when done; user, note, user, note, ...}.
local page, refused = bounded_count(ARGV[2], 1000, 'outbox_notes', 'a page reads')
if not page then return refused end
local reply = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', page)
local notes = {}
for i = 1, #reply[2], 2 do
  if string.sub(reply[2][i], 1, 1) ~= '#' then
    notes[#notes + 1] = reply[2][i]
    notes[#notes + 1] = reply[2][i + 1]
  end
end
return {reply[1], notes}
