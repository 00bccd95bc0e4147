-- One bounded step of the partition's oldest recount: count the applied reads of its users in the next
-- entries after its cursor, and move the cursor past them.
-- KEYS[1] event stream, KEYS[2] reads (sorted set), KEYS[3] recounts in progress (hash), KEYS[4] the top list's
-- outbox (hash, helpers.lua), where each user whose score changed is noted
-- ARGV[1] consumer group, ARGV[2] entries to read at most (1 to MAX_STEP)
-- Returns {reads counted, 1 while recounts remain, how many users the outbox holds (-1: never indexed whole)}.
--
-- A recount is queued by apply_events.lua when a delete becomes a user's tombstone and the range from it
-- to the group's last delivered entry holds entries not in that batch. The hash holds:
--   job:<n>   -> "<cursor> <last>": the reads in (cursor, last] are still to be counted
--   users:<n> -> the job's users (JSON), so that its end removes their entries below
--   user:<u>  -> "<n> <since>": the user's recount in progress and its tombstone when it was queued
--   head, tail: the oldest job left and the number the next job gets
-- Exactly once, with apply_events.lua: a read in (cursor, last] is counted here if it is applied when the
-- cursor passes it, and by the batch that applies it otherwise (the cursor has passed it by then, so the
-- batch does not skip it). A batch skips only reads ahead of the cursor, which are applied and not yet
-- passed, so this step counts them. A user whose tombstone moved on since is mapped to another job (or to
-- none): this job ignores the user.

local stream, group, recount = KEYS[1], ARGV[1], KEYS[3]
local MAX_STEP = 1000  -- the aggregator's steps read RECOUNT_STEP (aggregator.py)
local step = tonumber(ARGV[2])
if not step or step < 1 or step > MAX_STEP or step % 1 ~= 0 then
  return redis.error_reply('ERR recount_step: a step reads from 1 to ' .. MAX_STEP .. ' entries')
end
local head = tonumber(redis.call('HGET', recount, 'head') or '0')
local tail = tonumber(redis.call('HGET', recount, 'tail') or '0')
if head >= tail then return {0, 0, outbox_users(KEYS[4])} end
local job = redis.call('HGET', recount, 'job:' .. head)
local cursor, last = string.match(job, '^(%S+) (%S+)$')

local chunk = redis.call('XRANGE', stream, '(' .. cursor, last, 'COUNT', step)
-- The chunk's pending entries in one call. The group may also hold pending ids the stream lacks (deleted
-- entries): when the reply is full, the entries after its last id are looked up one by one.
local pending, truncated_after = {}, nil
if #chunk > 0 then
  local reply = redis.call('XPENDING', stream, group, chunk[1][1], chunk[#chunk][1], #chunk)
  for _, entry in ipairs(reply) do pending[entry[1]] = true end
  if #reply == #chunk then truncated_after = reply[#reply][1] end
end
local function is_pending(id)
  if pending[id] then return true end
  return truncated_after ~= nil and older(truncated_after, id)
    and #redis.call('XPENDING', stream, group, id, id, 1) > 0
end
-- user -> the user's tombstone if the user is this job's, true if that is older than the whole chunk
-- (the usual case: then no id needs comparing), or false
local since_of = {}
local counts, counted = {}, 0
for _, entry in ipairs(chunk) do
  local id, fields = entry[1], entry[2]
  local user = fields[1] == 'user' and fields[2] or field(fields, 'user')
  if user then
    local since = since_of[user]
    if since == nil then
      since = false
      local mine = redis.call('HGET', recount, 'user:' .. user)
      if mine then
        local n, tombstone = string.match(mine, '^(%d+) (%S+)$')
        if tonumber(n) == head then since = older(tombstone, chunk[1][1]) or tombstone end
      end
      since_of[user] = since
    end
    if since and (fields[3] == 'type' and fields[4] or field(fields, 'type')) == 'read'
        and (since == true or older(since, id)) and not is_pending(id) then
      counts[user] = (counts[user] or 0) + 1
      counted = counted + 1
    end
  end
end
local changed = {}
for user, count in pairs(counts) do
  changed[#changed + 1] = user
  changed[#changed + 1] = redis.call('ZINCRBY', KEYS[2], count, user)
end
local noted = note(KEYS[4], changed)

if #chunk == step and chunk[#chunk][1] ~= last then
  redis.call('HSET', recount, 'job:' .. head, chunk[#chunk][1] .. ' ' .. last)
  return {counted, 1, noted}
end
-- The job is done: its users that are still its own have no recount in progress any more.
for _, user in ipairs(cjson.decode(redis.call('HGET', recount, 'users:' .. head))) do
  local mine = redis.call('HGET', recount, 'user:' .. user)
  if mine and tonumber(string.match(mine, '^(%d+) ')) == head then
    redis.call('HDEL', recount, 'user:' .. user)
  end
end
redis.call('HDEL', recount, 'job:' .. head, 'users:' .. head)
if head + 1 >= tail then
  -- Nothing left, and no user entry either (each belonged to a job): the hash goes, numbering starts over.
  redis.call('HDEL', recount, 'head', 'tail')
  return {counted, 0, noted}
end
redis.call('HSET', recount, 'head', head + 1)
return {counted, 1, noted}
