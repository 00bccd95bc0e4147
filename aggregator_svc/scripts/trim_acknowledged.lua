-- Bound the partition's memory: trim stream entries that every group has acknowledged,
-- forget tombstones that no unapplied event can predate, drop idle consumers with nothing pending.
-- KEYS[1] event stream, KEYS[2] tombstones (hash), KEYS[3] tombstones by time (sorted set),
-- KEYS[4] recounts in progress (hash, see recount_step.lua),
-- KEYS[5] the last entry trimmed (hash: id, n, ts), which the change feed checks a position against
-- ARGV[1] this aggregator's group, ARGV[2] idle time (ms) after which an empty consumer is dropped,
-- ARGV[3] retention (ms, default 0): acknowledged entries younger than this are kept for WatchProfileEvents subscribers
-- Unacknowledged entries are never trimmed, nor entries a recount has still to read.
-- Returns {entries trimmed, 1 if more entries or tombstones are due than one run trims or forgets
-- (MAX_TRIM, MAX_FORGET): run again}.

local MAX_FORGET, MAX_TRIM = 500, 2000
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0}
end

-- The oldest entry some group still needs: its oldest pending entry, or the one after
-- its last delivered entry (approximated by that entry itself, which keeps one extra).
local keep_from = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local needed = field(group, 'last-delivered-id')
  if tonumber(field(group, 'pending')) > 0 then
    needed = redis.call('XPENDING', KEYS[1], field(group, 'name'))[2]
  end
  if keep_from == nil or older(needed, keep_from) then
    keep_from = needed
  end
end
if keep_from == nil then
  return {0, 0}
end

-- Retention for subscribers (issue 14): never trim entries younger than ARGV[3] ms, so a subscriber can
-- resume from a token that old. It only lowers the trim point; keep_from still decides the tombstones below.
local now = redis.call('TIME')
local retain_from = (now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[3] or '0')) .. '-0'
local trim_to = keep_from
if older(retain_from, trim_to) then
  trim_to = retain_from
end
-- A recount in progress reads the entries after its cursor.
local head = tonumber(redis.call('HGET', KEYS[4], 'head') or '0')
local tail = tonumber(redis.call('HGET', KEYS[4], 'tail') or '0')
for n = head, tail - 1 do
  local job = redis.call('HGET', KEYS[4], 'job:' .. n)
  local cursor = job and string.match(job, '^(%S+) ')
  if cursor and older(cursor, trim_to) then trim_to = cursor end
end
-- At most MAX_TRIM entries a run, so a run's time is bounded however far behind trimming is, and exactly
-- up to an entry read first: the change feed needs the last entry trimmed (its id, offset and time).
local trimmed, more = 0, false
if trim_to ~= '0-0' then
  local oldest = redis.call('XRANGE', KEYS[1], '-', '(' .. trim_to, 'COUNT', MAX_TRIM + 1)
  local last_trimmed = oldest[math.min(#oldest, MAX_TRIM)]
  if #oldest > MAX_TRIM then
    more = true
    trim_to = oldest[MAX_TRIM + 1][1]
  end
  if last_trimmed then
    trimmed = redis.call('XTRIM', KEYS[1], 'MINID', trim_to)
    -- Its offset is the count of entries ever added minus those left, whatever fields it carries.
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    redis.call('HSET', KEYS[5], 'id', last_trimmed[1], 'n', field(info, 'entries-added') - field(info, 'length'),
      'ts', field(last_trimmed[2], 'ts') or 0)
  end
end

local before_ms = tonumber(string.match(keep_from, '(%d+)-')) - 1
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', before_ms, 'LIMIT', 0, MAX_FORGET)
if #expired > 0 then
  redis.call('HDEL', KEYS[2], unpack(expired))
  redis.call('ZREM', KEYS[3], unpack(expired))
end

for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  if tonumber(field(consumer, 'pending')) == 0 and tonumber(field(consumer, 'idle')) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], field(consumer, 'name'))
  end
end
return {trimmed, (more or #expired == MAX_FORGET) and 1 or 0}
