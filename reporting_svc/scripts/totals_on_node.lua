-- The count per operation type summed over every partition this node holds: one call per primary instead of
-- one per partition (reports.py). The partitions' totals keys are ARGV; KEYS[1], the first of them, routes the
-- call. Flagged allow-cross-slot-keys, and a key this node does not serve fails the call (top_readers_on_node.lua).
-- Returns type, count, type, count, ...
local sums = {}
local kinds = {}
for i = 1, #ARGV do
  local flat = redis.call('HGETALL', ARGV[i])
  for j = 1, #flat, 2 do
    local kind = flat[j]
    if sums[kind] == nil then
      sums[kind] = 0
      kinds[#kinds + 1] = kind
    end
    sums[kind] = sums[kind] + tonumber(flat[j + 1])
  end
end
local out = {}
for _, kind in ipairs(kinds) do
  out[#out + 1] = kind
  out[#out + 1] = sums[kind]
end
return out
