-- Clear the notes of a partition's outbox that were copied into the top list's index (index_top.lua).
-- KEYS[1] the outbox (hash)
-- ARGV user, note, user, note, ...: the notes as the copy read them
-- Returns how many users the outbox still holds (-1: never indexed whole), as an apply does.
--
-- A user noted again since the copy read the outbox keeps the newer note: it is copied next time.
local users = {}
for i = 1, #ARGV, 2 do users[#users + 1] = ARGV[i] end
if #users > 0 then
  local now = redis.call('HMGET', KEYS[1], unpack(users))
  local copied = {}
  for i, user in ipairs(users) do
    if now[i] == ARGV[2 * i] then copied[#copied + 1] = user end
  end
  if #copied > 0 then redis.call('HDEL', KEYS[1], unpack(copied)) end
end
return outbox_users(KEYS[1])
