-- Helpers the profile scripts share: the library's local functions (common/storage/functions.py).

-- Append an event of `kind` about `user` to the partition's stream, stamped with the server's time in ms.
local function append_event(stream, user, kind)
  local now = redis.call('TIME')
  redis.call('XADD', stream, '*', 'user', user, 'type', kind, 'ts', now[1] * 1000 + math.floor(now[2] / 1000))
end
