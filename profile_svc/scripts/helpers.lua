-- Helpers the profile scripts share: the library's local functions (common/storage/functions.py).

-- Append an event of `kind` about `user` to the partition's stream, stamped with the server's time in ms,
-- and wake the aggregator if it waits for the partition (`wake`, common/storage/keys.py wake_key): once,
-- by its sharded channel; while it is busy with the partition this costs one GET.
local function append_event(stream, wake, user, kind)
  local now = redis.call('TIME')
  redis.call('XADD', stream, '*', 'user', user, 'type', kind, 'ts', now[1] * 1000 + math.floor(now[2] / 1000))
  if redis.call('GET', wake) == '1' then
    redis.call('SET', wake, '0')
    redis.call('SPUBLISH', wake, '1')
  end
end
