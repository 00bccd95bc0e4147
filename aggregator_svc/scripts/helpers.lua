-- What the aggregator's scripts share: the top list's outbox (common/storage/keys.py top_outbox_key).
-- A script that changes a user's reads notes the user's new score in the partition's outbox, atomically with the
-- count, and the aggregator copies the outbox into the top list's index (index_top.lua): no change escapes it.

-- Note users' scores, and return how many users the outbox holds, or -1 while the partition's users were never all
-- noted (reindex_partition.lua): every apply returns it, so the aggregator copies again what a failed copy left,
-- and indexes a partition anew. `scored` is user, score (or false: the user has no reads), user, score, ...
-- A note's version is the server's time in microseconds, above the last one the outbox gave. Time, not a count,
-- so that versions keep growing after a failover that lost the last ones: a count would start again below what
-- the index holds, and its notes would be ignored.
local function note(outbox, scored)
  local meta = redis.call('HMGET', outbox, '#indexed', '#version')
  if #scored > 0 then
    local now = redis.call('TIME')
    local version = tonumber(now[1]) * 1000000 + tonumber(now[2])
    local last = tonumber(meta[2] or '0')
    if version <= last then version = last + 1 end
    meta[2] = string.format('%.0f', version)
    local notes = {'#version', meta[2]}
    for i = 1, #scored, 2 do
      notes[#notes + 1] = scored[i]
      notes[#notes + 1] = meta[2] .. ' ' .. (scored[i + 1] or '-')
    end
    redis.call('HSET', outbox, unpack(notes))
  end
  if not meta[1] then return -1 end
  return redis.call('HLEN', outbox) - 1 - (meta[2] and 1 or 0)
end

-- Note `users`' scores as the partition's reads hold them now.
local function note_scores(outbox, reads, users)
  local scored = {}
  for _, user in ipairs(users) do
    scored[#scored + 1] = user
    scored[#scored + 1] = redis.call('ZSCORE', reads, user)
  end
  return note(outbox, scored)
end

-- How many users the outbox holds (-1: never indexed whole), noting nothing.
local function outbox_users(outbox)
  return note(outbox, {})
end

-- A count argument from 1 to `most`, or nil and the error to reply with, naming the script and what it counts.
local function bounded_count(value, most, script, what)
  local count = tonumber(value)
  if not count or count < 1 or count > most or count % 1 ~= 0 then
    return nil, redis.error_reply('ERR ' .. script .. ': ' .. what .. ' from 1 to ' .. most)
  end
  return count
end
