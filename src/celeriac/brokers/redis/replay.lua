-- Publish a dead letter again and remove it from the store, atomically, once: two
-- concurrent replays of the same id publish it once.
--
-- KEYS[1] dead letters (hash)   KEYS[2] dead-letter index (zset)   KEYS[3] destination list
-- ARGV[1] dead-letter id        ARGV[2] envelope to publish
--
-- Returns 1 when replayed, 0 when the id is unknown.

if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
    return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
