-- Apply a batch of events to the partition's statistics and acknowledge it, atomically.
-- KEYS[1] event stream, KEYS[2] reads (sorted set), KEYS[3] totals (hash),
-- KEYS[4] tombstones: user -> id of the latest delete (hash), KEYS[5] tombstones by time (sorted set)
-- ARGV[1] consumer group, then id, user, type of each event.
--
-- Exactly once: an event is applied only when XACK returns 1, i.e. it was still pending.
-- When a slow consumer and the one that claimed its entries race, the later one applies nothing.
-- Order: consumers may apply batches of one partition out of order, so a delete leaves a
-- tombstone and a read older than it is ignored; reads commute with each other.
-- Returns the number of events applied.

local function older(a, b)
  local a_ms, a_seq = string.match(a, '(%d+)-(%d+)')
  local b_ms, b_seq = string.match(b, '(%d+)-(%d+)')
  a_ms, a_seq, b_ms, b_seq = tonumber(a_ms), tonumber(a_seq), tonumber(b_ms), tonumber(b_seq)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
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
        redis.call('ZREM', KEYS[2], user)
        redis.call('HSET', KEYS[4], user, id)
        redis.call('ZADD', KEYS[5], tonumber(string.match(id, '(%d+)-')), user)
      end
    end
    redis.call('HINCRBY', KEYS[3], kind, 1)
    applied = applied + 1
  end
end
return applied
