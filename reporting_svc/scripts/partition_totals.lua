-- The partition's count per operation type, as stored: one function so that a node's partitions are read in
-- one pipeline of FCALL_RO (reports.py), where plain HGETALLs would each be routed on their own.
-- KEYS[1] totals (hash)
-- Returns type, count, type, count, ...
return redis.call('HGETALL', KEYS[1])
