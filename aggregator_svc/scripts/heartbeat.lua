-- An aggregator replica says it is live, and learns which others are: the partitions are shared among them
-- (aggregator_svc/aggregator.py, rendezvous hashing), and a replica that stops saying so loses its share.
-- KEYS[1] the live replicas (sorted set: consumer name -> when its word runs out, server time in ms)
-- ARGV[1] this replica's consumer name, ARGV[2] for how long (ms) its word holds
-- Returns the live replicas' names, this one's included.
local name, ttl = ARGV[1], tonumber(ARGV[2])
if not name or name == '' or not ttl or ttl < 1 or ttl % 1 ~= 0 then
  return redis.error_reply('ERR heartbeat: a consumer name and a whole number of ms are needed')
end
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('ZADD', KEYS[1], ms + ttl, name)
return redis.call('ZRANGE', KEYS[1], 0, -1)
