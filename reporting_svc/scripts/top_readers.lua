-- The top readers of one bucket of the top list's index (or of a partition's reads: the same layout), including
-- every user tied with the last one, so that the merge over buckets can break ties by user name exactly.
-- KEYS[1] the sorted set; ARGV[1] how many
-- Returns user, score, user, score, ... (tied users may appear twice).
local n = tonumber(ARGV[1])
local top = redis.call('ZREVRANGE', KEYS[1], 0, n - 1, 'WITHSCORES')
if #top < 2 * n then
  return top
end
-- Equal scores are ordered by name, so the first n of the tie are the ones the merge can need.
local lowest = top[#top]
local tied = redis.call('ZRANGEBYSCORE', KEYS[1], lowest, lowest, 'WITHSCORES', 'LIMIT', 0, n)
for _, item in ipairs(tied) do
  top[#top + 1] = item
end
return top
