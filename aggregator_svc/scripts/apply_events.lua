-- Apply a batch of events to the partition's statistics and acknowledge it, atomically.
-- KEYS[1] event stream, KEYS[2] reads (sorted set), KEYS[3] totals (hash),
-- KEYS[4] tombstones: user -> id of the latest applied delete (hash), KEYS[5] tombstones by time (sorted set),
-- KEYS[6] recounts in progress (hash, see recount_step.lua), KEYS[7] the top list's outbox (hash, helpers.lua),
-- KEYS[8] (a take's, optional) the partition's wake flag: set when the take finds nothing, so that the next
-- event's script wakes the aggregator (profile_svc's helpers.lua)
-- ARGV[1] consumer group, then either ARGV[2..] ids of the entries to apply, in any order, or
-- ARGV[2] '>', ARGV[3] consumer, ARGV[4] count: take the group's next entries (at most count) for the
-- consumer and apply them, one round trip per batch and no entry's content sent to the caller.
-- At most MAX_BATCH entries either way, so the script's time is bounded.
-- Returns {events applied, entries acknowledged whose content the stream no longer held,
-- [with '>': entries taken, the group's last delivered id (where a wait for new entries starts),]
-- ids of malformed entries acknowledged without counting, 1 if a recount was left to recount_step.lua,
-- how many users the outbox holds (-1: the partition was never indexed whole, see reindex_partition.lua)}.
-- Every user whose score changed is noted in the outbox, with its new score.
--
-- Exactly once: an entry is applied only when XACK returns 1, i.e. it was still pending. When a slow
-- consumer and one that claimed its entries race, or a batch is applied twice, the later one applies
-- nothing. An entry's user and type are read here from the stream, never taken from the caller: after
-- a failover that lost the stream's tail, XADD can hand out a lost id again, and the id must mean
-- what the stream holds now.
--
-- Nothing is written before everything is checked (Lua does not roll back): the arguments are validated
-- and every entry read and classified first. A malformed entry (no user, or a type not in EVENT_TYPES) can
-- never become valid, and left pending it would be reclaimed for ever and hold back trimming: it is
-- acknowledged and skipped, its id returned so the aggregator logs and counts it.
--
-- Order: consumers apply a partition's batches in any order (several replicas, reclaims, retries).
-- The invariant, per user: score = the applied reads newer than the user's tombstone (its latest
-- applied delete), less those its recount has still to reach. "Applied" is "delivered to the group and
-- no longer pending": only this script acknowledges. A read newer than the tombstone adds 1, unless it
-- lies in the part of a recount still ahead of the recount's cursor (the recount will count it, as it
-- is applied by then); an older one belongs to an earlier life. A delete newer than the tombstone
-- becomes the tombstone, and the score is recounted from the stream: the applied reads after it, up to
-- the group's last delivered entry. The part of that range that is this batch's own contiguous span
-- (all of it for a '>' read) is counted here; the rest becomes a recount job that recount_step.lua
-- walks in bounded steps. Those entries stay in the stream until then: trimming never passes a
-- pending entry nor a recount's cursor.

local stream, group, recount = KEYS[1], ARGV[1], KEYS[6]
local MAX_BATCH = 250  -- common/runtime/config.py's maximum of PROFILEMESH_AGGREGATOR_BATCH
local KNOWN = {create = true, read = true, update = true, delete = true}  -- common/storage/keys.py EVENT_TYPES

local function user_of(fields)  -- profile_svc writes user first: no search for the usual layout
  if fields[1] == 'user' then return fields[2] end
  return field(fields, 'user')
end

local function last_delivered()
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    if field(info, 'name') == group then return field(info, 'last-delivered-id') end
  end
end

-- 0. The arguments, checked before anything is written.
local take = ARGV[2] == '>'
local ids = {}
if take then
  local count = tonumber(ARGV[4])
  if not ARGV[3] or ARGV[3] == '' or not count or count < 1 or count > MAX_BATCH or count % 1 ~= 0 then
    return redis.error_reply('ERR apply_events: a take needs a consumer and a count from 1 to ' .. MAX_BATCH)
  end
else
  if #ARGV - 1 > MAX_BATCH then
    return redis.error_reply('ERR apply_events: at most ' .. MAX_BATCH .. ' ids a batch')
  end
  local seen = {}
  for i = 2, #ARGV do
    local id = ARGV[i]
    if not string.match(id, '^%d+%-%d+$') then
      return redis.error_reply('ERR apply_events: not a stream id: ' .. string.sub(id, 1, 40))
    end
    if not seen[id] then  -- a repeated id is one entry
      seen[id] = true
      ids[#ids + 1] = id
    end
  end
  if #ids == 0 then return {0, 0, {}, 0, outbox_users(KEYS[7])} end
end

-- 1. The batch's entries as the stream holds them: one read of the batch's span. When the span holds
-- exactly the batch (a '>' read, the usual case) it is `contiguous`; ids outside it are looked up one by one.
local span
if take then
  -- New to the group, so delivered now and pending for us alone: the stream's next entries, contiguous.
  -- The first write; nothing after it can fail.
  local reply = redis.call('XREADGROUP', 'GROUP', group, ARGV[3], 'COUNT', ARGV[4], 'STREAMS', stream, '>')
  span = reply and reply[1][2] or {}
  if #span == 0 then
    if KEYS[8] then redis.call('SET', KEYS[8], '1') end
    return {0, 0, 0, last_delivered() or '0-0', {}, 0, outbox_users(KEYS[7])}
  end
  for i, entry in ipairs(span) do ids[i] = entry[1] end
else
  span = redis.call('XRANGE', stream, ids[1], ids[#ids], 'COUNT', #ids + 1)
end
local in_batch = {}
for _, id in ipairs(ids) do in_batch[id] = true end
local content = {}
local contiguous = #span == #ids
for _, entry in ipairs(span) do
  content[entry[1]] = entry[2]
  if not in_batch[entry[1]] then contiguous = false end
end
local span_last = ids[#ids]
local entries = {}  -- per id: false (gone), {user, kind} or {malformed}
for i, id in ipairs(ids) do
  local fields = content[id]
  if fields == nil then
    contiguous = false
    local found = redis.call('XRANGE', stream, id, id)[1]
    fields = found and found[2]
  end
  if fields == nil then
    entries[i] = false
  else
    local user, kind = user_of(fields), field(fields, 'type')
    if user and KNOWN[kind] then entries[i] = {user, kind} else entries[i] = {} end
  end
end

-- The batch's users' tombstones, in one call (an apply's time is mostly calls into the server).
local tombstones = {}  -- user -> latest applied delete id, or false
do
  local users = {}
  for _, entry in ipairs(entries) do
    if entry and entry[1] and tombstones[entry[1]] == nil then
      tombstones[entry[1]] = false
      users[#users + 1] = entry[1]
    end
  end
  if #users > 0 then
    for i, id in ipairs(redis.call('HMGET', KEYS[4], unpack(users))) do tombstones[users[i]] = id end
  end
end
local function tombstone(user) return tombstones[user] end

local recounting = redis.call('EXISTS', recount) == 1  -- no recount in progress: nothing to look up
local jobs = {}  -- user -> {cursor, last} of the user's recount in progress, or false
local function recount_of(user)
  local known = jobs[user]
  if known == nil then
    known = false
    local mine = recounting and redis.call('HGET', recount, 'user:' .. user)
    if mine then
      local job = redis.call('HGET', recount, 'job:' .. string.match(mine, '^(%d+) '))
      if job then known = {string.match(job, '^(%S+) (%S+)$')} end
    end
    jobs[user] = known
  end
  return known
end

-- 2. Acknowledge; keep what was still pending.
local applied, gone, malformed = 0, 0, {}
local totals = {}   -- event type -> count
local reads = {}    -- acknowledged reads: {id, user}
local resets = {}   -- user -> the batch's newest delete newer than the user's tombstone
if take then  -- all delivered to us just now, so all pending: one call acknowledges them
  for first = 1, #ids, 1000 do
    redis.call('XACK', stream, group, unpack(ids, first, math.min(first + 999, #ids)))
  end
end
for i, id in ipairs(ids) do
  if take or redis.call('XACK', stream, group, id) == 1 then
    local entry = entries[i]
    if not entry then
      gone = gone + 1  -- trimmed while pending: its content is lost, nothing to count
    elseif #entry == 0 then
      malformed[#malformed + 1] = id
    else
      local user, kind = entry[1], entry[2]
      totals[kind] = (totals[kind] or 0) + 1
      applied = applied + 1
      if kind == 'read' then
        reads[#reads + 1] = {id, user}
      elseif kind == 'delete' then
        local newest = resets[user] or tombstone(user)
        if not newest or older(newest, id) then resets[user] = id end
      end
    end
  end
end
for kind, count in pairs(totals) do
  redis.call('HINCRBY', KEYS[3], kind, count)
end

-- 3. Reads of users without a new tombstone: count those newer than the tombstone, except those a
-- recount in progress has still to reach (it counts them when it gets there).
local increments = {}
for _, read in ipairs(reads) do
  local id, user = read[1], read[2]
  if not resets[user] then
    local deleted = tombstone(user)
    if not deleted or older(deleted, id) then
      local job = recount_of(user)
      if not (job and older(job[1], id) and not older(job[2], id)) then
        increments[user] = (increments[user] or 0) + 1
      end
    end
  end
end
local changed = {}  -- user, new score, ...: for the outbox
for user, count in pairs(increments) do
  changed[#changed + 1] = user
  changed[#changed + 1] = redis.call('ZINCRBY', KEYS[2], count, user)
end

-- 4. Users with a new tombstone: count what the batch itself shows, and leave the rest of the range up to
-- the last delivered entry to one recount job (one shared pass for all of them).
local from = nil
for _, id in pairs(resets) do
  if from == nil or older(id, from) then from = id end
end
local queued = 0
if from ~= nil then
  local delivered = take and span_last or last_delivered()
  local counts = {}
  local cursor = from
  if contiguous and delivered then
    -- Every entry of the span is this batch's, so applied now if delivered at all (a batch held across a
    -- lossy failover can name entries the group has not delivered since): count the reads after their
    -- user's reset.
    for _, entry in ipairs(span) do
      local fields = entry[2]
      local user = user_of(fields)
      local since = user and resets[user]
      if since and field(fields, 'type') == 'read' and older(since, entry[1]) and not older(delivered, entry[1]) then
        counts[user] = (counts[user] or 0) + 1
      end
    end
    cursor = span_last
  end
  local job = nil
  if delivered and older(cursor, delivered) then
    job = tonumber(redis.call('HGET', recount, 'tail') or '0')
    local users = {}
    for user, _ in pairs(resets) do users[#users + 1] = user end
    redis.call('HSET', recount, 'job:' .. job, cursor .. ' ' .. delivered, 'users:' .. job, cjson.encode(users),
      'tail', job + 1)
    queued = 1
  end
  -- The writes, a few variadic calls for the whole batch.
  local scored, unscored, mapped, unmapped, deleted, deleted_at = {}, {}, {}, {}, {}, {}
  for user, id in pairs(resets) do
    changed[#changed + 1] = user
    changed[#changed + 1] = counts[user] and tostring(counts[user]) or false
    if counts[user] then
      scored[#scored + 1] = counts[user]
      scored[#scored + 1] = user
    else
      unscored[#unscored + 1] = user
    end
    if job then
      mapped[#mapped + 1] = 'user:' .. user
      mapped[#mapped + 1] = job .. ' ' .. id
    elseif recounting then
      unmapped[#unmapped + 1] = 'user:' .. user  -- a recount of an earlier life, superseded
    end
    deleted[#deleted + 1] = user
    deleted[#deleted + 1] = id
    deleted_at[#deleted_at + 1] = tonumber(string.match(id, '(%d+)-'))
    deleted_at[#deleted_at + 1] = user
  end
  if #scored > 0 then redis.call('ZADD', KEYS[2], unpack(scored)) end
  if #unscored > 0 then redis.call('ZREM', KEYS[2], unpack(unscored)) end
  if #mapped > 0 then redis.call('HSET', recount, unpack(mapped)) end
  if #unmapped > 0 then redis.call('HDEL', recount, unpack(unmapped)) end
  redis.call('HSET', KEYS[4], unpack(deleted))
  redis.call('ZADD', KEYS[5], unpack(deleted_at))
end
local noted = note(KEYS[7], changed)
if take then return {applied, gone, #ids, span_last, malformed, queued, noted} end
return {applied, gone, malformed, queued, noted}
