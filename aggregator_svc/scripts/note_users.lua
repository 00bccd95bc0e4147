-- Note users' scores as a partition holds them now: the sweep of a top list bucket (aggregator.py), which finds the
-- users a bucket holds that their partition may not, after a failover took them back from the partition.
-- KEYS[1] reads (sorted set), KEYS[2] the outbox (hash)
-- ARGV the users, at most 1000
-- Returns how many users the outbox holds (-1: never indexed whole).
if #ARGV > 1000 then
  return redis.error_reply('ERR note_users: at most 1000 users a call')
end
return note_scores(KEYS[2], KEYS[1], ARGV)
