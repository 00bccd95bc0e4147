-- One bounded step of noting every user of a partition in its outbox, for the top list's index: at the first take
-- of a partition that was never indexed (the first start of a version with the index, or a resize's new keyspace),
-- and every PROFILEMESH_AGGREGATOR_REINDEX_S, which repairs the index where a failover lost its last copies.
-- KEYS[1] reads (sorted set), KEYS[2] the outbox (hash)
-- ARGV[1] the scan's cursor ('0' to start), ARGV[2] users to note at most (1 to 1000)
-- Returns {the next cursor, '0' when done; how many users the outbox holds (-1: never indexed whole)}.
--
-- ZSCAN returns every user the sorted set holds from the first step to the last at least once; a user added or
-- changed meanwhile is noted by the script that changed it. The last step marks the partition indexed.
local step, refused = bounded_count(ARGV[2], 1000, 'reindex_partition', 'a step notes users')
if not step then return refused end
local reply = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', step)
if reply[1] == '0' then redis.call('HSET', KEYS[2], '#indexed', '1') end
return {reply[1], note(KEYS[2], reply[2])}
