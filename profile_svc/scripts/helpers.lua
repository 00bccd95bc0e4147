-- Helpers the profile scripts share; common/scripts.py prepends this file to each of them.

-- Append an event of `kind` about `user` to the partition's stream, stamped with the server's time in ms
-- and with its offset `n`: the stream's entries-added count once it is in, 1 for a partition's first event.
-- The offset makes a change-feed position verifiable (profile_svc/events_feed.py): after a failover that
-- lost the stream's tail, an id can be handed out again, but the entry at an offset is checked, not assumed.
local function append_event(stream, user, kind)
  local now = redis.call('TIME')
  local added = 0
  if redis.call('EXISTS', stream) == 1 then
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'entries-added' then added = info[i + 1] break end
    end
  end
  redis.call('XADD', stream, '*', 'user', user, 'type', kind, 'ts', now[1] * 1000 + math.floor(now[2] / 1000),
    'n', added + 1)
end
