-- The top readers of every bucket of the top list's index this node holds, merged: its top ARGV[1] users by score,
-- then name (the top list's order, total, so merging the nodes' lists needs nothing more). One call per primary
-- instead of one per bucket (reports.py). The buckets' keys are ARGV[2..]; KEYS[1], the first of them, routes the
-- call. Flagged allow-cross-slot-keys (common/storage/functions.py): a key this node does not serve (its slot
-- moved, or is migrating and the key has left) fails the call, and reports.py reads those buckets one by one.
-- Returns user, score, user, score, ...
local n = tonumber(ARGV[1])
local scores = {}
local rows = {}
for i = 2, #ARGV do
  local top = top_readers({ARGV[i]}, {n})
  for j = 1, #top, 2 do
    local user = top[j]
    if scores[user] == nil then  -- top_readers may list a user of the last score's tie twice
      scores[user] = tonumber(top[j + 1])
      rows[#rows + 1] = user
    end
  end
end
table.sort(rows, function(a, b)
  if scores[a] ~= scores[b] then
    return scores[a] > scores[b]
  end
  return a < b
end)
local out = {}
for i = 1, math.min(n, #rows) do
  out[#out + 1] = rows[i]
  out[#out + 1] = scores[rows[i]]
end
return out
