-- Copy notes of a partition's outbox into its bucket of the top list's index (common/storage/keys.py top_key).
-- KEYS[1] the bucket (sorted set), KEYS[2] the bucket's versions (hash)
-- ARGV user, note, user, note, ...: each note "<version> <score>", or "<version> -" for a user with no reads
-- Returns how many scores it wrote.
--
-- A note replaces what the bucket holds only if its version is newer: a late copy (a retry, a replica that was
-- slow, or one of a partition restored by a failover) never replaces a newer score. A removal keeps its version
-- in the versions hash, so an older copy can't bring the user back.
if #ARGV % 2 ~= 0 then
  return redis.error_reply('ERR index_top: user and note pairs expected')
end
local users, notes = {}, {}
for i = 1, #ARGV, 2 do
  local version, score = string.match(ARGV[i + 1], '^(%d+) (%S+)$')
  if not version or (score ~= '-' and not tonumber(score)) then
    return redis.error_reply('ERR index_top: not a note: ' .. string.sub(ARGV[i + 1], 1, 40))
  end
  users[#users + 1] = ARGV[i]
  notes[#notes + 1] = {version, score}
end
if #users == 0 then return 0 end
local known = redis.call('HMGET', KEYS[2], unpack(users))
local versions, added, removed = {}, {}, {}
for i, user in ipairs(users) do
  local version, score = notes[i][1], notes[i][2]
  if not known[i] or tonumber(known[i]) < tonumber(version) then
    known[i] = version  -- a user noted twice in one call: the newer note wins
    versions[#versions + 1] = user
    versions[#versions + 1] = version
    if score == '-' then
      removed[#removed + 1] = user
    else
      added[#added + 1] = score
      added[#added + 1] = user
    end
  end
end
if #versions == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(versions))
if #added > 0 then redis.call('ZADD', KEYS[1], unpack(added)) end
if #removed > 0 then redis.call('ZREM', KEYS[1], unpack(removed)) end
return #versions / 2
