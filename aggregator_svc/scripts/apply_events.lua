-- Apply a batch of events to the partition's statistics and acknowledge it, atomically.
-- KEYS[1] event stream, KEYS[2] reads (sorted set), KEYS[3] totals (hash),
-- KEYS[4] tombstones: user -> id of the latest applied delete (hash), KEYS[5] tombstones by time (sorted set)
-- ARGV[1] consumer group, then either ARGV[2..] ids of the entries to apply, in any order, or
-- ARGV[2] '>', ARGV[3] consumer, ARGV[4] count: take the group's next entries (at most count) for the
-- consumer and apply them, one round trip per batch and no entry's content sent to the caller.
-- Returns {events applied, entries acknowledged whose content the stream no longer held}, and with '>'
-- also the number of entries taken and the group's last delivered id (where a wait for new entries starts).
--
-- Exactly once: an entry is applied only when XACK returns 1, i.e. it was still pending. When a slow
-- consumer and one that claimed its entries race, or a batch is applied twice, the later one applies
-- nothing. An entry's user and type are read here from the stream, never taken from the caller: after
-- a failover that lost the stream's tail, XADD can hand out a lost id again, and the id must mean
-- what the stream holds now.
--
-- Order: consumers apply a partition's batches in any order (several replicas, reclaims, retries).
-- The invariant, per user: score = the applied reads newer than the user's tombstone (its latest
-- applied delete). "Applied" is "delivered to the group and no longer pending": only this script
-- acknowledges. A read newer than the tombstone adds 1; an older one belongs to an earlier life.
-- A delete newer than the tombstone becomes the tombstone, and the score is recounted from the
-- stream: the applied reads after it (reads of a re-created user that other batches applied first).
-- Every such recount of the batch shares one pass, from the oldest delete that needs it to the last
-- delivered entry, so a batch's cost grows with that span, not deletes x span; the part of it that is
-- the batch itself (all of it, for a '>' read by the only replica) is counted without a second read.
-- Those entries are all still in the stream: the delete was pending until this script ran, and
-- trimming never passes a pending entry.

local stream, group = KEYS[1], ARGV[1]
local RECOUNT_CHUNK = 1000

local function user_of(fields)  -- profile_svc writes user first: no search for the usual layout
  if fields[1] == 'user' then return fields[2] end
  return field(fields, 'user')
end

local tombstones = {}  -- user -> latest applied delete id, or false; looked up once per user
local function tombstone(user)
  local known = tombstones[user]
  if known == nil then
    known = redis.call('HGET', KEYS[4], user)
    tombstones[user] = known
  end
  return known
end

local function pending(entry_id)
  return #redis.call('XPENDING', stream, group, entry_id, entry_id, 1) > 0
end

local function last_delivered()
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    if field(info, 'name') == group then return field(info, 'last-delivered-id') end
  end
end

-- 0. The batch's entries as the stream holds them: one read of the batch's span. When the span holds
-- exactly the batch (a '>' read, the usual case) it is `contiguous`; otherwise ids outside it are looked up one by one.
local ids, span = {}, nil
if ARGV[2] == '>' then
  -- New to the group, so delivered now and pending for us alone: the stream's next entries, contiguous.
  local reply = redis.call('XREADGROUP', 'GROUP', group, ARGV[3], 'COUNT', ARGV[4], 'STREAMS', stream, '>')
  span = reply and reply[1][2] or {}
  if #span == 0 then return {0, 0, 0, last_delivered() or '0-0'} end
  for i, entry in ipairs(span) do ids[i] = entry[1] end
else
  for i = 2, #ARGV do ids[i - 1] = ARGV[i] end
  span = redis.call('XRANGE', stream, ids[1], ids[#ids], 'COUNT', #ids + 1)
end
local batch_size = #ids
local span_last = ids[#ids]
local content = {}
for _, entry in ipairs(span) do content[entry[1]] = entry[2] end
local contiguous = #span == batch_size

-- 1. Acknowledge; keep what was still pending.
local applied, gone = 0, 0
local totals = {}   -- event type -> count
local reads = {}    -- acknowledged reads: {id, user}
local resets = {}   -- user -> the batch's newest delete newer than the user's tombstone
for _, id in ipairs(ids) do
  local fields = content[id]
  if fields == nil then
    contiguous = false
    local entry = redis.call('XRANGE', stream, id, id)[1]
    fields = entry and entry[2]
  end
  if redis.call('XACK', stream, group, id) == 1 then
    if fields == nil then
      gone = gone + 1  -- trimmed while pending: its content is lost, nothing to count
    else
      local user, kind = user_of(fields), field(fields, 'type')
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

-- 2. Reads of users without a new tombstone: count those newer than the tombstone.
local increments = {}
for _, read in ipairs(reads) do
  local id, user = read[1], read[2]
  if not resets[user] then
    local deleted = tombstone(user)
    if not deleted or older(deleted, id) then increments[user] = (increments[user] or 0) + 1 end
  end
end
for user, count in pairs(increments) do
  redis.call('ZINCRBY', KEYS[2], count, user)
end

-- 3. Users with a new tombstone: recount their applied reads after it, in one pass.
local from = nil
for _, id in pairs(resets) do
  if from == nil or older(id, from) then from = id end
end
if from ~= nil then
  local delivered = last_delivered()
  local counts = {}
  -- A read after its user's new tombstone that is applied: delivered and no longer pending.
  local function count_if_applied_after_reset(entry_id, fields, known_applied)
    local user = user_of(fields)
    local since = resets[user]
    if since and field(fields, 'type') == 'read' and older(since, entry_id)
        and not older(delivered, entry_id) and (known_applied or not pending(entry_id)) then
      counts[user] = (counts[user] or 0) + 1
    end
  end
  local scan_from = from
  if contiguous and delivered then
    -- Every entry of the span is this batch's, so none is pending any more.
    for _, entry in ipairs(span) do count_if_applied_after_reset(entry[1], entry[2], true) end
    scan_from = span_last
  end
  local start = '(' .. scan_from
  while delivered and older(scan_from, delivered) do
    local chunk = redis.call('XRANGE', stream, start, delivered, 'COUNT', RECOUNT_CHUNK)
    for _, entry in ipairs(chunk) do
      local fields = entry[2]  -- the hot loop: skip other users' entries without a call
      if resets[fields[1] == 'user' and fields[2] or field(fields, 'user')] then
        count_if_applied_after_reset(entry[1], fields, false)
      end
    end
    if #chunk < RECOUNT_CHUNK then break end
    start = '(' .. chunk[#chunk][1]
  end
  for user, id in pairs(resets) do
    if counts[user] then
      redis.call('ZADD', KEYS[2], counts[user], user)
    else
      redis.call('ZREM', KEYS[2], user)
    end
    redis.call('HSET', KEYS[4], user, id)
    redis.call('ZADD', KEYS[5], tonumber(string.match(id, '(%d+)-')), user)
  end
end
if ARGV[2] == '>' then return {applied, gone, batch_size, span_last} end
return {applied, gone}
