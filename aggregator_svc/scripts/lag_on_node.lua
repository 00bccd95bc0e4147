-- The lag gauges' figures of every partition this node holds (lag.py): one call per primary instead of two to
-- four commands per partition, so that all of 4,096 partitions are read in the gauges' first second. What it
-- returns is what lag.py's partition_figures reads command by command. The partitions' streams are ARGV[2..];
-- KEYS[1], the first of them, routes the call; ARGV[1] is the consumer group. Flagged allow-cross-slot-keys: a
-- key this node does not serve fails the call, and lag.py reads those partitions one by one.
-- Returns per stream, in order: {length, lag, pending, the oldest pending entry's id, the first undelivered
-- entry's id} ('' for an id there is none of). An undelivered count the server can't tell (deletions inside the
-- range) is counted, up to COUNT_LIMIT, as partition_figures does.
local COUNT_LIMIT = 10000
local group = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local stream = ARGV[i]
  local length = redis.call('XLEN', stream)
  local info = nil
  if redis.call('EXISTS', stream) == 1 then
    for _, flat in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
      local fields = {}
      for j = 1, #flat, 2 do
        fields[flat[j]] = flat[j + 1]
      end
      if fields['name'] == group then
        info = fields
      end
    end
  end
  local lag, pending, last, oldest_pending = length, 0, '0-0', ''
  if info then
    last, pending, lag = info['last-delivered-id'], tonumber(info['pending']), info['lag']
    if pending > 0 then
      local summary = redis.call('XPENDING', stream, group)
      oldest_pending = summary[2] or ''  -- none: acknowledged since XINFO GROUPS was read
    end
    if not lag then  -- the server can't tell after deletions inside the range: count what is left
      lag = #redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', COUNT_LIMIT)
    end
  end
  local first_undelivered = ''
  if lag > 0 then
    local first = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)
    if first[1] then
      first_undelivered = first[1][1]
    end
  end
  out[#out + 1] = {length, lag, pending, oldest_pending, first_undelivered}
end
return out
