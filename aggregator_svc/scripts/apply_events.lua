-- Apply a batch of events to the partition's statistics and acknowledge it, atomically.
-- KEYS[1] event stream, KEYS[2] reads (sorted set), KEYS[3] totals (hash),
-- KEYS[4] tombstones: user -> id of the latest delete (hash), KEYS[5] tombstones by time (sorted set)
-- ARGV[1] consumer group, then id, user, type of each event.
--
-- Exactly once: an event is applied only when XACK returns 1, i.e. it was still pending.
-- When a slow consumer and the one that claimed its entries race, the later one applies nothing.
-- Order: consumers may apply batches of one partition out of order, so a delete leaves a
-- tombstone and a read older than it is ignored; reads commute with each other. A delete applied
-- after newer reads of the user (re-created meanwhile) keeps those reads rather than dropping them.
-- Returns the number of events applied.

local function already_applied(entry_id)
  return #redis.call('XPENDING', KEYS[1], ARGV[1], entry_id, entry_id, 1) == 0
end

local last_delivered = false  -- the group's last delivered id, looked up once, when first needed
local function group_last_delivered()
  if last_delivered == false then
    last_delivered = nil
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      if field(group, 'name') == ARGV[1] then last_delivered = field(group, 'last-delivered-id') end
    end
  end
  return last_delivered
end

-- Reads of `user` newer than the delete at ARGV[i] that are already applied, i.e. delivered to the
-- group and no longer pending. They are all still in the stream: the delete was pending until this
-- script acknowledged it, and trimming never passes a pending entry.
local function applied_reads_after(i, user)
  local id = ARGV[i]
  local delivered = group_last_delivered()
  if delivered == nil or not older(id, delivered) then
    return 0
  end
  local count = 0
  if delivered == ARGV[#ARGV - 2] then
    -- Nothing after this batch was delivered: only the rest of the batch can hold such reads,
    -- and only if a consumer that claimed them applied them first (rare); no need to scan the stream.
    for j = i + 3, #ARGV, 3 do
      if ARGV[j + 1] == user and ARGV[j + 2] == 'read' and already_applied(ARGV[j]) then
        count = count + 1
      end
    end
    return count
  end
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '(' .. id, delivered)) do
    if field(entry[2], 'user') == user and field(entry[2], 'type') == 'read' and already_applied(entry[1]) then
      count = count + 1
    end
  end
  return count
end

local applied = 0
for i = 2, #ARGV, 3 do
  local id, user, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    if kind == 'read' then
      local deleted = redis.call('HGET', KEYS[4], user)
      if not deleted or older(deleted, id) then
        redis.call('ZINCRBY', KEYS[2], 1, user)
      end
    elseif kind == 'delete' then
      local deleted = redis.call('HGET', KEYS[4], user)
      if not deleted or older(deleted, id) then
        local newer = applied_reads_after(i, user)
        if newer > 0 then
          redis.call('ZADD', KEYS[2], newer, user)
        else
          redis.call('ZREM', KEYS[2], user)
        end
        redis.call('HSET', KEYS[4], user, id)
        redis.call('ZADD', KEYS[5], tonumber(string.match(id, '(%d+)-')), user)
      end
    end
    redis.call('HINCRBY', KEYS[3], kind, 1)
    applied = applied + 1
  end
end
return applied
