-- The entries of a partition's stream after a change-feed position, once the position is checked against
-- the stream as it is now, atomically (a trim or an append can't slip in between).
-- KEYS[1] partition event stream, KEYS[2] the last entry trimmed from it (hash: id, n, ts; trim_acknowledged.lua),
-- optionally KEYS[3] the partition's wake flag (keys.wake_key), for the change feed's tail reads: armed ('1') when
-- the read went through fewer entries than asked (it reached the stream's end), in this same script, so the next
-- append publishes a wake-up (helpers.lua append_event): none can slip in between the read and the arming.
-- ARGV[1] the position: the id of the last entry passed ('0-0' before the first), ARGV[2] its offset n (0 before
-- the first), ARGV[3] its ts; ARGV[4] inclusive end id or '+'; ARGV[5] at most how many entries to go through
-- (0: none, only the verdict and the last entry); optionally a filter: ARGV[6] the event types wanted,
-- comma-separated, ARGV[7..] the users wanted (none: every user's).
-- Returns {verdict, offset of the first entry gone through, entries, last, scanned, offsets, scanned_to}:
-- entries are those gone through (only the wanted ones with a filter, whose offsets are then in `offsets`),
-- scanned how many were gone through, scanned_to {id, ts} of the last of them (with a filter);
-- last = {id, n, ts} of the stream's last entry (or of the last one trimmed when none is left, or
-- {'0-0', 0, 0}); verdict one of:
--   'ok'       the position is in this stream's history; entries are those after it (offsets from ARGV[2] + 1)
--   'trimmed'  entries after the position are gone; entries are the oldest ones kept (offsets from the head)
--   'changed'  the position is not in this stream's history (the stream lost entries it had, in a failover
--              whose replica lacked them, and may have handed their ids out again); entries are none
-- An entry's offset is the stream's entries-added count once it was in. Entries leave a stream only from its
-- head, so the head's offset is entries-added - length + 1, and the entries after a position that is in the
-- stream have the offsets after its own. A position whose entry is there, at its id and with its time, is in
-- the stream's history with every entry before it: a replica that lacked entries lacked a suffix.

local stream, record, wake = KEYS[1], KEYS[2], KEYS[3]
local after_id, after_n, after_ts = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local upto, count = ARGV[4], tonumber(ARGV[5])

-- The position's entry: that id with that time (an id handed out again after a failover has another time).
local function is_position(id, ts)
  return id == after_id and tostring(ts) == after_ts
end

local function checked_read()
  local trimmed = redis.call('HMGET', record, 'id', 'n', 'ts')
  if redis.call('EXISTS', stream) == 0 then
    local last = {'0-0', 0, 0}
    if after_n == 0 then return {'ok', 1, {}, last, 0, {}, {}} end
    return {'changed', 1, {}, last, 0, {}, {}}
  end

  local info = redis.call('XINFO', 'STREAM', stream)
  local added, length = tonumber(field(info, 'entries-added')), tonumber(field(info, 'length'))
  local head_n = added - length + 1
  local last
  if length > 0 then
    local entry = field(info, 'last-entry')
    last = {entry[1], added, field(entry[2], 'ts') or 0}
  elseif trimmed[1] and tonumber(trimmed[2]) == added then
    last = {trimmed[1], added, trimmed[3]}
  else  -- trimmed empty by a version that kept no record: the last id, with a time the check below won't need
    last = {field(info, 'last-generated-id'), added, 0}
  end

  local types, users = nil, nil
  if ARGV[6] then
    types = {}
    for kind in string.gmatch(ARGV[6], '[^,]+') do types[kind] = true end
    if #ARGV > 6 then
      users = {}
      for i = 7, #ARGV do users[ARGV[i]] = true end
    end
  end

  local function after(verdict, from, first_n)
    if count == 0 then return {verdict, first_n, {}, last, 0, {}, {}} end
    local entries = redis.call('XRANGE', stream, from, upto, 'COUNT', count)
    if not types then return {verdict, first_n, entries, last, #entries, {}, {}} end
    local wanted, offsets = {}, {}
    for i, entry in ipairs(entries) do
      local fields = entry[2]
      if types[field(fields, 'type')] and (not users or users[field(fields, 'user')]) then
        wanted[#wanted + 1] = entry
        offsets[#offsets + 1] = first_n + i - 1
      end
    end
    local scanned_to = {}
    if #entries > 0 then scanned_to = {entries[#entries][1], field(entries[#entries][2], 'ts')} end
    return {verdict, first_n, wanted, last, #entries, offsets, scanned_to}
  end

  if after_n > added then
    return {'changed', head_n, {}, last, 0, {}, {}}  -- an offset this stream has not reached: its end was lost
  end
  if after_n >= head_n then
    -- The position's entry is still in the stream: it must be there, at that id, with that offset and time.
    local at = redis.call('XRANGE', stream, after_id, after_id)[1]
    if not at or not is_position(at[1], field(at[2], 'ts') or 0) then
      return {'changed', head_n, {}, last, 0, {}, {}}
    end
    return after('ok', '(' .. after_id, after_n + 1)
  end
  if after_n < head_n - 1 then
    return after('trimmed', '-', head_n)  -- entries after the position were trimmed
  end
  -- The position is the entry just before the head: the stream's start, or the last entry trimmed. The record
  -- decides when it is of that offset (a trim by a version that kept none leaves an older one: offsets decide).
  if after_n > 0 and trimmed[1] and tonumber(trimmed[2]) == after_n
      and not (trimmed[1] == after_id and tostring(trimmed[3]) == after_ts) then
    return {'changed', head_n, {}, last, 0, {}, {}}
  end
  if length > 0 and not older(after_id, field(info, 'first-entry')[1]) then
    return {'changed', head_n, {}, last, 0, {}, {}}  -- the head must come after the position
  end
  return after('ok', '(' .. after_id, after_n + 1)
end

local reply = checked_read()
if wake and reply[5] < count then
  redis.call('SET', wake, '1')
end
return reply
